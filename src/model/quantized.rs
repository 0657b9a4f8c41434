//! A model with every linear in a packed format: made by [`quantize_model`]
//! (data-free schemes directly; GPTQ / AWQ from calibration activations of a
//! CPU forward), saved to and loaded from a folder without re-quantizing.
//!
//! Calibration order (GPTQ, Frantar et al. 2022, and the sequential mode
//! of its reference implementation): blocks in forward order; block `l`'s
//! six linears are calibrated on the activations the f32 block computes from
//! the output of blocks `0..l` *already quantized*, then block `l` is run
//! again with its quantized weights to give block `l + 1` its input. Pad
//! tokens are left out of the calibration rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::config::{self, expected_tensors, linear_names, BlockNames};
use super::device::DeviceModel;
use super::{load_spec, BatchData, Family, Inputs, Model, ModelConfig, ModelError, Spec};
use crate::backend::cpu::CpuBackend;
use crate::format::{pack_plain, FormatKind, Matrix, QuantizedMatrix};
use crate::quant::{quantize, quantize_calibrated, QuantConfig};

/// Which format each linear gets: a default, and per-layer overrides (mixed
/// precision), keyed by [`super::LinearInfo::name`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPlan {
    /// The configuration of every linear not in `per_layer`.
    pub default: QuantConfig,
    /// Overrides by linear name.
    pub per_layer: BTreeMap<String, QuantConfig>,
}

impl QuantPlan {
    /// Every linear with `cfg`.
    pub fn uniform(cfg: QuantConfig) -> QuantPlan {
        QuantPlan {
            default: cfg,
            per_layer: BTreeMap::new(),
        }
    }

    /// The configuration of linear `name`.
    pub fn config_for(&self, name: &str) -> &QuantConfig {
        self.per_layer.get(name).unwrap_or(&self.default)
    }

    /// A short label: the scheme's name, or `mixed(<default>+N)`.
    pub fn label(&self) -> String {
        if self.per_layer.is_empty() {
            self.default.scheme.name().to_string()
        } else {
            format!(
                "mixed({}+{} override(s))",
                self.default.scheme.name(),
                self.per_layer.len()
            )
        }
    }
}

/// A model whose linears are packed matrices; every other parameter
/// (embeddings, norms, biases, the CLIP patch embedding) stays f32.
#[derive(Clone)]
pub struct QuantizedModel {
    spec: Arc<Spec>,
    linears: BTreeMap<String, QuantizedMatrix>,
    params: BTreeMap<String, Matrix>,
    strategy: String,
    notes: Vec<String>,
}

const MARKER: &str = "quantscope.json";
const WEIGHTS: &str = "quantized.safetensors";

pub(crate) fn is_quantized_dir(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Quantizes every linear of `m` as `plan` says. Schemes that need
/// calibration (GPTQ, AWQ) take their activations from a CPU f32 forward on
/// `calib` (keep it apart from the evaluation inputs;
/// [`Model::calibration_inputs`] is a built-in set), in the order the
/// module documentation gives. `progress(done, total)` counts linears.
pub fn quantize_model(
    m: &Model,
    plan: &QuantPlan,
    calib: Option<&Inputs>,
    progress: &dyn Fn(usize, usize),
) -> Result<QuantizedModel, ModelError> {
    let layers = m.linear_layers();
    let known: BTreeSet<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    let unknown: Vec<&String> = plan
        .per_layer
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(ModelError::Input(format!(
            "the plan names linear(s) the model does not have: {unknown:?}"
        )));
    }
    let weight = |name: &str| -> Result<&Matrix, ModelError> {
        m.tensor(&format!("{name}.weight"))
            .ok_or_else(|| ModelError::Input(format!("model has no weight '{name}.weight'")))
    };
    let mut params = m.params().clone();
    for l in &layers {
        params.remove(&format!("{}.weight", l.name));
    }
    let total = layers.len();
    let needs_calib = layers
        .iter()
        .any(|l| plan.config_for(&l.name).scheme.needs_calibration());
    let mut linears = BTreeMap::new();
    let mut notes = Vec::new();
    if !needs_calib {
        for (i, l) in layers.iter().enumerate() {
            let q = quantize(weight(&l.name)?, plan.config_for(&l.name)).map_err(|source| {
                ModelError::Quant {
                    layer: l.name.clone(),
                    source,
                }
            })?;
            linears.insert(l.name.clone(), q);
            progress(i + 1, total);
        }
    } else {
        let calib = calib.ok_or_else(|| {
            ModelError::Input(format!(
                "{} needs calibration inputs (Model::calibration_inputs is a built-in set)",
                plan.label()
            ))
        })?;
        calibrated(m, plan, calib, &mut linears, &mut notes, progress)?;
    }
    Ok(QuantizedModel {
        spec: m.spec().clone(),
        linears,
        params,
        strategy: plan.label(),
        notes,
    })
}

