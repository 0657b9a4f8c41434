//! A built-in sample model: weights shaped like one small transformer block,
//! so every command works on a fresh machine with no download.
//!
//! Trained transformer weights are heavier-tailed than a Gaussian and have a
//! few input channels with much larger magnitude (the "outlier features" of
//! LLM.int8(), Dettmers et al. 2022). The sample reproduces both: Student-t
//! (ν = 5) entries with std 0.02, and 0.5% of input columns scaled ×8.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StudentT};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::format::Matrix;

/// Names and shapes `(rows = out features, cols = in features)` of the sample.
pub const SAMPLE_LAYERS: [(&str, usize, usize); 4] = [
    ("block0.attn.qkv", 768, 256),
    ("block0.attn.out", 256, 256),
    ("block0.mlp.up", 1024, 256),
    ("block0.mlp.down", 256, 1024),
];

/// One heavy-tailed weight matrix with a few large input channels.
pub fn heavy_tailed(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let t = StudentT::new(5.0f32).expect("ν = 5 is valid");
    // Std of Student-t(5) is sqrt(5/3); scale to 0.02.
    let k = 0.02 / (5.0f32 / 3.0).sqrt();
    let big: Vec<bool> = (0..cols).map(|_| rng.random::<f64>() < 0.005).collect();
    let data = (0..rows * cols)
        .map(|i| {
            let v = t.sample(&mut rng) * k;
            if big[i % cols] {
                v * 8.0
            } else {
                v
            }
        })
        .collect();
    Matrix::from_vec(rows, cols, data).expect("shape matches")
}

/// The sample model's weights, deterministic for `seed`.
pub fn sample_weights(seed: u64) -> Vec<(String, Matrix)> {
    SAMPLE_LAYERS
        .iter()
        .enumerate()
        .map(|(i, &(name, r, c))| {
            (
                name.to_string(),
                heavy_tailed(r, c, seed.wrapping_add(i as u64)),
            )
        })
        .collect()
}
