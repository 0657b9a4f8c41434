//! Model configuration: the sizes a forward pass needs, read from a Hugging
//! Face `config.json` (BERT family, CLIP vision tower) or set by a preset,
//! and written back in the same layout when a quantized model is saved.

use std::path::Path;

use serde_json::{json, Value};

use super::{Family, ModelError};
use crate::backend::Activation;

/// Architectures [`Model::load`](super::Model::load) understands, for errors.
pub const SUPPORTED: &str = "BERT family (model_type \"bert\": BertModel, MiniLM, \
    sentence-transformers encoders) and the CLIP vision tower (model_type \"clip\" or \
    \"clip_vision_model\": CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection)";

/// The sizes of a transformer encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// BERT or CLIP vision.
    pub family: Family,
    /// Hidden size (model width).
    pub hidden: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Layer-norm epsilon.
    pub eps: f32,
    /// MLP activation.
    pub activation: Activation,
    /// BERT: vocabulary size.
    pub vocab: usize,
    /// BERT: position embeddings (the longest sequence).
    pub max_positions: usize,
    /// BERT: token-type embeddings.
    pub type_vocab: usize,
    /// CLIP: image side in pixels.
    pub image_size: usize,
    /// CLIP: patch side in pixels.
    pub patch_size: usize,
    /// CLIP: input channels (3).
    pub channels: usize,
    /// CLIP: `visual_projection` output size, when the checkpoint has one.
    pub projection_dim: Option<usize>,
}

impl ModelConfig {
    /// Tokens per sequence for CLIP (patches + the class token); 0 for BERT.
    pub fn image_tokens(&self) -> usize {
        match self.family {
            Family::Bert => 0,
            Family::ClipVision => {
                let side = self.image_size / self.patch_size.max(1);
                side * side + 1
            }
        }
    }

