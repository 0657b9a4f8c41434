//! Transformer encoders: the BERT family and the CLIP vision tower, loaded
//! from the Hugging Face layout or built as seeded synthetic presets,
//! quantized linear by linear, and run on any [`Backend`](crate::backend::Backend).
//!
//! Data flows in this order (each step one type):
//! - [`Model`]: host f32 weights, config, tokenizer / image preprocessing
//!   ([`Model::load`], [`Model::preset`]);
//! - [`Inputs`] → [`Batch`] with [`Model::encode`] (token ids + mask, or
//!   patch rows);
//! - [`QuantizedModel`] with [`quantize_model`] and a [`QuantPlan`] (every
//!   linear in a [`crate::format`] layout; GPTQ / AWQ calibrated by a CPU
//!   forward, block by block);
//! - [`DeviceModel`]: weights uploaded to one backend; its forward pass is
//!   written once, as a list of [`crate::backend::Op`]s, for every backend.

pub mod config;
mod device;
pub mod image;
mod preset;
mod quantized;
mod tokenize;
mod weights;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use config::ModelConfig;
pub use device::{DeviceModel, ForwardOutput, ForwardTiming};
pub use image::ImagePrep;
pub use quantized::{quantize_model, QuantPlan, QuantizedModel};

use crate::backend::{BackendError, BackendKind};
use crate::format::Matrix;
use tokenize::TextEncoder;

/// Errors of the model layer; each names the file, tensor or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A weights file that is not valid safetensors (truncated, corrupt).
    #[error("'{path}' is not a valid safetensors file: {reason}")]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A tensor with the wrong shape, dtype or values.
    #[error("'{path}': tensor '{name}': {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor as stored.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint's tensors are not a layout this loader knows.
    #[error(
        "'{}': not a layout quantscope knows: missing {} tensor(s): {}{}; supported: {}",
        path.display(),
        missing.len(),
        list(missing),
        if unexpected.is_empty() { String::new() } else {
            format!("; unexpected tensor(s): {}", list(unexpected))
        },
        weights::supported_note()
    )]
    Layout {
        /// The checkpoint folder.
        path: PathBuf,
        /// Tensors the config needs that are absent.
        missing: Vec<String>,
        /// Tensors present that no supported layout has.
        unexpected: Vec<String>,
    },
    /// A config file that cannot be used.
    #[error("'{path}': {reason}")]
    Config {
        /// The file (or folder).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `tokenizer.json` could not be used.
    #[error("tokenizer '{path}': {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the tokenizer said.
        reason: String,
    },
    /// An image could not be read.
    #[error("image '{path}': {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// Inputs that do not fit the model (empty, wrong kind, range).
    #[error("{0}")]
    Input(String),
    /// The backend lacks an op the forward pass needs: report "n/a".
    #[error("{backend}: n/a ({op} is not supported)")]
    Unsupported {
        /// Which backend.
        backend: BackendKind,
        /// The op or feature it lacks.
        op: String,
    },
    /// Any other backend failure.
    #[error(transparent)]
    Backend(BackendError),
    /// Quantizing one linear failed.
    #[error("quantizing '{layer}': {source}")]
    Quant {
        /// The linear.
        layer: String,
        /// The quantizer's error.
        source: crate::quant::QuantError,
    },
    /// Reading or writing a safetensors file.
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
}

fn list(v: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = v.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > SHOWN {
        s.push_str(&format!(", ... ({} more)", v.len() - SHOWN));
    }
    s
}

impl From<BackendError> for ModelError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unsupported { backend, what } => {
                ModelError::Unsupported { backend, op: what }
            }
            other => ModelError::Backend(other),
        }
    }
}

