//! 4-bit codebook: `w = scale * codebook[code]`, f16 absmax scale per group,
//! one 16-entry f32 codebook per matrix, codes packed as in q4.

use half::f16;

use super::q4::nibble;

/// The NF4 codebook of QLoRA (Dettmers et al., 2023, appendix E): quantiles of
/// N(0, 1) normalised to [-1, 1], with an exact zero.
pub const NF4_CODEBOOK: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Packed 4-bit codebook matrix parts (see `docs/FORMATS.md`, "lut4").
#[derive(Debug, Clone, PartialEq)]
pub struct Lut4 {
    /// One f16 scale per (row, group), row-major.
    pub scales: Vec<f16>,
    /// The 16 levels, in ascending order for the built-in and learned codebooks.
    pub codebook: [f32; 16],
    /// Codes, packed exactly like q4.
    pub codes: Vec<u32>,
}

impl Lut4 {
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
            let s = self.scales[row * gpr + c / glen].to_f32();
            *o = self.codebook[nibble(words, c) as usize] * s;
        }
    }
}
