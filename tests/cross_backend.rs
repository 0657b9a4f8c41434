//! Every device backend against the CPU backend, ggml test-backend-ops style:
//! one table of cases (formats x shapes x groups), fresh random inputs,
//! device outputs poisoned with NaN before each run (the backends do it), and
//!   matmul against `CpuBackend::exact()` (f32 activations) within the bound
//!   of the path the device takes (tests/common/matmul_check.rs: exact f32
//!   paths ~1e-12, f16 tensor-core and int8-activation paths at bounds
//!   derived from their rounding), NMSE and the worst batch row and output
//!   feature; dequantize exact, device quantize bit-identical to
//!   `pack_q8`/`pack_q4`, level assignment exact (sums to f32 rounding),
//!   any NaN fails.
//!
//! The devices are `backend::available()` minus the CPU (so CUDA joins where
//! present) plus, for wgpu, a second instance on the portable (core WGSL)
//! path, so both the native-feature and the fallback kernels run.
//! `QUANTSCOPE_REQUIRE_WGPU=1` turns a missing wgpu adapter, or a portable
//! instance that does not open, into a failure, `QUANTSCOPE_REQUIRE_CUDA=1`
//! a CUDA backend that does not open (the GPU check kit sets both);
//! otherwise the part is skipped with one line.
//! `QUANTSCOPE_TEST_BACKENDS=cuda` (a comma list of labels' first words)
//! keeps only those devices, e.g. for the compute-sanitizer pass.
//! `QUANTSCOPE_PRINT_MATMUL_ERRORS=1` prints every case's errors; a summary
//! per device and path (worst values) is printed (`--nocapture` shows it).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::matmul_check::{arith, judge, Arith, Judgement};
use half::f16;
use quantscope::backend::cpu::CpuBackend;
use quantscope::backend::{self, Backend, BackendKind, RtnSpec};
use quantscope::format::{
    pack_lut4, pack_plain, pack_q4, pack_q8, FormatKind, GroupSize, Matrix, Outliers,
    QuantizedMatrix, NF4_CODEBOOK,
};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Extras on top of the dense format.
#[derive(Clone, Copy, Debug)]
enum Extra {
    None,
    Outliers,
    ActScale,
    Both,
    /// W8A8: int8 activations, with an activation scale or without.
    W8A8,
    W8A8Scaled,
}

struct Case {
    kind: FormatKind,
    extra: Extra,
    group: GroupSize,
    batch: usize,
    rows: usize,
    cols: usize,
    /// Also check dequantize (skipped on the largest shape to keep CI fast).
    dequantize: bool,
}

fn case(kind: FormatKind, extra: Extra, group: GroupSize, shape: (usize, usize, usize)) -> Case {
    let (batch, cols, rows) = shape;
    Case {
        kind,
        extra,
        group,
        batch,
        rows,
        cols,
        dequantize: rows * cols <= 1 << 20,
    }
}

/// The table: shapes are `batch x cols · cols x rows`.
fn cases() -> Vec<Case> {
    use Extra::*;
    use FormatKind::*;
    let g = |n| GroupSize::Cols(n);
    let row = GroupSize::Row;
    let big = (1, 4096, 4096);
    let mid = (3, 1000, 333);
    let gemm = (64, 512, 512);
    let odd_gemv = (2, 77, 45);
    let odd_gemm = (9, 77, 45);
    // GEMM rows (weight rows, 64 per tile) not a multiple of the tile,
    // across several tiles: 333 = 5 x 64 + 13; 130 = 2 x 64 + 2 with two
    // batch tiles (70 = 64 + 6 on wgpu, 3 x 32 on CUDA) and K = 4099.
    let tiles_a = (9, 1000, 333);
    let tiles_b = (70, 4099, 130);
    // Batch 4..7 (the GEMV's last override sizes) and 8 (GEMM_MIN_BATCH,
    // the first GEMM batch).
    let hand_over = |b| (b, 333, 100);
    let mut v = vec![case(Q4, None, g(128), big), case(Q8, None, row, big)];
    for (i, kind) in [F32, F16, Bf16, Q8, Q4, Lut4].into_iter().enumerate() {
        for (group, shape) in [
            (g(32), mid),
            (g(64), gemm),
            (row, odd_gemv),
            (g(32), odd_gemm),
            (g(64), tiles_a),
            (g(32), tiles_b),
            (row, hand_over(4 + i % 4)),
            (g(32), hand_over(8)),
        ] {
            v.push(case(kind, None, group, shape));
        }
    }
    // q8 takes the int8-activation GEMV on adapters with packed dot
    // products: every GEMV batch of the hand-over.
    for b in [4, 5, 6] {
        v.push(case(Q8, None, g(32), hand_over(b)));
    }
    v.push(case(Q4, Outliers, g(128), mid));
    v.push(case(Q4, Outliers, g(64), gemm));
    v.push(case(Q8, ActScale, g(32), mid));
    v.push(case(Q8, ActScale, row, gemm));
    v.push(case(Lut4, Both, g(32), odd_gemm));
    v.push(case(F16, Both, row, odd_gemv));
    v.push(case(Q4, Both, g(32), gemm));
    v.push(case(Q8, Both, g(32), hand_over(5)));
    v.push(case(Lut4, Outliers, g(128), tiles_b));
    // W8A8 (the int8 rounding of X in scale_input), GEMV and GEMM.
    v.push(case(Q8, W8A8, g(32), mid));
    v.push(case(Q8, W8A8, row, gemm));
    v.push(case(Q8, W8A8, g(32), hand_over(5)));
    v.push(case(Q8, W8A8Scaled, g(32), odd_gemm));
    v.push(case(Q8, W8A8Scaled, g(64), tiles_b));
    v.push(case(Q8, W8A8Scaled, row, odd_gemv));
    v
}