/// The built-in synthetic models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// BERT-style, hidden 256, 2 layers, 4 heads: the fast default.
    Tiny,
    /// The shapes of all-MiniLM-L6-v2: hidden 384, 6 layers, 12 heads, MLP 1536.
    MiniLmL6,
    /// The vision tower of openai/clip-vit-large-patch14: hidden 1024, 24
    /// layers, 16 heads, MLP 4096, patch 14, 224 px (257 tokens), projection 768.
    ClipVitL14,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::MiniLmL6, Preset::ClipVitL14];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::MiniLmL6 => "minilm-l6",
            Preset::ClipVitL14 => "clip-vit-l14",
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                ModelError::Input(format!(
                    "unknown preset '{s}' (expected tiny, minilm-l6 or clip-vit-l14)"
                ))
            })
    }
}

/// Which kind of encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// BERT / MiniLM / sentence-transformers: post-LN, GELU, text in.
    Bert,
    /// CLIP's vision tower: pre-LN, quick-GELU, images in.
    ClipVision,
}

/// How the pooled output is made from the last hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean over non-pad tokens (sentence-transformers `pooling_mode_mean_tokens`).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// CLIP: the class token after `post_layernorm`, then
    /// `visual_projection` when present.
    ClipClass,
}

/// One quantizable linear layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearInfo {
    /// Its name (the Hugging Face tensor name without `.weight`).
    pub name: String,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

/// Inputs to run: texts for BERT, images for CLIP.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// One text per input.
    Texts(Vec<String>),
    /// One RGB image per input.
    Images(Vec<::image::RgbImage>),
}

impl Inputs {
    /// Number of inputs.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Images(i) => i.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one forward pass consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchData {
    /// BERT: `n x seq` token ids (pads at the end) and the mask (1 keeps, 0 pad).
    Tokens {
        /// Token ids, row-major.
        ids: Vec<u32>,
        /// 1.0 for real tokens, 0.0 for pads.
        mask: Vec<f32>,
    },
    /// CLIP: `n x seq` rows of `3·patch²` values; row 0 of every image is
    /// zeros (the class token's place), then the patches.
    Patches {
        /// Patch rows, row-major.
        rows: Vec<f32>,
    },
}

/// A batch of encoded inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Inputs in the batch.
    pub n: usize,
    /// Tokens per input (after padding).
    pub seq: usize,
    /// The values.
    pub data: BatchData,
}

impl Batch {
    /// Real (non-pad) tokens per input.
    pub fn lengths(&self) -> Vec<usize> {
        match &self.data {
            BatchData::Tokens { mask, .. } => mask
                .chunks(self.seq.max(1))
                .map(|m| m.iter().filter(|&&v| v > 0.5).count())
                .collect(),
            BatchData::Patches { .. } => vec![self.seq; self.n],
        }
    }
}

/// What the model is besides its weights: shared by [`Model`] and
/// [`QuantizedModel`].
#[derive(Clone)]
pub(crate) struct Spec {
    pub name: String,
    pub config: ModelConfig,
    pub pooling: Pooling,
    /// L2-normalize the pooled output (sentence-transformers `Normalize`).
    pub normalize: bool,
    pub text: Option<TextEncoder>,
    pub image: ImagePrep,
    /// Longest sequence (tokens, special ones included) for text.
    pub max_len: usize,
    /// Pad every text to exactly this many tokens (benchmarks), else to the
    /// longest of the batch.
    pub fixed_len: Option<usize>,
}

