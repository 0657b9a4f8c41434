//! Exact facts of the packed formats, each worked out by hand from
//! `docs/FORMATS.md` rather than taken from the code under test: every
//! layout check of `QuantizedMatrix::new`, labels, storage bytes, the
//! canonical rounding rules, the range limits and the CSR outliers. Written
//! so that a changed operator or branch in `src/format/` fails here (see
//! `docs/TESTING.md`, mutation testing).

use half::{bf16, f16};
use quantscope::format::limits::{
    all_rounded_to_zero, check_representable, F16_MAX, LUT4_MAX_ABS, Q4_MAX_RANGE, Q8_MAX_ABS,
};
use quantscope::format::{
    min_max, nearest_level, pack_lut4, pack_plain, pack_q4, pack_q4_with, pack_q8, q4_code,
    q4_params, q8_code, q8_scale, FormatError, FormatKind, GroupSize, Lut4, Matrix, Outliers,
    Packed, QuantizedMatrix, StorageBytes, NF4_CODEBOOK, Q4, Q8,
};

fn mat(rows: usize, cols: usize, v: Vec<f32>) -> Matrix {
    Matrix::from_vec(rows, cols, v).unwrap()
}

fn h(v: f32) -> f16 {
    f16::from_f32(v)
}

#[test]
fn group_sizes_parse_validate_and_count() {
    assert_eq!(GroupSize::cols(0), Err(FormatError::BadGroup(0)));
    assert_eq!(GroupSize::cols(48), Err(FormatError::BadGroup(48)));
    assert_eq!(GroupSize::cols(16), Err(FormatError::BadGroup(16)));
    assert_eq!(GroupSize::cols(32), Ok(GroupSize::Cols(32)));
    assert_eq!(GroupSize::cols(96), Ok(GroupSize::Cols(96)));
    assert_eq!(
        GroupSize::Cols(40).validate(),
        Err(FormatError::BadGroup(40))
    );
    assert_eq!(GroupSize::Cols(64).validate(), Ok(GroupSize::Cols(64)));
    assert_eq!(GroupSize::Row.validate(), Ok(GroupSize::Row));
    assert_eq!(GroupSize::Cols(32).len(100), 32);
    assert_eq!(GroupSize::Row.len(100), 100);
    // ceil(100 / 32) = 4: the last group is short.
    assert_eq!(GroupSize::Cols(32).groups_per_row(100), 4);
    assert_eq!(GroupSize::Cols(32).groups_per_row(64), 2);
    assert_eq!(GroupSize::Cols(128).groups_per_row(5), 1);
    assert_eq!(GroupSize::Row.groups_per_row(100), 1);
    assert_eq!(GroupSize::Cols(128).label(), "128");
    assert_eq!(GroupSize::Row.label(), "row");
    assert_eq!(GroupSize::Cols(64).to_string(), "64");
    assert_eq!(GroupSize::Row.to_string(), "row");
    assert_eq!("ROW".parse::<GroupSize>(), Ok(GroupSize::Row));
    assert_eq!("64".parse::<GroupSize>(), Ok(GroupSize::Cols(64)));
    assert_eq!("48".parse::<GroupSize>(), Err(FormatError::BadGroup(48)));
    let e = "g64".parse::<GroupSize>().unwrap_err().to_string();
    assert!(e.contains("'g64' is neither a number nor 'row'"), "{e}");
}

#[test]
fn format_kinds_names_strides_and_grouping() {
    let names = ["f32", "f16", "bf16", "q8", "q4", "lut4"];
    for (k, n) in FormatKind::ALL.into_iter().zip(names) {
        assert_eq!(k.name(), n);
        assert_eq!(k.to_string(), n);
        assert_eq!(n.to_uppercase().parse::<FormatKind>(), Ok(k));
    }
    let e = "q5".parse::<FormatKind>().unwrap_err().to_string();
    assert!(e.contains("unknown format 'q5'"), "{e}");
    // Row strides, padded to 16 bytes (docs/FORMATS.md table).
    for (k, cols, want) in [
        (FormatKind::F32, 4, 16),
        (FormatKind::F32, 5, 32),
        (FormatKind::F16, 8, 16),
        (FormatKind::F16, 9, 32),
        (FormatKind::Bf16, 17, 48),
        (FormatKind::Q8, 16, 16),
        (FormatKind::Q8, 17, 32),
        (FormatKind::Q4, 1, 16),
        (FormatKind::Q4, 32, 16),
        (FormatKind::Q4, 33, 32),
        (FormatKind::Lut4, 65, 48),
    ] {
        assert_eq!(k.row_stride_bytes(cols), want, "{k} {cols}");
    }
    let grouped: Vec<bool> = FormatKind::ALL.iter().map(|k| k.is_grouped()).collect();
    assert_eq!(grouped, [false, false, false, true, true, true]);
}

