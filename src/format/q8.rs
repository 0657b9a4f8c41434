//! int8 symmetric: `w = scale * code`, code in -127..=127, f16 scale per group.

use half::f16;

/// Packed int8 matrix parts (see `docs/FORMATS.md`, "q8").
#[derive(Debug, Clone, PartialEq)]
pub struct Q8 {
    /// One f16 scale per (row, group), row-major.
    pub scales: Vec<f16>,
    /// Codes, `rows x round_up(cols, 16)` bytes; padding is 0.
    pub codes: Vec<i8>,
}

impl Q8 {
    pub(crate) fn dequantize_row(
        &self,
        row: usize,
        cols: usize,
        stride: usize,
        gpr: usize,
        glen: usize,
        out: &mut [f32],
    ) {
        let codes = &self.codes[row * stride..][..cols];
        let scales = &self.scales[row * gpr..][..gpr];
        for (g, (oc, cc)) in out.chunks_mut(glen).zip(codes.chunks(glen)).enumerate() {
            let s = scales[g].to_f32();
            for (o, &c) in oc.iter_mut().zip(cc) {
                *o = c as f32 * s;
            }
        }
    }
}

/// `1/127` rounded to f32 (bits `0x3C01_0204`): the scale is `absmax * INV_127`,
/// a multiplication, so every device computes the same bits.
pub const INV_127: f32 = 1.0 / 127.0;

/// The canonical q8 scale of a group: `f16(absmax * INV_127)`, round to nearest even.
#[inline]
pub fn q8_scale(absmax: f32) -> f16 {
    f16::from_f32(absmax * INV_127)
}

/// The canonical q8 code of `x` given the group's reciprocal scale
/// `inv = 1 / f32(scale)` (correctly rounded): `clamp(rne(x * inv), -127, 127)`.
#[inline]
pub fn q8_code(x: f32, inv: f32) -> i8 {
    (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Packs one row (`cols` values) into `codes` and `scales` with the canonical
/// round-to-nearest rule. `codes` is the padded row.
pub(crate) fn pack_row_q8(row: &[f32], glen: usize, codes: &mut [i8], scales: &mut [f16]) {
    for (g, chunk) in row.chunks(glen).enumerate() {
        let absmax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = q8_scale(absmax);
        scales[g] = s;
        let s32 = s.to_f32();
        let out = &mut codes[g * glen..g * glen + chunk.len()];
        if s32 == 0.0 {
            out.fill(0);
            continue;
        }
        let inv = 1.0 / s32;
        for (o, &x) in out.iter_mut().zip(chunk) {
            *o = q8_code(x, inv);
        }
    }
}