impl Spec {
    fn encode(&self, inputs: &Inputs, range: Range<usize>) -> Result<Batch, ModelError> {
        if range.start >= range.end || range.end > inputs.len() {
            return Err(ModelError::Input(format!(
                "input range {}..{} is empty or beyond the {} inputs",
                range.start,
                range.end,
                inputs.len()
            )));
        }
        let n = range.end - range.start;
        match (self.config.family, inputs) {
            (Family::Bert, Inputs::Texts(texts)) => {
                let enc = self.text.as_ref().ok_or_else(|| {
                    ModelError::Input(format!("model '{}' has no tokenizer", self.name))
                })?;
                let max_len = self.fixed_len.unwrap_or(self.max_len).min(self.max_len);
                let refs: Vec<&str> = texts[range].iter().map(String::as_str).collect();
                let ids = enc.encode(&refs, max_len)?;
                let seq = self
                    .fixed_len
                    .map(|f| f.min(self.max_len))
                    .unwrap_or_else(|| ids.iter().map(Vec::len).max().unwrap_or(1))
                    .max(1);
                let pad = enc.pad_id().min(self.config.vocab as u32 - 1);
                let mut all = Vec::with_capacity(n * seq);
                let mut mask = Vec::with_capacity(n * seq);
                for row in &ids {
                    for j in 0..seq {
                        match row.get(j) {
                            Some(&id) => {
                                if id as usize >= self.config.vocab {
                                    return Err(ModelError::Input(format!(
                                        "token id {id} is outside the vocabulary of {}",
                                        self.config.vocab
                                    )));
                                }
                                all.push(id);
                                mask.push(1.0);
                            }
                            None => {
                                all.push(pad);
                                mask.push(0.0);
                            }
                        }
                    }
                }
                Ok(Batch {
                    n,
                    seq,
                    data: BatchData::Tokens { ids: all, mask },
                })
            }
            (Family::ClipVision, Inputs::Images(images)) => {
                let c = &self.config;
                let seq = c.image_tokens();
                let mut rows = Vec::with_capacity(n * seq * c.patch_len());
                for img in &images[range] {
                    let px = self.image.pixels(img);
                    image::patch_rows(&px, c.image_size, c.patch_size, &mut rows);
                }
                Ok(Batch {
                    n,
                    seq,
                    data: BatchData::Patches { rows },
                })
            }
            (Family::Bert, Inputs::Images(_)) => Err(ModelError::Input(format!(
                "model '{}' is a text encoder; it takes texts, not images",
                self.name
            ))),
            (Family::ClipVision, Inputs::Texts(_)) => Err(ModelError::Input(format!(
                "model '{}' is a vision tower; it takes images, not texts",
                self.name
            ))),
        }
    }

    fn default_inputs(&self) -> Inputs {
        match self.config.family {
            Family::Bert => {
                Inputs::Texts(tokenize::SENTENCES.iter().map(|s| s.to_string()).collect())
            }
            Family::ClipVision => Inputs::Images(image::generated_images(8, 7)),
        }
    }

    fn calibration_inputs(&self) -> Inputs {
        match self.config.family {
            Family::Bert => Inputs::Texts(
                tokenize::CALIBRATION_SENTENCES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            // Another seed: none of these is an evaluation image.
            Family::ClipVision => Inputs::Images(image::generated_images(16, 1_000_003)),
        }
    }
}

/// A transformer encoder with host f32 weights.
#[derive(Clone)]
pub struct Model {
    spec: Arc<Spec>,
    /// Every tensor by its canonical Hugging Face name (no `bert.` prefix),
    /// 1-D tensors as one row, the CLIP patch conv as `hidden x 3·p²`.
    params: BTreeMap<String, Matrix>,
}

impl Model {
    /// A built-in synthetic model (seeded; no download).
    pub fn preset(p: Preset) -> Result<Model, ModelError> {
        preset::build(p)
    }