#[test]
fn new_checks_every_part_of_every_format() {
    let g = GroupSize::Row;
    let len_err =
        |part: &'static str, got, expected, format: &'static str| FormatError::PartLength {
            part,
            got,
            expected,
            rows: 2,
            cols: 10,
            format,
        };
    assert_eq!(
        QuantizedMatrix::new(0, 10, g, Packed::F32(vec![])).unwrap_err(),
        FormatError::Empty { rows: 0, cols: 10 }
    );
    assert_eq!(
        QuantizedMatrix::new(2, 0, g, Packed::F32(vec![])).unwrap_err(),
        FormatError::Empty { rows: 2, cols: 0 }
    );
    assert_eq!(
        QuantizedMatrix::new(2, 10, GroupSize::Cols(40), Packed::F32(vec![0.0; 24])).unwrap_err(),
        FormatError::BadGroup(40)
    );
    // 2 x 10: f32 rows of 48 bytes (12 values), 16-bit rows of 32 bytes.
    assert!(QuantizedMatrix::new(2, 10, g, Packed::F32(vec![0.0; 24])).is_ok());
    assert_eq!(
        QuantizedMatrix::new(2, 10, g, Packed::F32(vec![0.0; 20])).unwrap_err(),
        len_err("values", 20, 24, "f32")
    );
    assert!(QuantizedMatrix::new(2, 10, g, Packed::F16(vec![f16::ZERO; 32])).is_ok());
    assert_eq!(
        QuantizedMatrix::new(2, 10, g, Packed::F16(vec![f16::ZERO; 24])).unwrap_err(),
        len_err("values", 24, 32, "f16")
    );
    assert!(QuantizedMatrix::new(2, 10, g, Packed::Bf16(vec![bf16::ZERO; 32])).is_ok());
    assert_eq!(
        QuantizedMatrix::new(2, 10, g, Packed::Bf16(vec![bf16::ZERO; 33])).unwrap_err(),
        len_err("values", 33, 32, "bf16")
    );
    // q8: 16 code bytes a row, one scale a row.
    let q8 = |codes: usize, scales: usize| {
        QuantizedMatrix::new(
            2,
            10,
            g,
            Packed::Q8(Q8 {
                scales: vec![f16::ONE; scales],
                codes: vec![0; codes],
            }),
        )
    };
    assert!(q8(32, 2).is_ok());
    assert_eq!(q8(31, 2).unwrap_err(), len_err("codes", 31, 32, "q8"));
    assert_eq!(q8(32, 1).unwrap_err(), len_err("scales", 1, 2, "q8"));
    // q4: 4 words a row, one scale and zero a row, zeros 0..=15.
    let q4 = |codes: usize, scales: usize, zeros: Vec<u8>| {
        QuantizedMatrix::new(
            2,
            10,
            g,
            Packed::Q4(Q4 {
                scales: vec![f16::ONE; scales],
                zeros,
                codes: vec![0; codes],
            }),
        )
    };
    assert!(q4(8, 2, vec![15, 0]).is_ok());
    assert_eq!(
        q4(7, 2, vec![0, 0]).unwrap_err(),
        len_err("codes", 7, 8, "q4")
    );
    assert_eq!(
        q4(8, 3, vec![0, 0]).unwrap_err(),
        len_err("scales", 3, 2, "q4")
    );
    assert_eq!(q4(8, 2, vec![0]).unwrap_err(), len_err("zeros", 1, 2, "q4"));
    let e = q4(8, 2, vec![3, 16]).unwrap_err();
    assert_eq!(
        e,
        FormatError::BadValue {
            part: "zeros",
            detail: "zero point 16 is outside 0..=15".into()
        }
    );
    // lut4: as q4 without zeros, a finite codebook.
    let lut = |codes: usize, scales: usize, bad: f32| {
        let mut codebook = NF4_CODEBOOK;
        codebook[9] = bad;
        QuantizedMatrix::new(
            2,
            10,
            g,
            Packed::Lut4(Lut4 {
                scales: vec![f16::ONE; scales],
                codebook,
                codes: vec![0; codes],
            }),
        )
    };
    assert!(lut(8, 2, 0.5).is_ok());
    assert_eq!(lut(9, 2, 0.5).unwrap_err(), len_err("codes", 9, 8, "lut4"));
    assert_eq!(lut(8, 1, 0.5).unwrap_err(), len_err("scales", 1, 2, "lut4"));
    for bad in [f32::NAN, f32::INFINITY] {
        assert!(matches!(
            lut(8, 2, bad).unwrap_err(),
            FormatError::BadValue {
                part: "codebook",
                ..
            }
        ));
    }
    // Groups: 3 x 100 in groups of 32 has 4 groups a row.
    let q = QuantizedMatrix::new(
        3,
        100,
        GroupSize::Cols(32),
        Packed::Q8(Q8 {
            scales: vec![f16::ONE; 12],
            codes: vec![0; 3 * 112],
        }),
    );
    assert!(q.is_ok());
    // Shapes whose sizes overflow a usize are refused, not wrapped.
    for (rows, cols) in [(1, usize::MAX / 2), (usize::MAX / 8, 64), (2, usize::MAX)] {
        let e = QuantizedMatrix::new(rows, cols, g, Packed::F32(vec![])).unwrap_err();
        assert!(
            e.to_string().contains("too large to address"),
            "{rows}x{cols}: {e}"
        );
    }
}