fn random_matrix(rng: &mut Xoshiro256PlusPlus, rows: usize, cols: usize) -> Matrix {
    let data = (0..rows * cols)
        .map(|_| {
            // Mostly small weights with a few larger ones, never all zero.
            let v: f32 = rng.random_range(-1.0..1.0);
            if rng.random_range(0..50) == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect();
    Matrix::from_vec(rows, cols, data).expect("shape")
}

fn build(c: &Case, rng: &mut Xoshiro256PlusPlus) -> QuantizedMatrix {
    let w = random_matrix(rng, c.rows, c.cols);
    let m = match c.kind {
        FormatKind::Q8 => pack_q8(&w, c.group),
        FormatKind::Q4 => pack_q4(&w, c.group),
        FormatKind::Lut4 => pack_lut4(&w, c.group, NF4_CODEBOOK),
        k => pack_plain(&w, k),
    }
    .expect("pack");
    let with_outliers = matches!(c.extra, Extra::Outliers | Extra::Both);
    let with_act = matches!(c.extra, Extra::ActScale | Extra::Both | Extra::W8A8Scaled);
    let m = if with_outliers {
        let rows: Vec<Vec<(u32, f16)>> = (0..c.rows)
            .map(|_| {
                let mut cols: Vec<u32> = (0..rng.random_range(0..6))
                    .map(|_| rng.random_range(0..c.cols as u32))
                    .collect();
                cols.sort_unstable();
                cols.dedup();
                cols.into_iter()
                    .map(|col| (col, f16::from_f32(rng.random_range(-4.0..4.0))))
                    .collect()
            })
            .collect();
        m.with_outliers(Outliers::from_rows(&rows))
            .expect("outliers")
    } else {
        m
    };
    let m = if with_act {
        let a = (0..c.cols).map(|_| rng.random_range(0.25..2.0)).collect();
        m.with_act_scale(a).expect("act scale")
    } else {
        m
    };
    if matches!(c.extra, Extra::W8A8 | Extra::W8A8Scaled) {
        m.with_int8_activations().expect("W8A8")
    } else {
        m
    }
}

fn require_wgpu() -> bool {
    std::env::var("QUANTSCOPE_REQUIRE_WGPU").is_ok_and(|v| v == "1")
}

fn require_cuda() -> bool {
    std::env::var("QUANTSCOPE_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// Whether `QUANTSCOPE_TEST_BACKENDS` (unset: all) keeps device `label`.
fn selected(label: &str) -> bool {
    let Ok(list) = std::env::var("QUANTSCOPE_TEST_BACKENDS") else {
        return true;
    };
    let first = label.split_whitespace().next().unwrap_or(label);
    list.split(',').any(|b| b.trim() == first)
}

/// The devices under test, each with a label.
fn devices() -> Vec<(String, Arc<dyn Backend>)> {
    let mut out: Vec<(String, Arc<dyn Backend>)> = Vec::new();
    for s in backend::backends() {
        match (s.kind, s.backend) {
            (BackendKind::Cpu, _) => {}
            (kind, Ok(b)) => out.push((kind.name().to_string(), b)),
            (BackendKind::Wgpu, Err(e)) => {
                if require_wgpu() {
                    panic!("QUANTSCOPE_REQUIRE_WGPU=1 but wgpu is unavailable: {e}");
                }
                eprintln!("skipping wgpu kernels: {e}");
            }
            (BackendKind::Cuda, Err(e)) if require_cuda() => {
                panic!("QUANTSCOPE_REQUIRE_CUDA=1 but cuda is unavailable: {e}")
            }
            (kind, Err(e)) => eprintln!("skipping {kind}: {e}"),
        }
    }
    #[cfg(feature = "wgpu")]
    {
        use quantscope::backend::wgpu::{WgpuBackend, WgpuOptions};
        let mut opts = WgpuOptions::from_env();
        opts.portable = true;
        match WgpuBackend::open(&opts) {
            Ok(b) => out.push(("wgpu (portable WGSL)".into(), Arc::new(b))),
            // "Required" covers the portable kernels too: an adapter that
            // opens natively but not portably would leave them untested.
            Err(e) if require_wgpu() => {
                panic!(
                    "QUANTSCOPE_REQUIRE_WGPU=1 but the portable wgpu instance does not open: {e}"
                )
            }
            Err(e) => eprintln!("skipping the portable wgpu instance: {e}"),
        }
    }
    out.retain(|(label, _)| selected(label));
    out
}

fn assert_finite(label: &str, v: &[f32]) {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!("{label}: non-finite value {} at {i}", v[i]);
    }
}

/// The worst values one device and path reached, for the summary.
#[derive(Default)]
struct Worst {
    cases: usize,
    nmse_units: f64,
    nmse: f64,
    row: f64,
    feature: f64,
}

impl Worst {
    fn add(&mut self, j: &Judgement) {
        self.cases += 1;
        self.nmse_units = self.nmse_units.max(j.nmse / j.unit);
        self.nmse = self.nmse.max(j.nmse);
        // Row errors in units of sqrt(the case's NMSE): the scale of
        // ROW_FACTOR and FEATURE_FACTOR.
        let s = j.nmse.sqrt().max(f64::MIN_POSITIVE);
        self.row = self.row.max(j.row_rel / s);
        self.feature = self.feature.max(j.feature_rel / s);
    }
}

#[test]
fn every_backend_matches_the_cpu() {
    let devices = devices();
    if devices.is_empty() {
        eprintln!("no device backend to compare with the CPU");
        return;
    }
    let print = std::env::var("QUANTSCOPE_PRINT_MATMUL_ERRORS").is_ok_and(|v| v == "1");
    // f32 activations everywhere: the reference must not carry the int8
    // rounding of the CPU's fast GEMV.
    let cpu = CpuBackend::exact();
    let mut worst: BTreeMap<(String, Arith), Worst> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xC0FFEE);
    for c in cases() {
        let m = build(&c, &mut rng);
        let w_eff = m.dequantize();
        let x: Vec<f32> = (0..c.batch * c.cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let hc = cpu.upload(&m).expect("cpu upload");
        let want = cpu.matmul(&hc, &x, c.batch).expect("cpu matmul");
        assert_finite("cpu", &want);
        let want_dq = c
            .dequantize
            .then(|| cpu.dequantize(&hc).expect("cpu dequantize"));
        for (name, dev) in &devices {
            let label = format!(
                "{name}: {} {}x{}·{}x{}",
                m.label(),
                c.batch,
                c.cols,
                c.cols,
                c.rows
            );
            let h = dev
                .upload(&m)
                .unwrap_or_else(|e| panic!("{label}: upload: {e}"));
            let got = dev
                .matmul(&h, &x, c.batch)
                .unwrap_or_else(|e| panic!("{label}: matmul: {e}"));
            assert_finite(&label, &got);
            let path = arith(&dev.info(), m.kind(), c.batch);
            let j = judge(&m, &w_eff, &x, c.batch, path, &want, &got);
            if print {
                eprintln!(
                    "{label} [{path}]: NMSE {:.3e} ({:.3} x unit {:.2e}; bound {:.2e}), \
                     worst row {:.2e} (bound {:.2e}), feature {:.2e} (bound {:.2e})",
                    j.nmse,
                    j.nmse / j.unit,
                    j.unit,
                    j.nmse_bound,
                    j.row_rel,
                    j.row_bound,
                    j.feature_rel,
                    j.feature_bound
                );
            }
            // Every case runs before the verdict: the list shows whether one
            // path or one shape is off.
            if let Err(e) = j.check() {
                failures.push(format!("{label}: matmul {e}"));
            }
            worst.entry((name.clone(), path)).or_default().add(&j);
            if let Some(want_dq) = &want_dq {
                let dq = dev
                    .dequantize(&h)
                    .unwrap_or_else(|e| panic!("{label}: dequantize: {e}"));
                assert_finite(&label, &dq);
                if let Some(i) = (0..dq.len()).find(|&i| dq[i].to_bits() != want_dq[i].to_bits()) {
                    panic!(
                        "{label}: dequantize differs at {i}: {} vs cpu {}",
                        dq[i], want_dq[i]
                    );
                }
            }
            dev.free(h).expect("free");
        }
        cpu.free(hc).expect("free");
    }
    for ((name, path), w) in &worst {
        eprintln!(
            "{name} [{path}]: {} cases, worst NMSE {:.2e} ({:.3} x the path's unit), \
             worst row {:.2}, feature {:.2} (x sqrt(NMSE))",
            w.cases, w.nmse, w.nmse_units, w.row, w.feature
        );
    }
    assert!(
        failures.is_empty(),
        "{} of the matmul cases out of bounds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn device_quantize_is_bit_identical() {
    let devices = devices();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xBEEF);
    for (rows, cols) in [(37usize, 1000usize), (64, 512), (45, 77), (3, 4096)] {
        let mut w = random_matrix(&mut rng, rows, cols).into_vec();
        // Row 0 all zero (scale 0). Rows 1 and 2: every group's scale is
        // exactly 1 (q8: absmax 127; q4: range [0, 15]) and the other values
        // are k + 0.5, so every code is an exact tie (both sides: to even).
        w[..cols].iter_mut().for_each(|v| *v = 0.0);
        for c in 0..cols {
            let tie = (c % 7) as f32 + 0.5;
            w[cols + c] = if c % 32 == 0 { 127.0 } else { tie };
            w[2 * cols + c] = match c % 32 {
                0 => 15.0,
                1 => 0.0,
                _ => tie,
            };
        }
        let w = Matrix::from_vec(rows, cols, w).expect("shape");
        for group in [
            GroupSize::Row,
            GroupSize::Cols(32),
            GroupSize::Cols(64),
            GroupSize::Cols(128),
        ] {
            for kind in [FormatKind::Q8, FormatKind::Q4] {
                let want = match kind {
                    FormatKind::Q8 => pack_q8(&w, group),
                    _ => pack_q4(&w, group),
                }
                .expect("pack");
                for (name, dev) in &devices {
                    let got = dev
                        .quantize(&w, RtnSpec { kind, group })
                        .unwrap_or_else(|e| panic!("{name}: quantize {kind} group {group}: {e}"));
                    assert!(
                        got == want,
                        "{name}: quantize {kind} group {group} {rows}x{cols} differs from the CPU packer"
                    );
                }
            }
        }
    }
}

#[test]
fn level_assignment_matches_the_cpu() {
    let devices = devices();
    let cpu = backend::open(BackendKind::Cpu).expect("cpu");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xA55);
    for (rows, cols, k) in [(50usize, 333usize, 16usize), (7, 1000, 256), (128, 256, 3)] {
        let w = random_matrix(&mut rng, rows, cols);
        let mut levels: Vec<f32> = (0..k).map(|_| rng.random_range(-2.0..2.0)).collect();
        levels.sort_by(f32::total_cmp);
        let mut data = w.into_vec();
        // Some values exactly on a midpoint: ties go to the lower level.
        if k > 1 {
            for i in 0..10 {
                data[i * 3] = 0.5 * (levels[i % (k - 1)] + levels[i % (k - 1) + 1]);
            }
        }
        let w = Matrix::from_vec(rows, cols, data).expect("shape");
        let m = pack_plain(&w, FormatKind::F32).expect("pack");
        let hc = cpu.upload(&m).expect("upload");
        let want = cpu.assign_levels(&hc, &levels, true).expect("cpu assign");
        let scale: f64 = w.data().iter().map(|v| v.abs() as f64).sum();
        for (name, dev) in &devices {
            let h = dev.upload(&m).expect("upload");
            for want_codes in [true, false] {
                let got = dev
                    .assign_levels(&h, &levels, want_codes)
                    .unwrap_or_else(|e| panic!("{name}: assign_levels: {e}"));
                if want_codes {
                    assert!(
                        got.codes == want.codes,
                        "{name}: codes differ ({rows}x{cols}, {k} levels)"
                    );
                } else {
                    assert!(got.codes.is_empty(), "{name}: codes returned unasked");
                }
                assert_eq!(got.counts, want.counts, "{name}: counts differ");
                for (a, b) in got.sums.iter().zip(&want.sums) {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "{name}: level sum {a} vs cpu {b}"
                    );
                }
            }
            dev.free(h).expect("free");
        }
    }
}