/// GPTQ / AWQ (and the data-free schemes of a mixed plan), block by block.
fn calibrated(
    m: &Model,
    plan: &QuantPlan,
    calib: &Inputs,
    linears: &mut BTreeMap<String, QuantizedMatrix>,
    notes: &mut Vec<String>,
    progress: &dyn Fn(usize, usize),
) -> Result<(), ModelError> {
    let cfg = m.config().clone();
    let total = linear_names(&cfg).len();
    // The f32 model on an exact CPU backend (f32 activations everywhere).
    let f32_plan = QuantPlan::uniform(QuantConfig::new(crate::quant::Scheme::None(
        FormatKind::F32,
    )));
    let f32_model = quantize_model(m, &f32_plan, None, &|_, _| {})?;
    let cpu = CpuBackend::exact();
    let mut dm = DeviceModel::upload(&cpu, &f32_model)?;
    if calib.is_empty() {
        return Err(ModelError::Input("calibration inputs are empty".into()));
    }
    let batch = m.encode(calib, 0..calib.len())?;
    // Rows that are real tokens (pads would bias the Hessian / scales).
    let keep: Vec<usize> = match &batch.data {
        BatchData::Tokens { mask, .. } => (0..mask.len()).filter(|&r| mask[r] > 0.5).collect(),
        BatchData::Patches { .. } => (0..batch.n * batch.seq).collect(),
    };
    let rows_of = |v: &[f32], cols: usize, keep: &[usize]| -> Result<Matrix, ModelError> {
        let mut out = Vec::with_capacity(keep.len() * cols);
        for &r in keep {
            out.extend_from_slice(&v[r * cols..][..cols]);
        }
        Matrix::from_vec(keep.len(), cols, out).map_err(|e| ModelError::Input(e.to_string()))
    };
    let mut done = 0;
    let mut quantize_one =
        |name: &str, x: &Matrix, notes: &mut Vec<String>| -> Result<QuantizedMatrix, ModelError> {
            let w = m
                .tensor(&format!("{name}.weight"))
                .ok_or_else(|| ModelError::Input(format!("model has no weight '{name}.weight'")))?;
            let c = plan.config_for(name);
            let (q, n) = quantize_calibrated(w, c, x, &mut |_, _| {}).map_err(|source| {
                ModelError::Quant {
                    layer: name.to_string(),
                    source,
                }
            })?;
            notes.extend(n.notes.into_iter().map(|s| format!("{name}: {s}")));
            done += 1;
            progress(done, total);
            Ok(q)
        };
    dm.run_embed(&batch)?;
    for l in 0..cfg.layers {
        let caps = dm.run_block(l)?;
        let names = BlockNames::new(cfg.family, l);
        let inputs = [
            rows_of(&caps[0], cfg.hidden, &keep)?,
            rows_of(&caps[1], cfg.hidden, &keep)?,
            rows_of(&caps[2], cfg.hidden, &keep)?,
            rows_of(&caps[3], cfg.intermediate, &keep)?,
        ];
        for (j, name) in names.linears().into_iter().enumerate() {
            let x = &inputs[[0, 0, 0, 1, 2, 3][j]];
            let q = quantize_one(name, x, notes)?;
            dm.replace_linear(Some(l), j, &q)?;
            linears.insert(name.to_string(), q);
        }
        // Again with the quantized block: the next block's input.
        dm.run_block(l)?;
    }
    if cfg.family == Family::ClipVision && cfg.projection_dim.is_some() {
        let x = dm.run_head_input()?;
        let all: Vec<usize> = (0..batch.n).collect();
        let xm = rows_of(&x, cfg.hidden, &all)?;
        let q = quantize_one(config::CLIP_PROJ, &xm, notes)?;
        linears.insert(config::CLIP_PROJ.to_string(), q);
    }
    dm.free()?;
    Ok(())
}