fn q8_matrix(rows: usize, cols: usize, group: GroupSize) -> QuantizedMatrix {
    let w: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 - 6.0).collect();
    pack_q8(&mat(rows, cols, w), group).unwrap()
}

#[test]
fn labels_and_accessors() {
    let q = q8_matrix(3, 40, GroupSize::Cols(32));
    assert_eq!(q.label(), "q8 g32");
    assert_eq!((q.rows(), q.cols()), (3, 40));
    assert_eq!(q.group(), GroupSize::Cols(32));
    assert_eq!(q.group_len(), 32);
    assert_eq!(q.groups_per_row(), 2);
    assert_eq!(q.kind(), FormatKind::Q8);
    assert_eq!(q.packed().kind(), FormatKind::Q8);
    assert_eq!(q.row_stride_bytes(), 48);
    assert!(q.outliers().is_none() && q.act_scale().is_none());
    let r = q8_matrix(3, 40, GroupSize::Row);
    assert_eq!(r.label(), "q8 per-row");
    assert_eq!(r.group_len(), 40);
    let f = pack_plain(&mat(1, 3, vec![1.0, 2.0, 3.0]), FormatKind::F16).unwrap();
    assert_eq!(f.label(), "f16");
    let o = Outliers::from_rows(&[vec![(1, f16::ONE)], vec![], vec![]]);
    let both = q
        .clone()
        .with_outliers(o.clone())
        .unwrap()
        .with_act_scale(vec![2.0; 40])
        .unwrap();
    assert_eq!(both.label(), "q8 g32 +outliers +act_scale");
    assert_eq!(both.outliers(), Some(&o));
    assert_eq!(both.act_scale(), Some(&[2.0f32; 40][..]));
    let scaled = q.clone().with_act_scale(vec![1.0; 40]).unwrap();
    assert_eq!(scaled.label(), "q8 g32 +act_scale");
    // The activation scale: `cols` finite values.
    assert!(matches!(
        q.clone().with_act_scale(vec![1.0; 39]).unwrap_err(),
        FormatError::PartLength {
            part: "act_scale",
            got: 39,
            expected: 40,
            ..
        }
    ));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = vec![1.0; 40];
        v[7] = bad;
        assert!(q.clone().with_act_scale(v).is_err(), "{bad}");
    }
    // Outliers are validated against the shape.
    let wide = Outliers::from_rows(&[vec![(40, f16::ONE)], vec![], vec![]]);
    assert!(q.with_outliers(wide).is_err());
}

