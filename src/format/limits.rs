//! What magnitudes each format can hold, checked before packing.
//!
//! The grouped formats keep their scales in f16, whose largest finite value
//! is 65504; above it a scale becomes infinite and the dequantized weights
//! `code · scale` become inf or NaN (`0 · inf`). The format is the contract
//! of every backend, so its scales stay f16: a tensor beyond a format's
//! range is refused with the row, the group, the value and the largest
//! magnitude the format holds (see `docs/FORMATS.md`, "Range").

use half::{bf16, f16};

use super::{min_max, q8_scale, FormatError, FormatKind, GroupSize, Matrix, INV_15};

/// The largest finite f16, the largest scale of q8, q4 and lut4.
pub const F16_MAX: f32 = 65504.0;

/// The largest |w| a q8 group holds: `127 · 65504`.
pub const Q8_MAX_ABS: f32 = 127.0 * F16_MAX;

/// The largest range `max − min` (0 included) a q4 group holds: `15 · 65504`.
pub const Q4_MAX_RANGE: f32 = 15.0 * F16_MAX;

/// The largest |w| a lut4 group holds (its scale is the group's absmax).
pub const LUT4_MAX_ABS: f32 = F16_MAX;

/// Checks that every weight of `m` can be stored in `kind` with `group`,
/// naming the first row and group that cannot. The checks are the packers'
/// own arithmetic (same rounding), so what passes here packs to finite
/// values. `outliers_f16` adds the rule of f16 outliers (EasyQuant keeps any
/// weight exactly as an f16 value).
pub fn check_representable(
    m: &Matrix,
    kind: FormatKind,
    group: GroupSize,
    outliers_f16: bool,
) -> Result<(), FormatError> {
    let cols = m.cols();
    let glen = group.len(cols).max(1);
    let err = |row: usize, start: usize, len: usize, detail: String| FormatError::Unrepresentable {
        row,
        col_start: start,
        col_end: start + len,
        detail,
    };
    for r in 0..m.rows() {
        let row = m.row(r);
        match kind {
            FormatKind::F32 => {}
            FormatKind::F16 => {
                if let Some(c) = row.iter().position(|&v| f16::from_f32(v).is_infinite()) {
                    return Err(err(
                        r,
                        c,
                        1,
                        format!(
                            "weight {:e} is beyond f16's range (|w| up to {F16_MAX})",
                            row[c]
                        ),
                    ));
                }
            }
            FormatKind::Bf16 => {
                if let Some(c) = row.iter().position(|&v| bf16::from_f32(v).is_infinite()) {
                    return Err(err(
                        r,
                        c,
                        1,
                        format!(
                            "weight {:e} rounds to infinity in bf16 (|w| up to {:e})",
                            row[c],
                            bf16::MAX.to_f32()
                        ),
                    ));
                }
            }
            FormatKind::Q8 | FormatKind::Q4 | FormatKind::Lut4 => {
                for (g, chunk) in row.chunks(glen).enumerate() {
                    let absmax = chunk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let bad = match kind {
                        FormatKind::Q8 => q8_scale(absmax).is_infinite().then(|| {
                            format!(
                                "largest |w| is {absmax:e}; q8 holds groups with |w| up to {Q8_MAX_ABS:e} \
                                 (127 x {F16_MAX}, the largest f16 scale)"
                            )
                        }),
                        FormatKind::Q4 => {
                            let (lo, hi) = min_max(chunk);
                            let range = hi.max(0.0) - lo.min(0.0);
                            f16::from_f32(range * INV_15).is_infinite().then(|| {
                                format!(
                                    "range max - min (0 included) is {range:e}; q4 holds ranges up to \
                                     {Q4_MAX_RANGE:e} (15 x {F16_MAX}, the largest f16 scale)"
                                )
                            })
                        }
                        _ => f16::from_f32(absmax).is_infinite().then(|| {
                            format!(
                                "largest |w| is {absmax:e}; lut4 holds groups with |w| up to {LUT4_MAX_ABS} \
                                 (the largest f16 scale)"
                            )
                        }),
                    };
                    if let Some(detail) = bad {
                        return Err(err(r, g * glen, chunk.len(), detail));
                    }
                }
            }
        }
        if outliers_f16 {
            if let Some(c) = row.iter().position(|&v| f16::from_f32(v).is_infinite()) {
                return Err(err(
                    r,
                    c,
                    1,
                    format!(
                        "weight {:e} cannot be kept as an f16 outlier (|w| up to {F16_MAX})",
                        row[c]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether every weight of `deq` is zero while `w` has a non-zero one: the
/// tensor is too small for the format (its scales underflow f16).
pub fn all_rounded_to_zero(w: &Matrix, deq: &Matrix) -> bool {
    deq.data().iter().all(|&v| v == 0.0) && w.data().iter().any(|&v| v != 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_the_packers_limits() {
        let one = |v: f32| Matrix::from_vec(1, 2, vec![v, -v]).unwrap();
        let g = GroupSize::Row;
        // Just inside each limit packs finite; just outside is refused.
        for (kind, inside, outside) in [
            (FormatKind::F16, 65504.0, 65520.0),
            (FormatKind::Q8, Q8_MAX_ABS, 1.001 * Q8_MAX_ABS),
            (
                FormatKind::Q4,
                Q4_MAX_RANGE / 2.0,
                1.001 * Q4_MAX_RANGE / 2.0,
            ),
            (FormatKind::Lut4, LUT4_MAX_ABS, 65520.0),
        ] {
            assert!(
                check_representable(&one(inside), kind, g, false).is_ok(),
                "{kind}"
            );
            // And the packer agrees: finite at the limit.
            let q = match kind {
                FormatKind::Q8 => super::super::pack_q8(&one(inside), g),
                FormatKind::Q4 => super::super::pack_q4(&one(inside), g),
                FormatKind::Lut4 => {
                    super::super::pack_lut4(&one(inside), g, super::super::NF4_CODEBOOK)
                }
                k => super::super::pack_plain(&one(inside), k),
            }
            .unwrap();
            assert!(q.dequantize().first_non_finite().is_none(), "{kind}");
            let e = check_representable(&one(outside), kind, g, false).unwrap_err();
            assert!(e.to_string().contains("row 0"), "{e}");
        }
        assert!(check_representable(&one(3e38), FormatKind::F32, g, false).is_ok());
        assert!(check_representable(&one(f32::MAX), FormatKind::Bf16, g, false).is_err());
    }
}
