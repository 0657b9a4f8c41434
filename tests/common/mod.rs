//! Seeded random inputs shared by the integration tests.
#![allow(dead_code)]

pub mod matmul_check;

use quantscope::format::Matrix;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

/// `rows x cols` samples of N(0, 1).
pub fn gaussian(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    Matrix::from_vec(rows, cols, v).unwrap()
}

/// Gaussian weights with a fraction `rate` of entries replaced by ±`sigmas`.
pub fn gaussian_with_outliers(
    rows: usize,
    cols: usize,
    rate: f64,
    sigmas: f32,
    seed: u64,
) -> Matrix {
    use rand::Rng;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xabcdef);
    let mut v = gaussian(rows, cols, seed).into_vec();
    for x in v.iter_mut() {
        if rng.random::<f64>() < rate {
            *x = if rng.random::<bool>() {
                sigmas
            } else {
                -sigmas
            };
        }
    }
    Matrix::from_vec(rows, cols, v).unwrap()
}

/// Uniform random values in [-1, 1).
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    use rand::Rng;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// f64 reference of `Y = X · Wᵀ` from row-major f32 `w` (`rows x cols`).
pub fn reference_matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], batch: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; batch * rows];
    for b in 0..batch {
        let xb = &x[b * cols..(b + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            y[b * rows + r] = wr.iter().zip(xb).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
    }
    y
}