#[test]
fn storage_bytes_of_every_part() {
    // 3 x 40, groups of 32: 2 groups a row, 6 groups.
    let w = mat(3, 40, (0..120).map(|i| (i % 9) as f32 - 4.0).collect());
    let g = GroupSize::Cols(32);
    let sb = |codes, scales, zeros, codebook, outliers, act_scale| StorageBytes {
        codes,
        scales,
        zeros,
        codebook,
        outliers,
        act_scale,
    };
    // f32 rows 160 bytes; f16/bf16 rows 80 bytes; q8 rows 48; q4/lut4 rows 32.
    let f32m = pack_plain(&w, FormatKind::F32).unwrap();
    assert_eq!(f32m.storage_bytes(), sb(480, 0, 0, 0, 0, 0));
    assert_eq!(f32m.bits_per_weight(), 32.0);
    let f16m = pack_plain(&w, FormatKind::F16).unwrap();
    assert_eq!(f16m.storage_bytes(), sb(240, 0, 0, 0, 0, 0));
    assert_eq!(f16m.bits_per_weight(), 16.0);
    let bf = pack_plain(&w, FormatKind::Bf16).unwrap();
    assert_eq!(bf.storage_bytes(), sb(240, 0, 0, 0, 0, 0));
    let q8 = pack_q8(&w, g).unwrap();
    assert_eq!(q8.storage_bytes(), sb(144, 12, 0, 0, 0, 0));
    assert_eq!(q8.bits_per_weight(), 156.0 * 8.0 / 120.0);
    let q4 = pack_q4(&w, g).unwrap();
    assert_eq!(q4.storage_bytes(), sb(96, 12, 6, 0, 0, 0));
    let lut = pack_lut4(&w, g, NF4_CODEBOOK).unwrap();
    assert_eq!(lut.storage_bytes(), sb(96, 12, 0, 64, 0, 0));
    assert_eq!(lut.storage_bytes().total(), 172);
    assert_eq!(lut.bits_per_weight(), 172.0 * 8.0 / 120.0);
    // Outliers: 4 row pointers, 2 columns (u32) and 2 values (f16) = 28 bytes.
    let o = Outliers::from_rows(&[vec![(0, f16::ONE), (5, f16::ONE)], vec![], vec![]]);
    assert_eq!(o.nnz(), 2);
    assert_eq!(o.bytes(), 28);
    let full = q4
        .with_outliers(o)
        .unwrap()
        .with_act_scale(vec![1.0; 40])
        .unwrap();
    assert_eq!(full.storage_bytes(), sb(96, 12, 6, 0, 28, 160));
    assert_eq!(full.storage_bytes().total(), 302);
    assert_eq!(full.bits_per_weight(), 302.0 * 8.0 / 120.0);
}

#[test]
fn plain_formats_dequantize_to_their_rounding() {
    let v = vec![1.0f32, 0.1, -3.5, 65504.0, 1e-6, -0.3333, 7.0, 1e30];
    let w = mat(2, 4, v.clone());
    assert_eq!(pack_plain(&w, FormatKind::F32).unwrap().dequantize(), w);
    let d = pack_plain(&w, FormatKind::F16).unwrap().dequantize();
    let want: Vec<f32> = v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_eq!(d.data(), &want[..]);
    let d = pack_plain(&w, FormatKind::Bf16).unwrap().dequantize();
    let want: Vec<f32> = v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(d.data(), &want[..]);
    assert!(
        d.data()[7] != f16::from_f32(1e30).to_f32(),
        "bf16 keeps 1e30"
    );
    for k in [FormatKind::Q8, FormatKind::Q4, FormatKind::Lut4] {
        assert!(matches!(
            pack_plain(&w, k).unwrap_err(),
            FormatError::BadValue { part: "format", .. }
        ));
    }
}

#[test]
fn q8_canonical_rule_by_hand() {
    assert_eq!(q8_scale(127.0), h(1.0));
    assert_eq!(q8_scale(254.0), h(2.0));
    assert_eq!(q8_scale(0.0), f16::ZERO);
    // Ties to even, clamped to ±127 (never −128).
    for (x, want) in [
        (2.5f32, 2i8),
        (3.5, 4),
        (-2.5, -2),
        (0.49, 0),
        (200.0, 127),
        (-200.0, -127),
    ] {
        assert_eq!(q8_code(x, 1.0), want, "{x}");
    }
    assert_eq!(q8_code(3.0, 0.5), 2); // 1.5 -> 2
                                      // Row 0: absmax 127 -> scale 1, codes equal the rounded values.
                                      // Row 1: group 0 all zero (scale 0, codes 0), group 1 absmax 254 (scale 2).
    let mut v = vec![0.0f32; 2 * 64];
    v[0] = 127.0;
    v[1] = 2.5;
    v[2] = -3.5;
    v[3] = 1.4;
    v[33] = -127.0; // row 0, group 1: scale 1 too
    v[64 + 32] = 254.0;
    v[64 + 33] = 5.0;
    v[64 + 34] = -7.0; // -3.5 steps -> -4 -> -8
    let q = pack_q8(&mat(2, 64, v), GroupSize::Cols(32)).unwrap();
    let Packed::Q8(p) = q.packed() else {
        panic!("q8")
    };
    assert_eq!(p.scales, vec![h(1.0), h(1.0), f16::ZERO, h(2.0)]);
    assert_eq!(&p.codes[..4], &[127, 2, -4, 1]);
    assert_eq!(p.codes[33], -127);
    assert_eq!(&p.codes[96..99], &[127, 2, -4]);
    let d = q.dequantize();
    assert_eq!(&d.row(0)[..4], &[127.0, 2.0, -4.0, 1.0]);
    assert_eq!(d.row(0)[33], -127.0);
    assert!(d.row(1)[..32].iter().all(|&x| x == 0.0));
    assert_eq!(&d.row(1)[32..35], &[254.0, 4.0, -8.0]);
}