    /// Loads a Hugging Face checkpoint folder (`config.json` +
    /// `model.safetensors` or shards, `tokenizer.json`, sentence-transformers
    /// pooling files, `preprocessor_config.json`), or a folder written by
    /// [`QuantizedModel::save`] (its weights dequantized to f32; use
    /// [`QuantizedModel::load`] to keep them packed).
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        if quantized::is_quantized_dir(dir) {
            return QuantizedModel::load(dir).map(|q| q.to_model());
        }
        let (spec, cfg_path) = load_spec(dir)?;
        let mut cfg = spec.config.clone();
        let files = weights::TensorFiles::open(dir)?;
        let set = files.parse()?;
        if cfg.family == Family::ClipVision {
            // The projection is optional (CLIPVisionModel has none).
            let proj = format!("{}.weight", config::CLIP_PROJ);
            cfg.projection_dim = if set.has(&proj) {
                cfg.projection_dim.or(Some(cfg.hidden))
            } else {
                None
            };
        }
        let _ = cfg_path;
        let mut params = set.load_all(&cfg)?;
        if cfg.family == Family::ClipVision {
            // The conv [hidden, 3, p, p] as a matmul over patch rows.
            if let Some(m) = params.remove(config::CLIP_PATCH) {
                let flat = Matrix::from_vec(cfg.hidden, cfg.patch_len(), m.into_vec())
                    .map_err(|e| ModelError::Input(e.to_string()))?;
                params.insert(config::CLIP_PATCH.to_string(), flat);
            }
        }
        let mut spec = spec;
        spec.config = cfg;
        Ok(Model {
            spec: Arc::new(spec),
            params,
        })
    }

    pub(crate) fn from_parts(spec: Spec, params: BTreeMap<String, Matrix>) -> Model {
        Model {
            spec: Arc::new(spec),
            params,
        }
    }

    pub(crate) fn spec(&self) -> &Arc<Spec> {
        &self.spec
    }

    pub(crate) fn params(&self) -> &BTreeMap<String, Matrix> {
        &self.params
    }

    /// The model's name (preset name or folder name).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Which kind of encoder.
    pub fn family(&self) -> Family {
        self.spec.config.family
    }

    /// Its sizes.
    pub fn config(&self) -> &ModelConfig {
        &self.spec.config
    }

    /// How outputs are pooled, and whether they are L2-normalized.
    pub fn pooling(&self) -> (Pooling, bool) {
        (self.spec.pooling, self.spec.normalize)
    }

    /// A tensor by its Hugging Face name without a `bert.` prefix (e.g.
    /// `embeddings.word_embeddings.weight`), 1-D tensors as one row, the
    /// CLIP patch conv as `hidden x 3·patch²`.
    pub fn tensor(&self, name: &str) -> Option<&Matrix> {
        self.params.get(name)
    }

    /// Every quantizable linear in forward order.
    pub fn linear_layers(&self) -> Vec<LinearInfo> {
        config::linear_names(&self.spec.config)
            .into_iter()
            .map(|(name, rows, cols)| LinearInfo { name, rows, cols })
            .collect()
    }

    /// The built-in evaluation inputs: a few dozen varied sentences, or
    /// eight generated images.
    pub fn default_inputs(&self) -> Inputs {
        self.spec.default_inputs()
    }

    /// Built-in calibration inputs for GPTQ / AWQ, disjoint from
    /// [`Self::default_inputs`].
    pub fn calibration_inputs(&self) -> Inputs {
        self.spec.calibration_inputs()
    }

    /// Reads inputs from a file: one text per line (BERT), or one image path
    /// per line, relative to the file's folder (CLIP). Blank lines are skipped.
    pub fn read_inputs(&self, path: &Path) -> Result<Inputs, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            return Err(ModelError::Input(format!(
                "'{}' has no inputs (one per line)",
                path.display()
            )));
        }
        match self.family() {
            Family::Bert => Ok(Inputs::Texts(lines.iter().map(|s| s.to_string()).collect())),
            Family::ClipVision => {
                let base = path.parent().unwrap_or(Path::new("."));
                lines
                    .iter()
                    .map(|l| image::read_image(&base.join(l)))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Inputs::Images)
            }
        }
    }

    /// Encodes `inputs[range]`: token ids + mask (padded to the batch's
    /// longest, truncated at the model's maximum), or patch rows.
    pub fn encode(&self, inputs: &Inputs, range: Range<usize>) -> Result<Batch, ModelError> {
        self.spec.encode(inputs, range)
    }

    /// Pads (and truncates) every text to exactly `len` tokens, as a
    /// benchmark at a fixed sequence length wants; `None` pads each batch to
    /// its longest input.
    pub fn set_fixed_length(&mut self, len: Option<usize>) {
        Arc::make_mut(&mut self.spec).fixed_len = len.map(|l| l.max(1));
    }

    /// Size of the pooled output.
    pub fn output_dim(&self) -> usize {
        self.spec.config.output_dim()
    }

    /// Bytes of every weight as f32.
    pub fn f32_weight_bytes(&self) -> u64 {
        self.params.values().map(|m| 4 * m.len() as u64).sum()
    }
}