impl QuantizedModel {
    pub(crate) fn spec(&self) -> &Arc<Spec> {
        &self.spec
    }

    pub(crate) fn params(&self) -> &BTreeMap<String, Matrix> {
        &self.params
    }

    /// The model's name.
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

    /// The plan's label (`int8`, `gptq-int4`, `mixed(...)`).
    pub fn strategy(&self) -> &str {
        &self.strategy
    }

    /// The quantizers' remarks (damping, chosen alpha), per linear.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The packed weights of linear `name`.
    pub fn layer_weights(&self, name: &str) -> Option<&QuantizedMatrix> {
        self.linears.get(name)
    }

    /// Every linear by name.
    pub fn linears(&self) -> &BTreeMap<String, QuantizedMatrix> {
        &self.linears
    }

    /// Exact bytes: every linear's packed storage plus every f32 parameter
    /// (embeddings, norms, biases, the CLIP patch embedding).
    pub fn weight_bytes(&self) -> u64 {
        let lin: u64 = self
            .linears
            .values()
            .map(|q| q.storage_bytes().total() as u64)
            .sum();
        lin + self
            .params
            .values()
            .map(|p| 4 * p.len() as u64)
            .sum::<u64>()
    }

    /// The f32 model these weights dequantize to.
    pub fn to_model(&self) -> Model {
        let mut params = self.params.clone();
        for (name, q) in &self.linears {
            params.insert(format!("{name}.weight"), q.dequantize());
        }
        Model::from_parts((*self.spec).clone(), params)
    }