#[test]
fn q4_canonical_rule_by_hand() {
    // (lo, hi) -> (scale, zero, inv): the range is widened to hold 0.
    for (lo, hi, s, z) in [
        (0.0f32, 15.0f32, 1.0f32, 0u8),
        (-15.0, 0.0, 1.0, 15),
        (-7.5, 7.5, 1.0, 8),    // 7.5 -> 8 (even)
        (-6.5, 8.5, 1.0, 6),    // 6.5 -> 6 (even)
        (2.0, 15.0, 1.0, 0),    // lo widened to 0
        (-15.0, -3.0, 1.0, 15), // hi widened to 0
        (-3.0, 27.0, 2.0, 2),
    ] {
        let (gs, gz, inv) = q4_params(lo, hi);
        assert_eq!((gs, gz, inv), (h(s), z, 1.0 / s), "[{lo}, {hi}]");
    }
    assert_eq!(q4_params(0.0, 0.0), (f16::ZERO, 0, 0.0));
    for (x, inv, zero, want) in [
        (2.5f32, 1.0f32, 0u8, 2u32),
        (3.5, 1.0, 0, 4),
        (-1.0, 1.0, 0, 0),
        (20.0, 1.0, 0, 15),
        (-2.0, 1.0, 8, 6),
        (0.5, 1.0, 3, 3),
        (3.0, 0.5, 1, 3),
    ] {
        assert_eq!(q4_code(x, inv, zero), want, "{x} {inv} {zero}");
    }
    assert_eq!(min_max(&[3.0, -1.0, 2.0]), (-1.0, 3.0));
    assert_eq!(min_max(&[]), (f32::INFINITY, f32::NEG_INFINITY));
    // Row 0: 0..=15 (scale 1, zero 0) then 16 zeros of a second group.
    // Row 1: -8..=7 (scale 1, zero 8), then zeros.
    let mut v: Vec<f32> = (0..16).map(|i| i as f32).collect();
    v.extend([0.0; 16]);
    v.extend((0..16).map(|i| i as f32 - 8.0));
    v.extend([0.0; 16]);
    let q = pack_q4(&mat(2, 32, v.clone()), GroupSize::Cols(32)).unwrap();
    let Packed::Q4(p) = q.packed() else {
        panic!("q4")
    };
    assert_eq!(p.scales, vec![h(1.0); 2]);
    assert_eq!(p.zeros, vec![0, 8]);
    // Column c is nibble c % 8 of word c / 8.
    assert_eq!(&p.codes[..4], &[0x7654_3210, 0xFEDC_BA98, 0, 0]);
    assert_eq!(
        &p.codes[4..8],
        &[0x7654_3210, 0xFEDC_BA98, 0x8888_8888, 0x8888_8888]
    );
    assert_eq!(q.dequantize().data(), &v[..]);
    // An all-zero group: scale 0, zero 0, codes 0.
    let z = pack_q4(&mat(1, 40, vec![0.0; 40]), GroupSize::Cols(32)).unwrap();
    let Packed::Q4(p) = z.packed() else {
        panic!("q4")
    };
    assert_eq!(
        (p.scales.clone(), p.zeros.clone()),
        (vec![f16::ZERO; 2], vec![0, 0])
    );
    assert!(p.codes.iter().all(|&w| w == 0));
    // A caller's range: [-15, 0] for every group puts the zero point at 15.
    let c = pack_q4_with(&mat(1, 8, vec![-1.0; 8]), GroupSize::Row, &|r, g, vals| {
        assert_eq!((r, g, vals.len()), (0, 0, 8));
        (-15.0, 0.0)
    })
    .unwrap();
    let Packed::Q4(p) = c.packed() else {
        panic!("q4")
    };
    assert_eq!(
        (p.scales[0], p.zeros[0], p.codes[0]),
        (h(1.0), 15, 0xEEEE_EEEE)
    );
    assert_eq!(c.dequantize().data(), &[-1.0; 8]);
}

