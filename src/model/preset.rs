//! Seeded synthetic encoders with the structure that makes quantization
//! hard: Student-t weights (heavier-tailed than a Gaussian, as trained
//! weights are) and a few hidden channels whose layer-norm gain is 10-100×
//! the rest, so those channels carry activations 10-100× larger into every
//! linear — the "outlier features" of LLM.int8() (Dettmers et al. 2022),
//! which real BERT and CLIP checkpoints show in the same few dimensions
//! across layers.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use super::config::{expected_tensors, BlockNames, ModelConfig, CLIP_POST_LN};
use super::image::ImagePrep;
use super::tokenize::TextEncoder;
use super::{Family, Model, ModelError, Pooling, Preset, Spec};
use crate::backend::Activation;
use crate::format::Matrix;
use crate::sample::heavy_tailed;

/// The preset's sizes.
pub(crate) fn preset_config(p: Preset) -> ModelConfig {
    let bert = |hidden, layers, heads, intermediate, vocab, max_positions| ModelConfig {
        family: Family::Bert,
        hidden,
        layers,
        heads,
        intermediate,
        eps: 1e-12,
        activation: Activation::Gelu,
        vocab,
        max_positions,
        type_vocab: 2,
        image_size: 0,
        patch_size: 0,
        channels: 0,
        projection_dim: None,
    };
    match p {
        Preset::Tiny => bert(256, 2, 4, 1024, 4096, 128),
        Preset::MiniLmL6 => bert(384, 6, 12, 1536, 30522, 512),
        Preset::ClipVitL14 => ModelConfig {
            family: Family::ClipVision,
            hidden: 1024,
            layers: 24,
            heads: 16,
            intermediate: 4096,
            eps: 1e-5,
            activation: Activation::QuickGelu,
            vocab: 0,
            max_positions: 0,
            type_vocab: 0,
            image_size: 224,
            patch_size: 14,
            channels: 3,
            projection_dim: Some(768),
        },
    }
}

/// Builds a preset's weights (deterministic: one seed per tensor).
pub(crate) fn build(p: Preset) -> Result<Model, ModelError> {
    let cfg = preset_config(p);
    let params = synthetic_params(&cfg, 0x5eed_0000 + p as u64);
    let spec = Spec {
        name: p.name().to_string(),
        pooling: match cfg.family {
            Family::Bert => Pooling::Mean,
            Family::ClipVision => Pooling::ClipClass,
        },
        normalize: cfg.family == Family::Bert,
        text: (cfg.family == Family::Bert).then_some(TextEncoder::Hash { vocab: cfg.vocab }),
        image: ImagePrep::clip(cfg.image_size.max(1)),
        max_len: cfg.max_positions,
        fixed_len: None,
        config: cfg,
    };
    Ok(Model::from_parts(spec, params))
}

/// Synthetic weights for every tensor `cfg` needs, 2-D as stored in the
/// model (the CLIP patch conv flattened to `hidden x 3·p²`).
pub(crate) fn synthetic_params(cfg: &ModelConfig, seed: u64) -> BTreeMap<String, Matrix> {
    let h = cfg.hidden;
    // A few hot channels, the same in every layer (as in trained models).
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let hot: Vec<(usize, f32)> = (0..3.min(h))
        .map(|_| (rng.random_range(0..h), rng.random_range(10.0..100.0f32)))
        .collect();
    // The layer norm whose output is the model's output carries no hot
    // channels: 3 channels at 10-100x would hold ~98 % of the pooled
    // vector's norm and make every cosine ~1 whatever the quantizer did.
    let final_ln = match cfg.family {
        Family::Bert => format!(
            "{}.weight",
            BlockNames::new(Family::Bert, cfg.layers.saturating_sub(1)).ln2
        ),
        Family::ClipVision => format!("{CLIP_POST_LN}.weight"),
    };
    let tensors = expected_tensors(cfg);
    tensors
        .par_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let s = seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64 + 1);
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(s);
            let rows = if shape.len() == 1 { 1 } else { shape[0] };
            let cols: usize = shape.iter().product::<usize>() / rows;
            let normal = |std: f32, rng: &mut Xoshiro256PlusPlus, n: usize| -> Vec<f32> {
                let d = Normal::new(0.0f32, std).expect("std is positive");
                (0..n).map(|_| d.sample(rng)).collect()
            };
            let m = if name.ends_with("LayerNorm.weight")
                || name.ends_with("layer_norm1.weight")
                || name.ends_with("layer_norm2.weight")
                || name.ends_with("layrnorm.weight")
                || name.ends_with("layernorm.weight")
            {
                let mut g: Vec<f32> = normal(0.05, &mut rng, h).iter().map(|v| 1.0 + v).collect();
                if *name != final_ln {
                    for &(c, k) in &hot {
                        g[c] *= k;
                    }
                }
                Matrix::from_vec(1, h, g)
            } else if shape.len() == 2 && name.ends_with(".weight") && !name.contains("embedding") {
                // A linear: heavy-tailed, std 1/sqrt(fan-in) (0.02 is
                // BERT's init scale; trained weights grow past it, and at
                // 0.02 the sublayers barely move the residual stream, so
                // their quantization errors would barely show).
                let k = 1.0 / (0.02 * (cols as f32).sqrt());
                let w = heavy_tailed(rows, cols, s).into_vec();
                Matrix::from_vec(rows, cols, w.into_iter().map(|v| v * k).collect())
            } else if name.contains("embedding") && shape.len() >= 2 {
                Matrix::from_vec(rows, cols, normal(0.05, &mut rng, rows * cols))
            } else {
                // Biases, layer-norm shifts, the class embedding.
                Matrix::from_vec(rows, cols, normal(0.02, &mut rng, rows * cols))
            };
            (name.clone(), m.expect("preset shapes are consistent"))
        })
        .collect()
}