/// Reads `config.json`, the tokenizer, the pooling files and the image
/// preprocessing of a checkpoint folder.
pub(crate) fn load_spec(dir: &Path) -> Result<(Spec, PathBuf), ModelError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ModelError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cfg_path = dir.join("config.json");
    let cfg = ModelConfig::from_hf_json(&cfg_path, &read(&cfg_path)?)?;
    // A folder called `model` (as in pip-packaged checkpoints) is named
    // after its parent.
    let named = match dir.file_name() {
        Some(n) if n == "model" => dir.parent().and_then(Path::file_name),
        n => n,
    };
    let name = named
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let json = |p: &Path| -> Result<Option<serde_json::Value>, ModelError> {
        if !p.is_file() {
            return Ok(None);
        }
        serde_json::from_str(&read(p)?)
            .map(Some)
            .map_err(|e| ModelError::Config {
                path: p.to_path_buf(),
                reason: format!("not JSON: {e}"),
            })
    };
    let (mut pooling, mut normalize) = match cfg.family {
        Family::Bert => (Pooling::Cls, false),
        Family::ClipVision => (Pooling::ClipClass, false),
    };
    let mut max_len = cfg.max_positions;
    if cfg.family == Family::Bert {
        // sentence-transformers: modules.json lists Pooling (with its folder)
        // and Normalize.
        if let Some(modules) = json(&dir.join("modules.json"))? {
            for m in modules.as_array().into_iter().flatten() {
                let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
                let path = m.get("path").and_then(|t| t.as_str()).unwrap_or("");
                if ty.ends_with("Pooling") {
                    let pc = dir.join(path).join("config.json");
                    let pj = json(&pc)?.ok_or_else(|| ModelError::Config {
                        path: pc.clone(),
                        reason: "modules.json lists a Pooling module without its config".into(),
                    })?;
                    let on = |k: &str| pj.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                    pooling = if on("pooling_mode_mean_tokens") {
                        Pooling::Mean
                    } else if on("pooling_mode_cls_token") {
                        Pooling::Cls
                    } else {
                        return Err(ModelError::Config {
                            path: pc,
                            reason: "only mean-tokens or CLS pooling is supported".into(),
                        });
                    };
                } else if ty.ends_with("Normalize") {
                    normalize = true;
                }
            }
        }
        if let Some(sb) = json(&dir.join("sentence_bert_config.json"))? {
            if let Some(m) = sb.get("max_seq_length").and_then(|v| v.as_u64()) {
                max_len = (m as usize).clamp(1, cfg.max_positions);
            }
        }
    }
    let tok_path = dir.join("tokenizer.json");
    let text = match cfg.family {
        Family::Bert if tok_path.is_file() => Some(TextEncoder::from_file(&tok_path, max_len)?),
        Family::Bert => Some(TextEncoder::Hash { vocab: cfg.vocab }),
        Family::ClipVision => None,
    };
    let pre = dir.join("preprocessor_config.json");
    let image = if cfg.family == Family::ClipVision && pre.is_file() {
        ImagePrep::from_json(&pre, &read(&pre)?, cfg.image_size)?
    } else {
        ImagePrep::clip(cfg.image_size.max(1))
    };
    Ok((
        Spec {
            name,
            config: cfg,
            pooling,
            normalize,
            text,
            image,
            max_len,
            fixed_len: None,
        },
        cfg_path,
    ))
}