#[test]
fn hand_built_grouped_parts_dequantize_at_the_right_group() {
    // 2 x 40 in groups of 32: row 1 group 1 is scales[3].
    let mut codes = vec![0i8; 2 * 48];
    codes[48 + 35] = -3;
    codes[48 + 2] = 5;
    codes[7] = 1;
    let q = QuantizedMatrix::new(
        2,
        40,
        GroupSize::Cols(32),
        Packed::Q8(Q8 {
            scales: vec![h(0.5), h(1.0), h(2.0), h(4.0)],
            codes,
        }),
    )
    .unwrap();
    let d = q.dequantize();
    assert_eq!((d.row(0)[7], d.row(1)[2], d.row(1)[35]), (0.5, 10.0, -12.0));
    assert_eq!(d.data().iter().filter(|&&x| x != 0.0).count(), 3);
    // lut4: a codebook of 16 distinct levels; code 3 at row 1 column 33.
    let codebook: [f32; 16] = std::array::from_fn(|i| i as f32 * 0.1 - 0.8);
    let mut words = vec![0u32; 2 * 8];
    words[8 + 4] = 3 << 4; // row 1, column 33 (word 4, nibble 1)
    words[0] = 0xF; // row 0, column 0
    let l = QuantizedMatrix::new(
        2,
        40,
        GroupSize::Cols(32),
        Packed::Lut4(Lut4 {
            scales: vec![h(1.0), h(1.0), h(1.0), h(2.0)],
            codebook,
            codes: words,
        }),
    )
    .unwrap();
    let d = l.dequantize();
    assert_eq!(d.row(0)[0], codebook[15]);
    assert_eq!(d.row(0)[1], codebook[0]);
    assert_eq!(d.row(1)[33], codebook[3] * 2.0);
    assert_eq!(d.row(1)[32], codebook[0] * 2.0);
}

#[test]
fn q4_hand_built_row_dequantizes_per_nibble() {
    // 1 x 12: one row of 16 bytes = 4 words; column 10 is word 1, nibble 2.
    let mut words = vec![0u32; 4];
    words[1] = 7 << 8;
    words[0] = 0x1000_0009; // column 0 code 9, column 7 code 1
    let q = QuantizedMatrix::new(
        1,
        12,
        GroupSize::Row,
        Packed::Q4(Q4 {
            scales: vec![h(0.25)],
            zeros: vec![4],
            codes: words,
        }),
    )
    .unwrap();
    let d = q.dequantize();
    let mut want = [-1.0f32; 12];
    want[0] = 1.25;
    want[7] = -0.75;
    want[10] = 0.75;
    assert_eq!(d.data(), &want[..]);
}

#[test]
fn nearest_level_matches_a_linear_scan() {
    let cb: Vec<f32> = (0..16).map(|i| i as f32).collect();
    for (x, want) in [
        (0.5f32, 0usize), // a tie goes to the lower index
        (0.51, 1),
        (7.5, 7),
        (7.6, 8),
        (14.5, 14),
        (14.51, 15),
        (100.0, 15),
        (-5.0, 0),
    ] {
        assert_eq!(nearest_level(&cb, x), want, "{x}");
    }
    // NF4 against a scan (nearest, ties to the lower index) on a fine grid.
    for i in -2200..=2200 {
        let x = i as f32 / 2000.0;
        let scan = (0..16)
            .min_by(|&a, &b| {
                (x - NF4_CODEBOOK[a])
                    .abs()
                    .total_cmp(&(x - NF4_CODEBOOK[b]).abs())
                    .then(a.cmp(&b))
            })
            .unwrap();
        let got = nearest_level(&NF4_CODEBOOK, x);
        let (dg, ds) = (
            (x - NF4_CODEBOOK[got]).abs(),
            (x - NF4_CODEBOOK[scan]).abs(),
        );
        assert!(dg <= ds, "{x}: level {got} vs {scan}");
    }
}

