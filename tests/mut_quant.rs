//! The round-to-nearest quantizer and the codebook fits checked against
//! values worked out by hand or recomputed here from the data: exact codes,
//! scales and zero points of `quantize_uniform`, the Lloyd-Max fixed point
//! of the learned codebook, and its exact recovery of 16 levels. Written so
//! that a changed operator in `src/quant/rtn.rs` or `src/quant/codebook.rs`
//! fails here (see `docs/TESTING.md`, mutation testing).

mod common;

use quantscope::format::{pack_lut4, pack_q4, pack_q8, GroupSize, Matrix, Packed, NF4_CODEBOOK};
use quantscope::quant::codebook::{fit_codebook, kmeans4, nf4, KMeansConfig};
use quantscope::quant::rtn::{int4, int8, quantize_uniform, Granularity, Symmetry, UniformSpec};

fn mat(rows: usize, cols: usize, v: Vec<f32>) -> Matrix {
    Matrix::from_vec(rows, cols, v).unwrap()
}

fn spec(bits: u8, symmetry: Symmetry, granularity: Granularity) -> UniformSpec {
    UniformSpec {
        bits,
        symmetry,
        granularity,
    }
}

#[test]
fn uniform_spec_bounds() {
    let w = mat(1, 4, vec![1.0; 4]);
    for bits in [0u8, 1, 9, 16] {
        let e = quantize_uniform(&w, spec(bits, Symmetry::Symmetric, Granularity::Row))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("bits must be in 2..=8, got {bits}")),
            "{e}"
        );
    }
    for bits in [2u8, 8] {
        assert!(spec(bits, Symmetry::Asymmetric, Granularity::Tensor)
            .validate()
            .is_ok());
    }
    let e = quantize_uniform(&w, spec(4, Symmetry::Symmetric, Granularity::Group(0)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("group size must be positive"), "{e}");
}

