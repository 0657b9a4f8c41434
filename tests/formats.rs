//! Layout properties of every packed format (proptest): pack/unpack round trips
//! on odd shapes, RTN error within half a step, file round trips.
#![allow(clippy::needless_range_loop)]

mod common;

use half::f16;
use proptest::prelude::*;
use quantscope::format::{
    pack_lut4, pack_plain, pack_q4, pack_q8, FormatKind, GroupSize, Matrix, Outliers, Packed,
    QuantizedMatrix, NF4_CODEBOOK, Q4,
};
use quantscope::quant::rtn::{quantize_uniform, Granularity, Symmetry, UniformSpec};

fn groups() -> impl Strategy<Value = GroupSize> {
    prop_oneof![
        Just(GroupSize::Cols(32)),
        Just(GroupSize::Cols(64)),
        Just(GroupSize::Cols(128)),
        Just(GroupSize::Row)
    ]
}

fn matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
    let v = common::uniform(rows * cols, seed)
        .iter()
        .map(|x| x * 3.0)
        .collect();
    Matrix::from_vec(rows, cols, v).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Codes and scales written into the q4 layout read back as
    /// `scale * (code - zero)` at the right column, whatever the shape.
    #[test]
    fn q4_nibble_layout_round_trips(rows in 1usize..5, cols in 1usize..300, group in groups(), seed: u64) {
        let glen = group.len(cols);
        let gpr = group.groups_per_row(cols);
        let words = FormatKind::Q4.row_stride_bytes(cols) / 4;
        let codes: Vec<u32> = common::uniform(rows * cols, seed).iter().map(|x| ((x + 1.0) * 7.99) as u32).collect();
        let scales: Vec<f16> = (0..rows * gpr).map(|i| f16::from_f32(0.01 * (i + 1) as f32)).collect();
        let zeros: Vec<u8> = (0..rows * gpr).map(|i| (i % 16) as u8).collect();
        let mut packed = vec![0u32; rows * words];
        for r in 0..rows {
            for c in 0..cols {
                packed[r * words + c / 8] |= codes[r * cols + c] << (4 * (c % 8));
            }
        }
        let q = QuantizedMatrix::new(rows, cols, group, Packed::Q4(Q4 { scales: scales.clone(), zeros: zeros.clone(), codes: packed })).unwrap();
        let d = q.dequantize();
        for r in 0..rows {
            for c in 0..cols {
                let g = r * gpr + c / glen;
                let want = (codes[r * cols + c] as f32 - zeros[g] as f32) * scales[g].to_f32();
                prop_assert_eq!(d.row(r)[c], want);
            }
        }
    }

    /// q8 and q4 RTN: every weight within half a step (q4: plus the f16 rounding
    /// of the scale at the ends of the range) of its reconstruction, the step
    /// computed here from the group's min/max (not read from the packed
    /// scales, so an oversized scale fails); lut4 within half the largest
    /// codebook gap times the group's absmax; plain formats exact or within
    /// their own rounding; padding bits are zero.
    #[test]
    fn rtn_error_within_half_a_step(rows in 1usize..5, cols in 1usize..300, group in groups(), seed: u64) {
        let w = matrix(rows, cols, seed);
        let glen = group.len(cols);
        let q8 = pack_q8(&w, group).unwrap();
        let d8 = q8.dequantize();
        let Packed::Q8(p8) = q8.packed() else { unreachable!() };
        let q4 = pack_q4(&w, group).unwrap();
        let d4 = q4.dequantize();
        let l4 = pack_lut4(&w, group, NF4_CODEBOOK).unwrap();
        let dl = l4.dequantize();
        let gap = NF4_CODEBOOK.windows(2).map(|p| p[1] - p[0]).fold(0.0f32, f32::max);
        // The f16 scale is within 2^-11 (relative) of the exact one.
        let f16_slack = 1.0 + 1.0 / 2048.0;
        for r in 0..rows {
            for (g, chunk) in w.row(r).chunks(glen).enumerate() {
                let absmax = chunk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let lo = chunk.iter().fold(0.0f32, |a, &v| a.min(v));
                let hi = chunk.iter().fold(0.0f32, |a, &v| a.max(v));
                let s8 = absmax / 127.0;
                let s4 = (hi - lo) / 15.0;
                for (i, &x) in chunk.iter().enumerate() {
                    let c = g * glen + i;
                    let e8 = (x - d8.row(r)[c]).abs();
                    prop_assert!(e8 <= 0.5 * s8 * f16_slack * 1.0001 + 1e-7, "q8 {} {} (step {})", x, d8.row(r)[c], s8);
                    // Rounding the zero point leaves the far end of the range up to
                    // half a step from the grid; rounding the scale to f16 (relative
                    // error <= 2^-11) moves that end by up to 15 · s · 2^-11 more.
                    // (Seen: 0.5037 s at rows 2, cols 230, g32.)
                    let e4 = (x - d4.row(r)[c]).abs();
                    let bound = s4 * (0.5 + 15.0 / 2048.0 * 1.001) * f16_slack + 1e-7;
                    prop_assert!(e4 <= bound, "q4 {} {} (step {})", x, d4.row(r)[c], s4);
                    let el = (x - dl.row(r)[c]).abs();
                    prop_assert!(el <= 0.5 * gap * absmax * f16_slack * 1.001 + 1e-7, "lut4 {} {}", x, dl.row(r)[c]);
                }
            }
            let stride = q8.row_stride_bytes();
            prop_assert!(p8.codes[r * stride + cols..(r + 1) * stride].iter().all(|&b| b == 0));
        }
        prop_assert_eq!(pack_plain(&w, FormatKind::F32).unwrap().dequantize(), w.clone());
        let h = pack_plain(&w, FormatKind::F16).unwrap().dequantize();
        for (a, b) in w.data().iter().zip(h.data()) {
            prop_assert_eq!(f16::from_f32(*a).to_f32(), *b);
        }
    }

    /// The general uniform quantizer at any width 2..=8, symmetric or not,
    /// within half a step of the step computed here from the group's
    /// absmax (symmetric) or min/max with 0 (asymmetric).
    #[test]
    fn uniform_any_width_within_half_a_step(bits in 2u8..=8, sym: bool, cols in 1usize..200, seed: u64) {
        let w = matrix(3, cols, seed);
        let qmax = ((1u32 << (bits - 1)) - 1) as f32;
        let levels = ((1u32 << bits) - 1) as f32;
        let step_of = |v: &[f32]| {
            if sym {
                v.iter().fold(0.0f32, |a, x| a.max(x.abs())) / qmax
            } else {
                let lo = v.iter().fold(0.0f32, |a, &x| a.min(x));
                let hi = v.iter().fold(0.0f32, |a, &x| a.max(x));
                (hi - lo) / levels
            }
        };
        for gran in [Granularity::Tensor, Granularity::Row, Granularity::Group(16)] {
            let spec = UniformSpec { bits, symmetry: if sym { Symmetry::Symmetric } else { Symmetry::Asymmetric }, granularity: gran };
            let q = quantize_uniform(&w, spec).unwrap();
            let d = q.dequantize();
            let tensor_step = step_of(w.data());
            for r in 0..3 {
                for c in 0..cols {
                    let step = match gran {
                        Granularity::Tensor => tensor_step,
                        Granularity::Row => step_of(w.row(r)),
                        Granularity::Group(n) => step_of(&w.row(r)[c / n * n..((c / n + 1) * n).min(cols)]),
                    };
                    // Asymmetric: the rounded zero point moves the grid's ends
                    // by up to half a step, which leaves the far end of the
                    // range still within half a step of the last level.
                    let (x, y) = (w.row(r)[c], d.row(r)[c]);
                    let bound = 0.5 * step * 1.0001 + 1e-6;
                    prop_assert!((x - y).abs() <= bound, "{} {} step {}", x, y, step);
                }
            }
        }
    }

    /// Outliers are added at their positions; act_scale multiplies columns.
    #[test]
    fn outliers_and_act_scale_apply(rows in 1usize..5, cols in 1usize..100, seed: u64) {
        let w = matrix(rows, cols, seed);
        let base = pack_q8(&w, GroupSize::Row).unwrap();
        let per_row: Vec<Vec<(u32, f16)>> = (0..rows).map(|r| vec![((r * 7 % cols) as u32, f16::from_f32(5.0))]).collect();
        let scale: Vec<f32> = (0..cols).map(|c| 0.5 + c as f32 / cols as f32).collect();
        let q = base.clone().with_outliers(Outliers::from_rows(&per_row)).unwrap().with_act_scale(scale.clone()).unwrap();
        let (d0, d) = (base.dequantize(), q.dequantize());
        for r in 0..rows {
            for c in 0..cols {
                let add = if c == r * 7 % cols { 5.0 } else { 0.0 };
                prop_assert_eq!(d.row(r)[c], (d0.row(r)[c] + add) * scale[c]);
            }
        }
    }
}