#[test]
fn lut4_packer_by_hand() {
    // A group equal to 2·NF4 has scale 2 and codes 0..=15 in order.
    let mut v: Vec<f32> = NF4_CODEBOOK.iter().map(|c| 2.0 * c).collect();
    v.extend(NF4_CODEBOOK.iter().rev().map(|c| 2.0 * c));
    v.extend([0.0; 32]); // an all-zero group: scale 0, codes of level 0.0 (7)
    let q = pack_lut4(&mat(1, 64, v.clone()), GroupSize::Cols(32), NF4_CODEBOOK).unwrap();
    let Packed::Lut4(p) = q.packed() else {
        panic!("lut4")
    };
    assert_eq!(p.scales, vec![h(2.0), f16::ZERO]);
    assert_eq!(p.codebook, NF4_CODEBOOK);
    assert_eq!(
        &p.codes[..4],
        &[0x7654_3210, 0xFEDC_BA98, 0x89AB_CDEF, 0x0123_4567]
    );
    assert_eq!(&p.codes[4..8], &[0x7777_7777; 4]);
    assert_eq!(q.dequantize().data(), &v[..]);
    // The codebook must be finite and ascending; a repeated level is allowed.
    let w = mat(1, 8, vec![0.5; 8]);
    let mut cb = NF4_CODEBOOK;
    cb.swap(3, 4);
    assert!(pack_lut4(&w, GroupSize::Row, cb).is_err());
    let mut cb = NF4_CODEBOOK;
    cb[15] = f32::INFINITY;
    assert!(pack_lut4(&w, GroupSize::Row, cb).is_err());
    let mut cb = NF4_CODEBOOK;
    cb[14] = 1.0;
    assert!(pack_lut4(&w, GroupSize::Row, cb).is_ok());
    assert!(pack_lut4(&w, GroupSize::Cols(48), NF4_CODEBOOK).is_err());
    assert!(pack_q4(&w, GroupSize::Cols(48)).is_err());
    assert!(pack_q8(&w, GroupSize::Cols(48)).is_err());
}

#[test]
fn range_limits_name_the_row_and_group() {
    let g = GroupSize::Cols(32);
    // Row 1, group 1 is out of range; every other group is fine.
    let bad_at = |v: f32| {
        let mut w = vec![1.0f32; 2 * 64];
        w[64 + 40] = v;
        w[64 + 41] = -v;
        mat(2, 64, w)
    };
    let where_ = |e: FormatError| match e {
        FormatError::Unrepresentable {
            row,
            col_start,
            col_end,
            ..
        } => (row, col_start, col_end),
        e => panic!("{e}"),
    };
    for (kind, inside, outside) in [
        (FormatKind::Q8, Q8_MAX_ABS, 1.001 * Q8_MAX_ABS),
        (
            FormatKind::Q4,
            Q4_MAX_RANGE / 2.0,
            1.001 * Q4_MAX_RANGE / 2.0,
        ),
        (FormatKind::Lut4, LUT4_MAX_ABS, 65520.0),
    ] {
        assert!(
            check_representable(&bad_at(inside), kind, g, false).is_ok(),
            "{kind}"
        );
        let e = check_representable(&bad_at(outside), kind, g, false).unwrap_err();
        assert_eq!(where_(e), (1, 32, 64), "{kind}");
    }
    // q4: the range counts from 0, so one-signed groups use max |w| only.
    let one_signed = mat(1, 2, vec![0.9 * Q4_MAX_RANGE, 0.1 * Q4_MAX_RANGE]);
    assert!(check_representable(&one_signed, FormatKind::Q4, g, false).is_ok());
    let neg = mat(1, 2, vec![-0.9 * Q4_MAX_RANGE, -0.1 * Q4_MAX_RANGE]);
    assert!(check_representable(&neg, FormatKind::Q4, g, false).is_ok());
    // Plain formats: per weight.
    let e = check_representable(&bad_at(65520.0), FormatKind::F16, g, false).unwrap_err();
    assert_eq!(where_(e), (1, 40, 41));
    assert!(check_representable(&bad_at(F16_MAX), FormatKind::F16, g, false).is_ok());
    let e = check_representable(&bad_at(f32::MAX), FormatKind::Bf16, g, false).unwrap_err();
    assert_eq!(where_(e), (1, 40, 41));
    assert!(check_representable(&bad_at(3e38), FormatKind::Bf16, g, false).is_ok());
    assert!(check_representable(&bad_at(f32::MAX), FormatKind::F32, g, false).is_ok());
    // f16 outliers (EasyQuant): any weight beyond f16 is refused, even when
    // the dense format holds it.
    let big = bad_at(1e5);
    assert!(check_representable(&big, FormatKind::Q4, g, false).is_ok());
    let e = check_representable(&big, FormatKind::Q4, g, true).unwrap_err();
    assert!(e.to_string().contains("f16 outlier"), "{e}");
    assert_eq!(where_(e), (1, 40, 41));
    assert!(check_representable(&bad_at(F16_MAX), FormatKind::Q4, g, true).is_ok());
}