    /// Writes a checkpoint folder: `quantized.safetensors` (every linear's
    /// packed parts with their format in the header metadata, as
    /// [`crate::io::write_quantized`] writes them, and the f32 parameters),
    /// `config.json`, the tokenizer and pooling files or
    /// `preprocessor_config.json`, and `quantscope.json` (name, strategy).
    /// [`Model::load`] and [`QuantizedModel::load`] read it back.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let werr = |p: &Path, e: String| {
            ModelError::Io(crate::io::IoError::Write {
                path: p.to_path_buf(),
                reason: e,
            })
        };
        std::fs::create_dir_all(dir).map_err(|e| werr(dir, e.to_string()))?;
        let mut items: Vec<(String, QuantizedMatrix)> = self
            .linears
            .iter()
            .map(|(n, q)| (n.clone(), q.clone()))
            .collect();
        for (n, p) in &self.params {
            let q = pack_plain(p, FormatKind::F32).map_err(|e| werr(dir, e.to_string()))?;
            items.push((n.clone(), q));
        }
        crate::io::write_quantized(&dir.join(WEIGHTS), &items, false)?;
        let write_json = |name: &str, v: &serde_json::Value| -> Result<(), ModelError> {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(v).map_err(|e| werr(&p, e.to_string()))?;
            Ok(crate::io::write_atomic(&p, text.as_bytes())?)
        };
        let spec = &self.spec;
        write_json("config.json", &spec.config.to_hf_json())?;
        match spec.config.family {
            Family::Bert => {
                if let Some(t) = &spec.text {
                    t.save(&dir.join("tokenizer.json"))?;
                }
                let mut modules = vec![
                    json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
                    json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
                ];
                if spec.normalize {
                    modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
                }
                write_json("modules.json", &json!(modules))?;
                let mean = spec.pooling == super::Pooling::Mean;
                write_json(
                    "1_Pooling/config.json",
                    &json!({
                        "word_embedding_dimension": spec.config.hidden,
                        "pooling_mode_cls_token": !mean,
                        "pooling_mode_mean_tokens": mean,
                    }),
                )?;
                write_json(
                    "sentence_bert_config.json",
                    &json!({"max_seq_length": spec.max_len}),
                )?;
            }
            Family::ClipVision => {
                write_json("preprocessor_config.json", &spec.image.to_json())?;
            }
        }
        write_json(
            MARKER,
            &json!({
                "format": "quantscope-quantized-model",
                "version": 1,
                "quantscope_version": env!("CARGO_PKG_VERSION"),
                "name": spec.name,
                "strategy": self.strategy,
                "hash_tokenizer": matches!(spec.text, Some(super::tokenize::TextEncoder::Hash { .. })),
            }),
        )
    }

    /// Reads a folder written by [`Self::save`], packed weights as stored.
    pub fn load(dir: &Path) -> Result<QuantizedModel, ModelError> {
        let marker = dir.join(MARKER);
        let text = std::fs::read_to_string(&marker).map_err(|source| ModelError::Read {
            path: marker.clone(),
            source,
        })?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: marker.clone(),
                reason: format!("not JSON: {e}"),
            })?;
        let (mut spec, _) = load_spec(dir)?;
        if let Some(n) = meta.get("name").and_then(|v| v.as_str()) {
            spec.name = n.to_string();
        }
        let strategy = meta
            .get("strategy")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        let path = dir.join(WEIGHTS);
        let stored: BTreeMap<String, QuantizedMatrix> =
            crate::io::read_quantized(&path)?.into_iter().collect();
        let cfg = &spec.config;
        let lin = linear_names(cfg);
        let lin_set: BTreeSet<String> = lin.iter().map(|(n, _, _)| n.clone()).collect();
        let mut missing = Vec::new();
        let mut linears = BTreeMap::new();
        for (name, rows, cols) in &lin {
            match stored.get(name) {
                Some(q) if q.rows() == *rows && q.cols() == *cols => {
                    linears.insert(name.clone(), q.clone());
                }
                Some(q) => {
                    return Err(ModelError::Tensor {
                        path,
                        name: name.clone(),
                        reason: format!(
                            "is {}x{}, config.json needs {rows}x{cols}",
                            q.rows(),
                            q.cols()
                        ),
                    })
                }
                None => missing.push(name.clone()),
            }
        }
        let mut params = BTreeMap::new();
        for (name, shape) in expected_tensors(cfg) {
            let base = name.strip_suffix(".weight").unwrap_or(&name);
            if lin_set.contains(base) && name.ends_with(".weight") {
                continue;
            }
            let Some(q) = stored.get(&name) else {
                missing.push(name);
                continue;
            };
            let n: usize = shape.iter().product();
            if q.rows() * q.cols() != n || q.kind() != FormatKind::F32 {
                return Err(ModelError::Tensor {
                    path,
                    name,
                    reason: format!(
                        "is {}x{} {}, config.json needs {shape:?} f32",
                        q.rows(),
                        q.cols(),
                        q.kind()
                    ),
                });
            }
            let m = q.dequantize();
            if let Some(i) = m.data().iter().position(|v| !v.is_finite()) {
                return Err(ModelError::Tensor {
                    path,
                    name,
                    reason: format!("value at flat index {i} is not finite"),
                });
            }
            params.insert(name, m);
        }
        if !missing.is_empty() {
            return Err(ModelError::Layout {
                path: dir.to_path_buf(),
                missing,
                unexpected: Vec::new(),
            });
        }
        Ok(QuantizedModel {
            spec: Arc::new(spec),
            linears,
            params,
            strategy,
            notes: Vec::new(),
        })
    }
}