#[test]
fn storage_sizes_are_exact() {
    let w = common::gaussian(4096, 4096, 1);
    let q4 = pack_q4(&w, GroupSize::Cols(128)).unwrap();
    let b = q4.storage_bytes();
    assert_eq!(b.codes, 4096 * 2048);
    assert_eq!(b.scales, 4096 * 32 * 2);
    assert_eq!(b.zeros, 4096 * 32);
    assert!((q4.bits_per_weight() - (4.0 + 24.0 / 128.0)).abs() < 1e-12);
    let odd = pack_q8(&common::gaussian(3, 33, 1), GroupSize::Cols(32)).unwrap();
    assert_eq!(odd.storage_bytes().codes, 3 * 48);
    assert_eq!(odd.storage_bytes().scales, 3 * 2 * 2);
}

#[test]
fn inconsistent_parts_are_rejected() {
    let err = QuantizedMatrix::new(2, 10, GroupSize::Row, Packed::F32(vec![0.0; 10])).unwrap_err();
    assert!(err.to_string().contains("expected 24"), "{err}");
    assert!("0".parse::<GroupSize>().is_err());
    assert!("48".parse::<GroupSize>().is_err());
    assert_eq!("row".parse::<GroupSize>().unwrap(), GroupSize::Row);
    let bad = Outliers {
        row_ptr: vec![0, 2],
        col_idx: vec![3, 1],
        values: vec![f16::ONE; 2],
    };
    let q = pack_q8(&common::gaussian(1, 8, 1), GroupSize::Row).unwrap();
    assert!(q.with_outliers(bad).is_err());
}

#[test]
fn files_round_trip_every_format() {
    use quantscope::quant::{quantize, QuantConfig, Scheme};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.safetensors");
    let w = common::gaussian_with_outliers(37, 333, 0.01, 8.0, 5);
    let mut items = Vec::new();
    for s in Scheme::ALL.into_iter().filter(|s| !s.needs_calibration()) {
        let mut cfg = QuantConfig::new(s);
        cfg.group = GroupSize::Cols(64);
        items.push((s.name().to_string(), quantize(&w, &cfg).unwrap()));
    }
    let with_scale = items[4]
        .1
        .clone()
        .with_act_scale((0..333).map(|c| 1.0 + c as f32 / 333.0).collect())
        .unwrap();
    items.push(("scaled".into(), with_scale));
    quantscope::io::write_quantized(&path, &items, true).unwrap();
    let mut back = quantscope::io::read_quantized(&path).unwrap();
    back.sort_by(|a, b| a.0.cmp(&b.0));
    items.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(back, items);
    // No temporary files are left next to the output.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