#[test]
fn all_rounded_to_zero_needs_all_zero_output_from_non_zero_input() {
    let w = mat(1, 3, vec![1e-9, 0.0, -2e-9]);
    let zero = mat(1, 3, vec![0.0; 3]);
    let some = mat(1, 3, vec![0.0, 0.0, 1e-9]);
    assert!(all_rounded_to_zero(&w, &zero));
    assert!(!all_rounded_to_zero(&zero, &zero));
    assert!(!all_rounded_to_zero(&w, &some));
    assert!(!all_rounded_to_zero(&w, &w));
}

#[test]
fn dense_matrix_shape_and_first_non_finite() {
    assert_eq!(
        Matrix::from_vec(0, 3, vec![]).unwrap_err(),
        FormatError::Empty { rows: 0, cols: 3 }
    );
    assert_eq!(
        Matrix::from_vec(2, 0, vec![]).unwrap_err(),
        FormatError::Empty { rows: 2, cols: 0 }
    );
    assert!(matches!(
        Matrix::from_vec(2, 3, vec![0.0; 5]).unwrap_err(),
        FormatError::PartLength {
            got: 5,
            expected: 6,
            ..
        }
    ));
    let mut v: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let m = mat(3, 4, v.clone());
    assert_eq!((m.rows(), m.cols(), m.len()), (3, 4, 12));
    assert!(!m.is_empty());
    assert_eq!(m.row(1), &[4.0, 5.0, 6.0, 7.0]);
    assert_eq!(m.row(2), &[8.0, 9.0, 10.0, 11.0]);
    assert_eq!(m.data(), &v[..]);
    assert_eq!(m.first_non_finite(), None);
    assert_eq!(m.clone().into_vec(), v);
    v[11] = f32::INFINITY;
    v[6] = f32::NAN;
    let (r, c, x) = mat(3, 4, v.clone()).first_non_finite().unwrap();
    assert_eq!((r, c), (1, 2));
    assert!(x.is_nan());
    v[6] = 0.0;
    assert_eq!(mat(3, 4, v).first_non_finite(), Some((2, 3, f32::INFINITY)));
}

#[test]
fn outliers_csr_rules() {
    let o = Outliers::from_rows(&[vec![(1, h(1.0)), (4, h(2.0))], vec![], vec![(0, h(-3.0))]]);
    assert_eq!(o.row_ptr, vec![0, 2, 2, 3]);
    assert_eq!(o.col_idx, vec![1, 4, 0]);
    assert_eq!(o.nnz(), 3);
    assert_eq!(o.bytes(), 4 * 4 + 3 * 4 + 3 * 2);
    assert!(o.validate(3, 5).is_ok());
    let detail = |o: &Outliers, rows, cols| match o.validate(rows, cols) {
        Err(FormatError::BadValue {
            part: "outliers",
            detail,
        }) => detail,
        other => panic!("{other:?}"),
    };
    assert!(detail(&o, 2, 5).contains("row_ptr has 4 entries, expected 2 + 1"));
    assert!(detail(&o, 3, 4).contains("row 0 has a column index >= 4"));
    let mut b = o.clone();
    b.values.pop();
    assert!(detail(&b, 3, 5).contains("3 column indices but 2 values"));
    let mut b = o.clone();
    b.row_ptr[0] = 1;
    assert!(detail(&b, 3, 5).contains("start at 0 and end at nnz"));
    let mut b = o.clone();
    b.row_ptr[3] = 2;
    assert!(detail(&b, 3, 5).contains("start at 0 and end at nnz"));
    let mut b = o.clone();
    b.row_ptr = vec![0, 2, 1, 3];
    assert!(detail(&b, 3, 5).contains("row_ptr decreases at row 1"));
    let mut b = o.clone();
    b.row_ptr = vec![0, 4, 5, 3];
    assert!(detail(&b, 3, 5).contains("row_ptr at row 0 points past the last outlier"));
    let mut b = o.clone();
    b.col_idx[1] = 1;
    assert!(detail(&b, 3, 5).contains("row 0 column indices are not increasing"));
    let mut b = o.clone();
    b.col_idx = vec![4, 1, 0];
    assert!(detail(&b, 3, 5).contains("row 0 column indices are not increasing"));
    let mut b = o.clone();
    b.values[2] = f16::INFINITY;
    assert!(detail(&b, 3, 5).contains("not finite"));
    // Applied: added to the dense part at their positions.
    let base = pack_plain(&mat(3, 5, vec![0.5; 15]), FormatKind::F32).unwrap();
    let d = base.with_outliers(o).unwrap().dequantize();
    let mut want = [0.5f32; 15];
    want[1] += 1.0;
    want[4] += 2.0;
    want[10] -= 3.0;
    assert_eq!(d.data(), &want[..]);
}