    /// Values per patch row: `channels · patch²`.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch_size * self.patch_size
    }

    /// Size of the pooled output.
    pub fn output_dim(&self) -> usize {
        self.projection_dim.unwrap_or(self.hidden)
    }

    /// Checks the sizes are usable (positive, heads divide hidden, ...).
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        for (name, v) in [
            ("hidden_size", self.hidden),
            ("num_hidden_layers", self.layers),
            ("num_attention_heads", self.heads),
            ("intermediate_size", self.intermediate),
        ] {
            if v == 0 {
                return Err(bad(format!("{name} is 0")));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden, self.heads
            )));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(bad(format!("layer_norm_eps {} is not >= 0", self.eps)));
        }
        match self.family {
            Family::Bert => {
                if self.vocab == 0 || self.max_positions == 0 || self.type_vocab == 0 {
                    return Err(bad(
                        "vocab_size, max_position_embeddings and type_vocab_size must be positive"
                            .into(),
                    ));
                }
            }
            Family::ClipVision => {
                if self.patch_size == 0
                    || self.channels == 0
                    || self.image_size < self.patch_size
                    || !self.image_size.is_multiple_of(self.patch_size)
                {
                    return Err(bad(format!(
                        "image_size {} must be a positive multiple of patch_size {}",
                        self.image_size, self.patch_size
                    )));
                }
            }
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path, text: &str) -> Result<ModelConfig, ModelError> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> = v
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let family = match model_type {
            "bert" => Family::Bert,
            "clip" | "clip_vision_model" => Family::ClipVision,
            _ if archs.iter().any(|a| a.starts_with("Bert")) => Family::Bert,
            _ if archs.iter().any(|a| a.starts_with("CLIP")) => Family::ClipVision,
            other => {
                return Err(bad(format!(
                    "model_type '{other}' (architectures {archs:?}) is not supported; \
                     supported: {SUPPORTED}"
                )))
            }
        };
        // CLIPModel nests the tower's sizes in `vision_config`.
        let c = match (family, v.get("vision_config")) {
            (Family::ClipVision, Some(vc)) if vc.is_object() => vc,
            _ => &v,
        };
        let num = |key: &str, default: Option<usize>| -> Result<usize, ModelError> {
            match c.get(key) {
                Some(x) => x
                    .as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(format!("{key} is {x}, expected a whole number"))),
                None => default.ok_or_else(|| bad(format!("{key} is missing"))),
            }
        };
        let act_name = c
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or(match family {
                Family::Bert => "gelu",
                Family::ClipVision => "quick_gelu",
            });
        let activation = match act_name {
            "gelu" => Activation::Gelu,
            "quick_gelu" => Activation::QuickGelu,
            other => {
                return Err(bad(format!(
                    "hidden_act '{other}' is not supported (gelu, quick_gelu)"
                )))
            }
        };
        if let Some(p) = c.get("position_embedding_type").and_then(Value::as_str) {
            if p != "absolute" {
                return Err(bad(format!(
                    "position_embedding_type '{p}' is not supported (absolute)"
                )));
            }
        }
        let eps_default = match family {
            Family::Bert => 1e-12,
            Family::ClipVision => 1e-5,
        };
        let eps = c
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(eps_default) as f32;
        let cfg = match family {
            Family::Bert => ModelConfig {
                family,
                hidden: num("hidden_size", None)?,
                layers: num("num_hidden_layers", None)?,
                heads: num("num_attention_heads", None)?,
                intermediate: num("intermediate_size", None)?,
                eps,
                activation,
                vocab: num("vocab_size", None)?,
                max_positions: num("max_position_embeddings", Some(512))?,
                type_vocab: num("type_vocab_size", Some(2))?,
                image_size: 0,
                patch_size: 0,
                channels: 0,
                projection_dim: None,
            },
            Family::ClipVision => {
                let proj = v
                    .get("projection_dim")
                    .or_else(|| c.get("projection_dim"))
                    .and_then(Value::as_u64)
                    .map(|p| p as usize);
                ModelConfig {
                    family,
                    hidden: num("hidden_size", None)?,
                    layers: num("num_hidden_layers", None)?,
                    heads: num("num_attention_heads", None)?,
                    intermediate: num("intermediate_size", None)?,
                    eps,
                    activation,
                    vocab: 0,
                    max_positions: 0,
                    type_vocab: 0,
                    image_size: num("image_size", Some(224))?,
                    patch_size: num("patch_size", Some(32))?,
                    channels: num("num_channels", Some(3))?,
                    projection_dim: proj,
                }
            }
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The `config.json` a Hugging Face loader (and [`Self::from_hf_json`])
    /// reads back.
    pub fn to_hf_json(&self) -> Value {
        let act = match self.activation {
            Activation::Gelu => "gelu",
            Activation::QuickGelu => "quick_gelu",
        };
        match self.family {
            Family::Bert => json!({
                "architectures": ["BertModel"],
                "model_type": "bert",
                "hidden_size": self.hidden,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "intermediate_size": self.intermediate,
                "hidden_act": act,
                "layer_norm_eps": self.eps,
                "vocab_size": self.vocab,
                "max_position_embeddings": self.max_positions,
                "type_vocab_size": self.type_vocab,
                "position_embedding_type": "absolute",
            }),
            Family::ClipVision => {
                let mut v = json!({
                    "architectures": [if self.projection_dim.is_some() {
                        "CLIPVisionModelWithProjection"
                    } else {
                        "CLIPVisionModel"
                    }],
                    "model_type": "clip_vision_model",
                    "hidden_size": self.hidden,
                    "num_hidden_layers": self.layers,
                    "num_attention_heads": self.heads,
                    "intermediate_size": self.intermediate,
                    "hidden_act": act,
                    "layer_norm_eps": self.eps,
                    "image_size": self.image_size,
                    "patch_size": self.patch_size,
                    "num_channels": self.channels,
                });
                if let Some(p) = self.projection_dim {
                    v["projection_dim"] = json!(p);
                }
                v
            }
        }
    }
}

/// Names of one block's tensors (without `.weight` / `.bias`), in the
/// Hugging Face layout of each family.
pub(crate) struct BlockNames {
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    pub fc1: String,
    pub fc2: String,
    pub ln1: String,
    pub ln2: String,
}

impl BlockNames {
    pub fn new(family: Family, i: usize) -> BlockNames {
        match family {
            Family::Bert => {
                let p = format!("encoder.layer.{i}");
                BlockNames {
                    q: format!("{p}.attention.self.query"),
                    k: format!("{p}.attention.self.key"),
                    v: format!("{p}.attention.self.value"),
                    o: format!("{p}.attention.output.dense"),
                    fc1: format!("{p}.intermediate.dense"),
                    fc2: format!("{p}.output.dense"),
                    // Post-LN: ln1 follows attention, ln2 follows the MLP.
                    ln1: format!("{p}.attention.output.LayerNorm"),
                    ln2: format!("{p}.output.LayerNorm"),
                }
            }
            Family::ClipVision => {
                let p = format!("vision_model.encoder.layers.{i}");
                BlockNames {
                    q: format!("{p}.self_attn.q_proj"),
                    k: format!("{p}.self_attn.k_proj"),
                    v: format!("{p}.self_attn.v_proj"),
                    o: format!("{p}.self_attn.out_proj"),
                    fc1: format!("{p}.mlp.fc1"),
                    fc2: format!("{p}.mlp.fc2"),
                    // Pre-LN: ln1 before attention, ln2 before the MLP.
                    ln1: format!("{p}.layer_norm1"),
                    ln2: format!("{p}.layer_norm2"),
                }
            }
        }
    }

