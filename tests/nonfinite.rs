//! The rule: no quantizer ever writes a non-finite value from finite input.
//! Every scheme, weights from 1e-40 to 3e38 (subnormals included), odd
//! shapes: the result is either finite in every effective weight, or a
//! refusal that names the row (and, for grouped formats, the group).

mod common;

use proptest::prelude::*;
use quantscope::format::{GroupSize, Matrix, QuantizedMatrix};
use quantscope::quant::{quantize, quantize_calibrated, QuantConfig, QuantError, Scheme};

/// Uniform values in (-mag, mag) with a few exact ±mag, so the extreme is hit.
fn scaled(rows: usize, cols: usize, mag: f32, seed: u64) -> Matrix {
    let g = common::gaussian(rows, cols, seed).into_vec();
    let mut v: Vec<f32> = g.iter().map(|z| (z / 4.0).clamp(-1.0, 1.0) * mag).collect();
    v[0] = mag;
    if v.len() > 5 {
        v[5] = -mag;
    }
    Matrix::from_vec(rows, cols, v).unwrap()
}

fn run(scheme: Scheme, w: &Matrix, group: GroupSize) -> Result<QuantizedMatrix, QuantError> {
    let mut cfg = QuantConfig::new(scheme);
    cfg.group = group;
    if scheme.needs_calibration() {
        let calib = common::gaussian(96, w.cols(), 9);
        quantize_calibrated(w, &cfg, &calib, &mut |_, _| {}).map(|(q, _)| q)
    } else {
        quantize(w, &cfg)
    }
}

/// Checks the rule for one case; returns whether it was refused.
fn check(scheme: Scheme, w: &Matrix, group: GroupSize) -> bool {
    match run(scheme, w, group) {
        Ok(q) => {
            let d = q.dequantize();
            if let Some((r, c, v)) = d.first_non_finite() {
                panic!("{scheme} g{group}: weight ({r}, {c}) is {v} from finite input");
            }
            false
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("row"), "{scheme}: refusal names no row: {msg}");
            assert!(!msg.contains("NaN"), "{scheme}: {msg}");
            true
        }
    }
}

const MAGNITUDES: [f32; 15] = [
    1e-40, 1e-38, 1e-30, 1e-9, 1e-3, 1.0, 6e4, 6.6e4, 1e5, 4e5, 1e6, 1e7, 1e10, 1e30, 3e38,
];

#[test]
fn every_scheme_at_every_magnitude_is_finite_or_refused() {
    for scheme in Scheme::ALL {
        for &mag in &MAGNITUDES {
            for (rows, cols, group) in [(3, 70, GroupSize::Cols(32)), (5, 33, GroupSize::Row)] {
                let w = scaled(rows, cols, mag, 7);
                let refused = check(scheme, &w, group);
                // Ordinary magnitudes are never refused.
                if (1e-3..=6e4).contains(&mag) {
                    assert!(!refused, "{scheme} refused |w| <= {mag}");
                }
                // f32 holds everything finite.
                if scheme == Scheme::None(quantscope::format::FormatKind::F32) {
                    assert!(!refused);
                }
            }
        }
    }
}

#[test]
fn refusals_name_the_format_limit() {
    let w = scaled(4, 64, 1e6, 3);
    for (scheme, phrase) in [
        (Scheme::Int4, "q4 holds ranges up to"),
        (Scheme::Int8, "q8 holds"),
        (Scheme::Nf4, "lut4 holds"),
        (Scheme::KMeans4, "lut4 holds"),
        (
            Scheme::None(quantscope::format::FormatKind::F16),
            "beyond f16's range",
        ),
    ] {
        let w = if phrase.starts_with("q8") {
            scaled(4, 64, 1e7, 3)
        } else {
            w.clone()
        };
        let e = run(scheme, &w, GroupSize::Cols(32))
            .unwrap_err()
            .to_string();
        assert!(e.contains(phrase) && e.contains("row 0"), "{scheme}: {e}");
    }
}

#[test]
fn calibration_without_energy_is_refused() {
    let w = common::gaussian(8, 64, 1);
    let zero = Matrix::from_vec(32, 64, vec![0.0; 32 * 64]).unwrap();
    for scheme in [Scheme::GptqInt4, Scheme::AwqInt4] {
        let cfg = QuantConfig::new(scheme);
        let e = quantize_calibrated(&w, &cfg, &zero, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("all zero"), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_magnitudes_keep_the_rule(
        exp in -40.0f32..38.4,
        rows in 1usize..6,
        cols in 1usize..90,
        which in 0usize..Scheme::ALL.len(),
        seed in any::<u64>(),
    ) {
        let mag = 10f32.powf(exp);
        prop_assume!(mag.is_finite() && mag > 0.0);
        let w = scaled(rows, cols, mag, seed);
        check(Scheme::ALL[which], &w, GroupSize::Cols(32));
    }
}
