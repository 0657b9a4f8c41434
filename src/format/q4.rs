//! int4 asymmetric: `w = scale * (code - zero)`, code and zero in 0..=15,
//! f16 scale and u8 zero point per group, 8 codes per little-endian u32.

use half::f16;

/// Packed int4 matrix parts (see `docs/FORMATS.md`, "q4").
#[derive(Debug, Clone, PartialEq)]
pub struct Q4 {
    /// One f16 scale per (row, group), row-major.
    pub scales: Vec<f16>,
    /// One zero point (0..=15) per (row, group), row-major.
    pub zeros: Vec<u8>,
    /// Codes: column `c` of a row is nibble `c % 8` (bits `4*(c%8)..`) of word
    /// `c / 8`; each row is `round_up(cols, 32) / 8` words; padding is 0.
    pub codes: Vec<u32>,
}

/// The 4-bit code of column `c` in a packed row.
#[inline]
pub fn nibble(row_words: &[u32], c: usize) -> u32 {
    (row_words[c / 8] >> (4 * (c % 8))) & 0xF
}

impl Q4 {
    pub(crate) fn dequantize_row(
        &self,
        row: usize,
        cols: usize,
        stride: usize,
        gpr: usize,
        glen: usize,
        out: &mut [f32],
    ) {
        let words = &self.codes[row * stride / 4..][..stride / 4];
        for (c, o) in out.iter_mut().enumerate().take(cols) {
            let g = row * gpr + c / glen;
            let s = self.scales[g].to_f32();
            let z = self.zeros[g] as f32;
            *o = (nibble(words, c) as f32 - z) * s;
        }
    }
}

/// `1/15` rounded to f32 (bits `0x3D88_8889`): the scale is `(hi - lo) * INV_15`.
pub const INV_15: f32 = 1.0 / 15.0;

/// Scale and zero point of a q4 group with range `[lo, hi]`, which is first
/// widened to contain 0. Returns `(scale, zero, inv)` with `inv = 1 / f32(scale)`
/// (0 when the scale is 0).
#[inline]
pub fn q4_params(lo: f32, hi: f32) -> (f16, u8, f32) {
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    let s = f16::from_f32((hi - lo) * INV_15);
    let s32 = s.to_f32();
    if s32 == 0.0 {
        return (s, 0, 0.0);
    }
    let inv = 1.0 / s32;
    let z = (-lo * inv).round_ties_even().clamp(0.0, 15.0);
    (s, z as u8, inv)
}

/// The canonical q4 code: `clamp(rne(x * inv) + zero, 0, 15)`.
#[inline]
pub fn q4_code(x: f32, inv: f32, zero: u8) -> u32 {
    ((x * inv).round_ties_even() + zero as f32).clamp(0.0, 15.0) as u32
}

/// Chooses `[lo, hi]` of group `g` from its values.
pub(crate) type GroupRange<'a> = dyn FnMut(usize, &[f32]) -> (f32, f32) + 'a;

/// Packs one row with per-group ranges given by `range(group, values)`.
pub(crate) fn pack_row_q4(
    row: &[f32],
    glen: usize,
    words: &mut [u32],
    scales: &mut [f16],
    zeros: &mut [u8],
    range: &mut GroupRange<'_>,
) {
    words.fill(0);
    for (g, chunk) in row.chunks(glen).enumerate() {
        let (lo, hi) = range(g, chunk);
        let (s, z, inv) = q4_params(lo, hi);
        scales[g] = s;
        zeros[g] = z;
        for (i, &x) in chunk.iter().enumerate() {
            let c = g * glen + i;
            let q = if inv == 0.0 {
                z as u32
            } else {
                q4_code(x, inv, z)
            };
            words[c / 8] |= q << (4 * (c % 8));
        }
    }
}

/// Minimum and maximum of a slice.
#[inline]
pub fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}
