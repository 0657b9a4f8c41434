//! Accuracy targets of the data-free quantizers on seeded Gaussian weights.

mod common;

use quantscope::format::{GroupSize, Matrix, Packed};
use quantscope::metrics::nmse;
use quantscope::quant::clip::{best_range, q4_group_error, ClipSearch};
use quantscope::quant::{quantize, QuantConfig, Scheme};

fn nmse_of(w: &Matrix, scheme: Scheme, group: GroupSize) -> f64 {
    let mut cfg = QuantConfig::new(scheme);
    cfg.group = group;
    let q = quantize(w, &cfg).unwrap();
    let e = nmse(w.data(), q.dequantize().data());
    eprintln!(
        "{:<11} g{:<4} {:>6.3} bits/w  NMSE {e:.3e}",
        scheme.name(),
        group.label(),
        q.bits_per_weight()
    );
    e
}

#[test]
fn nmse_targets_on_gaussian_weights() {
    let w = common::gaussian(1024, 1024, 7);
    assert!(nmse_of(&w, Scheme::Int8, GroupSize::Row) < 1e-4);
    let int4 = nmse_of(&w, Scheme::Int4, GroupSize::Cols(128));
    assert!(int4 < 1.5e-2, "int4 g128 NMSE {int4}");
    let clip = nmse_of(&w, Scheme::Int4Clip, GroupSize::Cols(128));
    assert!(clip <= int4);
    let nf4 = nmse_of(&w, Scheme::Nf4, GroupSize::Cols(64));
    let km = nmse_of(&w, Scheme::KMeans4, GroupSize::Cols(64));
    assert!(km < nf4, "Lloyd-Max {km} must beat NF4 {nf4}");
    let f16 = nmse_of(
        &w,
        Scheme::None(quantscope::format::FormatKind::F16),
        GroupSize::Row,
    );
    assert!(f16 < 1e-7);
    assert_eq!(
        nmse_of(
            &w,
            Scheme::None(quantscope::format::FormatKind::F32),
            GroupSize::Row
        ),
        0.0
    );
}

#[test]
fn clip_search_never_worse_than_min_max_on_any_group() {
    let w = common::gaussian_with_outliers(64, 512, 0.01, 6.0, 3);
    let search = ClipSearch::default();
    for r in 0..w.rows() {
        for g in w.row(r).chunks(32) {
            let (lo, hi) = quantscope::format::min_max(g);
            let (a, b) = best_range(g, &search);
            assert!(q4_group_error(g, a, b) <= q4_group_error(g, lo, hi));
        }
    }
}

#[test]
fn outlier_aware_beats_rtn_by_5x_with_injected_outliers() {
    let w = common::gaussian_with_outliers(1024, 1024, 0.005, 20.0, 11);
    let rtn = nmse_of(&w, Scheme::Int4, GroupSize::Cols(128));
    let eq = nmse_of(&w, Scheme::EasyQuant4, GroupSize::Cols(128));
    assert!(eq * 5.0 <= rtn, "easyquant {eq} vs rtn {rtn}");
    // The planted outliers are all kept.
    let mut cfg = QuantConfig::new(Scheme::EasyQuant4);
    cfg.group = GroupSize::Cols(128);
    let q = quantize(&w, &cfg).unwrap();
    let planted = w.data().iter().filter(|v| v.abs() == 20.0).count();
    let kept = q.outliers().unwrap().nnz();
    assert!(kept >= planted, "kept {kept} < planted {planted}");
    assert!(matches!(q.packed(), Packed::Q4(_)));
}

#[test]
fn rejects_non_finite_weights_and_bad_groups() {
    let mut v = common::gaussian(4, 64, 1).into_vec();
    v[70] = f32::NAN;
    let w = Matrix::from_vec(4, 64, v).unwrap();
    let err = quantize(&w, &QuantConfig::new(Scheme::Int4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 1, column 6"), "{err}");
    let mut cfg = QuantConfig::new(Scheme::Int4);
    cfg.group = GroupSize::Cols(0);
    let w = common::gaussian(4, 64, 1);
    assert!(quantize(&w, &cfg)
        .unwrap_err()
        .to_string()
        .contains("group size 0"));
}
