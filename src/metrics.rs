//! Error measures between a reference `a` and an approximation `b`.
//!
//! All sums run in f64. Definitions (see `docs/ARCHITECTURE.md`):
//! NMSE = Σ(a-b)² / Σa²; SQNR = -10·log10(NMSE) dB; relative L2 = √NMSE;
//! cosine = a·b / (|a||b|); the vector study's figure is ‖a-b‖₂ / N.

use serde::{Deserialize, Serialize};

/// Every error figure at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    /// Σ(a-b)² / Σa².
    pub nmse: f64,
    /// Signal-to-quantization-noise ratio in dB: −10·log10(NMSE).
    pub sqnr_db: f64,
    /// ‖a-b‖₂ / ‖a‖₂.
    pub rel_l2: f64,
    /// Cosine similarity of a and b.
    pub cosine: f64,
    /// max |a-b|.
    pub max_abs: f64,
    /// √(Σ(a-b)²/N).
    pub rmse: f64,
    /// ‖a-b‖₂ / N, the figure of the reference vector-quantization exercise.
    pub l2_over_n: f64,
    /// Whether any value of `b` is NaN or infinite.
    pub non_finite: bool,
}

/// Computes every figure. Panics if the lengths differ (a programming error).
pub fn error_stats(a: &[f32], b: &[f32]) -> ErrorStats {
    assert_eq!(a.len(), b.len(), "error_stats: length mismatch");
    let (mut se, mut sa, mut sb, mut sab, mut mx) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut non_finite = false;
    for (&x, &y) in a.iter().zip(b) {
        if !y.is_finite() {
            non_finite = true;
        }
        let (x, y) = (x as f64, y as f64);
        let d = x - y;
        se += d * d;
        sa += x * x;
        sb += y * y;
        sab += x * y;
        mx = mx.max(d.abs());
    }
    let n = a.len().max(1) as f64;
    let nmse = if sa > 0.0 {
        se / sa
    } else if se == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    let nmse = if non_finite { f64::NAN } else { nmse };
    ErrorStats {
        nmse,
        sqnr_db: -10.0 * nmse.log10(),
        rel_l2: nmse.sqrt(),
        cosine: if sa > 0.0 && sb > 0.0 {
            sab / (sa.sqrt() * sb.sqrt())
        } else {
            f64::NAN
        },
        max_abs: if non_finite { f64::NAN } else { mx },
        rmse: (se / n).sqrt(),
        l2_over_n: se.sqrt() / n,
        non_finite,
    }
}

/// Σ(a-b)² / Σa², NaN when `b` has a NaN or infinity.
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    error_stats(a, b).nmse
}

/// NMSE against an f64 reference.
pub fn nmse_f64(reference: &[f64], b: &[f32]) -> f64 {
    assert_eq!(reference.len(), b.len(), "nmse_f64: length mismatch");
    let (mut se, mut sa) = (0.0f64, 0.0f64);
    for (&x, &y) in reference.iter().zip(b) {
        if !y.is_finite() {
            return f64::NAN;
        }
        let d = x - y as f64;
        se += d * d;
        sa += x * x;
    }
    if sa > 0.0 {
        se / sa
    } else if se == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// SQNR in dB for an NMSE.
pub fn sqnr_db(nmse: f64) -> f64 {
    -10.0 * nmse.log10()
}