#[test]
fn symmetric_codes_by_hand() {
    // 4 bits: qmax 7, zero 7, codes 0..=14. Row 0 absmax 7 -> scale 1;
    // row 1 all zero -> scale 0, every code the zero point.
    let w = mat(2, 4, vec![7.0, -3.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let q = quantize_uniform(&w, spec(4, Symmetry::Symmetric, Granularity::Row)).unwrap();
    assert_eq!(q.group_len, 4);
    assert_eq!(q.scales, vec![1.0, 0.0]);
    assert_eq!(q.zeros, vec![7, 7]);
    // -3.5 rounds to even (-4), 7 is the top code 14.
    assert_eq!(q.codes, vec![14, 3, 8, 7, 7, 7, 7, 7]);
    assert_eq!(
        q.dequantize().data(),
        &[7.0, -4.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    assert_eq!((q.step(0, 3), q.step(1, 0)), (1.0, 0.0));
    // 3 bits: qmax 3, absmax 6 -> scale 2; 5 / 2 = 2.5 -> 2 (even), -6 -> -3.
    let w = mat(1, 3, vec![5.0, -6.0, 6.0]);
    let q = quantize_uniform(&w, spec(3, Symmetry::Symmetric, Granularity::Tensor)).unwrap();
    assert_eq!((q.scales.clone(), q.zeros.clone()), (vec![2.0], vec![3]));
    assert_eq!(q.codes, vec![5, 0, 6]);
    assert_eq!(q.dequantize().data(), &[4.0, -6.0, 6.0]);
}

#[test]
fn asymmetric_codes_by_hand() {
    // 2 bits: levels 0..=3. Groups of 2 over 5 columns: 3 groups a row.
    // [0, 3]: scale 1, zero 0. [-1.5, 1.5]: scale 1, zero rne(1.5) = 2, codes
    // rne(-1.5) + 2 = 0 and rne(1.5) + 2 = 4 -> 3. [6]: range [0, 6], scale 2.
    let w = mat(
        2,
        5,
        vec![0.0, 3.0, -1.5, 1.5, 6.0, 3.0, 0.0, 0.0, 0.0, -3.0],
    );
    let q = quantize_uniform(&w, spec(2, Symmetry::Asymmetric, Granularity::Group(2))).unwrap();
    assert_eq!(q.group_len, 2);
    assert_eq!(q.scales, vec![1.0, 1.0, 2.0, 1.0, 0.0, 1.0]);
    assert_eq!(q.zeros, vec![0, 2, 0, 0, 0, 3]);
    assert_eq!(q.codes, vec![0, 3, 0, 3, 3, 3, 0, 0, 0, 0]);
    assert_eq!(
        q.dequantize().data(),
        &[0.0, 3.0, -2.0, 1.0, 6.0, 3.0, 0.0, 0.0, 0.0, -3.0]
    );
    // The group of (1, 4) is the sixth: row 1, group 2.
    assert_eq!(q.step(1, 4), 1.0);
    assert_eq!(q.step(0, 4), 2.0);
    // 8 bits per tensor over two rows: range [-1, 4] / 255.
    let w = mat(2, 2, vec![-1.0, 4.0, 0.0, 1.0]);
    let q = quantize_uniform(&w, spec(8, Symmetry::Asymmetric, Granularity::Tensor)).unwrap();
    assert_eq!(q.group_len, 4);
    assert_eq!(q.scales, vec![5.0 / 255.0]);
    assert_eq!(q.zeros, vec![51]); // 1 / (5/255) = 51
    assert_eq!(q.codes, vec![0, 255, 51, 102]);
}

#[test]
fn uniform_bits_per_weight_count_scales_and_zeros() {
    let w = mat(2, 8, (0..16).map(|i| i as f32 - 7.0).collect());
    // Per row: 2 scales over 16 weights; f16 scale (16 bits), + u8 zero (8).
    let s = quantize_uniform(&w, spec(4, Symmetry::Symmetric, Granularity::Row)).unwrap();
    assert_eq!(s.bits_per_weight(), 4.0 + 2.0 * 16.0 / 16.0);
    let a = quantize_uniform(&w, spec(3, Symmetry::Asymmetric, Granularity::Group(4))).unwrap();
    assert_eq!(a.scales.len(), 4);
    assert_eq!(a.bits_per_weight(), 3.0 + 4.0 * 24.0 / 16.0);
}

#[test]
fn int8_int4_and_nf4_are_the_canonical_packers() {
    let w = common::gaussian(5, 100, 4);
    let g = GroupSize::Cols(32);
    assert_eq!(int8(&w, g).unwrap(), pack_q8(&w, g).unwrap());
    assert_eq!(int4(&w, g).unwrap(), pack_q4(&w, g).unwrap());
    assert_eq!(nf4(&w, g).unwrap(), pack_lut4(&w, g, NF4_CODEBOOK).unwrap());
    assert!(int8(&w, GroupSize::Cols(48)).is_err());
}

#[test]
fn kmeans_settings_are_checked() {
    let d = KMeansConfig::default();
    assert_eq!(
        (d.seed, d.tolerance, d.max_iter, d.restarts),
        (42, 1e-9, 500, 4)
    );
    let w = common::gaussian(4, 64, 1);
    let g = GroupSize::Row;
    for cfg in [
        KMeansConfig { max_iter: 0, ..d },
        KMeansConfig { restarts: 0, ..d },
    ] {
        let e = fit_codebook(&w, g, &cfg).unwrap_err().to_string();
        assert!(e.contains("at least one iteration and one restart"), "{e}");
    }
    assert!(fit_codebook(&w, GroupSize::Cols(40), &d).is_err());
}

/// 16 levels in [-1, 1] with both ends, exact in f32 and apart by more than
/// the histogram's bin width.
fn sixteen_levels() -> [f32; 16] {
    [
        -1.0, -0.75, -0.5, -0.375, -0.25, -0.125, -0.0625, 0.0, 0.03125, 0.09375, 0.1875, 0.3125,
        0.4375, 0.625, 0.8125, 1.0,
    ]
}

#[test]
fn kmeans_recovers_sixteen_levels_exactly() {
    // Every row holds every level once (scaled by a power of two, so the
    // f16 absmax scale is exact), in a row-dependent order.
    let levels = sixteen_levels();
    let (rows, cols) = (24, 32);
    let mut v = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let scale = 2f32.powi(r as i32 % 5 - 2);
        for c in 0..cols {
            v.push(levels[(c * 7 + r) % 16] * scale);
        }
    }
    let w = mat(rows, cols, v);
    let cfg = KMeansConfig::default();
    let cb = fit_codebook(&w, GroupSize::Row, &cfg).unwrap();
    assert_eq!(cb, levels);
    let q = kmeans4(&w, GroupSize::Row, &cfg).unwrap();
    assert_eq!(q.dequantize(), w);
    let Packed::Lut4(p) = q.packed() else {
        panic!("lut4")
    };
    assert_eq!(p.codebook, levels);
}

#[test]
fn kmeans_with_few_distinct_values_keeps_them() {
    // Three distinct normalized values: the codebook must hold each exactly
    // (and stay sorted and finite); the matrix reconstructs exactly.
    let v: Vec<f32> = (0..64).map(|i| [-1.0f32, 0.25, 1.0][i % 3]).collect();
    let w = mat(2, 32, v);
    let cfg = KMeansConfig::default();
    let cb = fit_codebook(&w, GroupSize::Row, &cfg).unwrap();
    assert!(cb.windows(2).all(|p| p[0] <= p[1]), "{cb:?}");
    assert!(cb.iter().all(|x| x.is_finite() && x.abs() <= 1.0), "{cb:?}");
    for x in [-1.0f32, 0.25, 1.0] {
        assert!(cb.contains(&x), "{x} missing from {cb:?}");
    }
    assert_eq!(kmeans4(&w, GroupSize::Row, &cfg).unwrap().dequantize(), w);
    // All zero: nothing to fit, the result is finite and dequantizes to 0.
    let z = mat(2, 32, vec![0.0; 64]);
    let q = kmeans4(&z, GroupSize::Row, &cfg).unwrap();
    assert_eq!(q.dequantize(), z);
}

/// Normalized values of `w` (by each group's f16 absmax) and their weights
/// (the scale squared), recomputed here from the module's definition.
fn normalized(w: &Matrix, glen: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for r in 0..w.rows() {
        for chunk in w.row(r).chunks(glen) {
            let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s = half::f16::from_f32(amax).to_f32();
            if s == 0.0 {
                continue;
            }
            for &x in chunk {
                out.push((((x / s) as f64).clamp(-1.0, 1.0), (s as f64) * (s as f64)));
            }
        }
    }
    out
}

/// Weighted squared error of `values` against `cb` (nearest level) and each
/// level's weighted centroid (None for an empty cell).
fn lloyd_check(values: &[(f64, f64)], cb: &[f32; 16]) -> (f64, Vec<Option<f64>>) {
    let (mut mass, mut sum, mut err) = ([0.0f64; 16], [0.0f64; 16], 0.0);
    for &(v, wt) in values {
        let j = (0..16)
            .min_by(|&a, &b| {
                (v - cb[a] as f64)
                    .abs()
                    .total_cmp(&(v - cb[b] as f64).abs())
            })
            .unwrap();
        mass[j] += wt;
        sum[j] += wt * v;
        err += wt * (v - cb[j] as f64).powi(2);
    }
    let centroids = (0..16)
        .map(|j| (mass[j] > 0.0).then(|| sum[j] / mass[j]))
        .collect();
    (err, centroids)
}

/// Rows of Gaussian weights with scales spread over a decade, so the s²
/// weighting of the fit matters.
fn spread_gaussian(rows: usize, cols: usize, seed: u64) -> Matrix {
    let g = common::gaussian(rows, cols, seed);
    let v = (0..rows)
        .flat_map(|r| {
            let s = 0.1 * 10f32.powf(r as f32 / rows as f32);
            g.row(r).iter().map(move |x| x * s).collect::<Vec<_>>()
        })
        .collect();
    mat(rows, cols, v)
}

#[test]
fn kmeans_codebook_is_a_lloyd_fixed_point() {
    // A converged Lloyd-Max codebook: every level is the s²-weighted
    // centroid of the normalized values nearest to it, up to the histogram's
    // bin width (2 / 65536 = 3.1e-5).
    let w = spread_gaussian(256, 256, 21);
    let group = GroupSize::Cols(64);
    let cfg = KMeansConfig::default();
    let cb = fit_codebook(&w, group, &cfg).unwrap();
    assert!(cb.windows(2).all(|p| p[0] < p[1]), "{cb:?}");
    let values = normalized(&w, 64);
    let (err, centroids) = lloyd_check(&values, &cb);
    for (j, c) in centroids.iter().enumerate() {
        let c = c.unwrap_or_else(|| panic!("level {j} ({}) has no values", cb[j]));
        assert!(
            (c - cb[j] as f64).abs() < 1e-4,
            "level {j}: {} vs centroid {c}",
            cb[j]
        );
    }
    // More restarts never end worse than the first one alone (the first
    // restart draws the same seeds), and NF4 is worse than the fit.
    let one = fit_codebook(&w, group, &KMeansConfig { restarts: 1, ..cfg }).unwrap();
    let (err_one, _) = lloyd_check(&values, &one);
    assert!(
        err <= err_one * (1.0 + 1e-9),
        "{err} vs one restart {err_one}"
    );
    let (err_nf4, _) = lloyd_check(&values, &NF4_CODEBOOK);
    assert!(err < err_nf4, "fit {err} vs NF4 {err_nf4}");
    // The same seed gives the same codebook.
    assert_eq!(fit_codebook(&w, group, &cfg).unwrap(), cb);
}

#[test]
fn more_restarts_find_a_better_optimum_on_clustered_data() {
    // 28 tight clusters of unequal mass for 16 levels: Lloyd's iteration
    // has many local optima here, so k-means++ seeds end in different ones
    // and the restart with the lowest error (recomputed here from the
    // data, not taken from the fit) must be the one kept. Each row holds
    // 1.0, so the absmax scale is 1 and the values are the ones listed.
    let centres: Vec<f32> = (0..28).map(|i| -0.97 + i as f32 * (1.94 / 27.0)).collect();
    let (rows, cols) = (64, 128);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut v = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row_start = v.len();
        for _ in 1..cols {
            // Cluster i drawn with weight ~ 1 / (1 + i % 7).
            let c = loop {
                let i = (next() % 28) as usize;
                if next() % (1 + i as u64 % 7) == 0 {
                    break i;
                }
            };
            let jitter = ((next() % 1000) as f32 / 1000.0 - 0.5) * 0.004;
            v.push(centres[c] + jitter);
        }
        v.insert(row_start, 1.0);
    }
    let w = mat(rows, cols, v);
    let values = normalized(&w, cols);
    let mut strictly_better = 0;
    for seed in 0..6u64 {
        let base = KMeansConfig {
            seed,
            ..KMeansConfig::default()
        };
        let one = fit_codebook(
            &w,
            GroupSize::Row,
            &KMeansConfig {
                restarts: 1,
                ..base
            },
        )
        .unwrap();
        let many = fit_codebook(
            &w,
            GroupSize::Row,
            &KMeansConfig {
                restarts: 8,
                ..base
            },
        )
        .unwrap();
        let (e1, _) = lloyd_check(&values, &one);
        let (e8, _) = lloyd_check(&values, &many);
        eprintln!("seed {seed}: one restart {e1:.6e}, eight {e8:.6e}");
        assert!(
            e8 <= e1 * (1.0 + 1e-6),
            "seed {seed}: 8 restarts {e8} vs 1 {e1}"
        );
        if e8 < e1 * (1.0 - 1e-3) {
            strictly_better += 1;
        }
    }
    assert!(
        strictly_better >= 2,
        "8 restarts beat 1 on only {strictly_better} of 6 seeds: the best restart is not kept"
    );
}