    /// The six linears in forward order.
    pub fn linears(&self) -> [&str; 6] {
        [&self.q, &self.k, &self.v, &self.o, &self.fc1, &self.fc2]
    }
}

/// BERT embedding tensor names.
pub(crate) const BERT_WORD: &str = "embeddings.word_embeddings.weight";
pub(crate) const BERT_POS: &str = "embeddings.position_embeddings.weight";
pub(crate) const BERT_TYPE: &str = "embeddings.token_type_embeddings.weight";
pub(crate) const BERT_EMB_LN: &str = "embeddings.LayerNorm";
/// CLIP tensor names.
pub(crate) const CLIP_PATCH: &str = "vision_model.embeddings.patch_embedding.weight";
pub(crate) const CLIP_CLASS: &str = "vision_model.embeddings.class_embedding";
pub(crate) const CLIP_POS: &str = "vision_model.embeddings.position_embedding.weight";
pub(crate) const CLIP_PRE_LN: &str = "vision_model.pre_layrnorm";
pub(crate) const CLIP_POST_LN: &str = "vision_model.post_layernorm";
pub(crate) const CLIP_PROJ: &str = "visual_projection";

/// Every tensor of the model: name and shape as stored by Hugging Face
/// (the patch embedding 4-D), in forward order. `proj` adds
/// `visual_projection.weight`.
pub(crate) fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden, cfg.intermediate);
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let norm = |out: &mut Vec<(String, Vec<usize>)>, n: &str| {
        out.push((format!("{n}.weight"), vec![h]));
        out.push((format!("{n}.bias"), vec![h]));
    };
    match cfg.family {
        Family::Bert => {
            out.push((BERT_WORD.into(), vec![cfg.vocab, h]));
            out.push((BERT_POS.into(), vec![cfg.max_positions, h]));
            out.push((BERT_TYPE.into(), vec![cfg.type_vocab, h]));
            norm(&mut out, BERT_EMB_LN);
        }
        Family::ClipVision => {
            let p = cfg.patch_size;
            out.push((CLIP_PATCH.into(), vec![h, cfg.channels, p, p]));
            out.push((CLIP_CLASS.into(), vec![h]));
            out.push((CLIP_POS.into(), vec![cfg.image_tokens(), h]));
            norm(&mut out, CLIP_PRE_LN);
        }
    }
    for l in 0..cfg.layers {
        let b = BlockNames::new(cfg.family, l);
        let lin = |out: &mut Vec<(String, Vec<usize>)>, n: &str, rows: usize, cols: usize| {
            out.push((format!("{n}.weight"), vec![rows, cols]));
            out.push((format!("{n}.bias"), vec![rows]));
        };
        if cfg.family == Family::ClipVision {
            norm(&mut out, &b.ln1);
        }
        lin(&mut out, &b.q, h, h);
        lin(&mut out, &b.k, h, h);
        lin(&mut out, &b.v, h, h);
        lin(&mut out, &b.o, h, h);
        if cfg.family == Family::Bert {
            norm(&mut out, &b.ln1);
        } else {
            norm(&mut out, &b.ln2);
        }
        lin(&mut out, &b.fc1, i, h);
        lin(&mut out, &b.fc2, h, i);
        if cfg.family == Family::Bert {
            norm(&mut out, &b.ln2);
        }
    }
    if cfg.family == Family::ClipVision {
        norm(&mut out, CLIP_POST_LN);
        if let Some(p) = cfg.projection_dim {
            out.push((format!("{CLIP_PROJ}.weight"), vec![p, h]));
        }
    }
    out
}

/// The quantizable linears `(name, rows, cols)` in forward order: every
/// block's q, k, v, o, fc1, fc2, then CLIP's `visual_projection`. The CLIP
/// patch embedding stays f32 (it is 0.1 % of the weights, and the first
/// layer sees raw pixels).
pub(crate) fn linear_names(cfg: &ModelConfig) -> Vec<(String, usize, usize)> {
    let (h, i) = (cfg.hidden, cfg.intermediate);
    let mut out = Vec::new();
    for l in 0..cfg.layers {
        let b = BlockNames::new(cfg.family, l);
        out.push((b.q.clone(), h, h));
        out.push((b.k.clone(), h, h));
        out.push((b.v.clone(), h, h));
        out.push((b.o.clone(), h, h));
        out.push((b.fc1.clone(), i, h));
        out.push((b.fc2.clone(), h, i));
    }
    if let (Family::ClipVision, Some(p)) = (cfg.family, cfg.projection_dim) {
        out.push((CLIP_PROJ.to_string(), p, h));
    }
    out
}
