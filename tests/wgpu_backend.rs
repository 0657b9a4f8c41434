//! The wgpu backend's own verbs beyond the kernels: memory accounting, timing
//! sources, ceilings, handle checks, adapter choice errors, and the `profile`
//! command on it. Skipped with one line when no adapter is present, unless
//! `QUANTSCOPE_REQUIRE_WGPU=1` (CI), where a missing adapter fails.
#![cfg(feature = "wgpu")]

mod common;

use std::process::Command;

use common::matmul_check::{judge, Arith};

use quantscope::backend::wgpu::{WgpuBackend, WgpuOptions};
use quantscope::backend::{Backend, BackendError, TimingSource};
use quantscope::format::{pack_q4, GroupSize, Matrix};

fn open() -> Option<WgpuBackend> {
    match WgpuBackend::from_env() {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var("QUANTSCOPE_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("QUANTSCOPE_REQUIRE_WGPU=1 but wgpu is unavailable: {e}");
            }
            eprintln!("skipping wgpu test: {e}");
            None
        }
    }
}

fn matrix(rows: usize, cols: usize) -> Matrix {
    let data = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0)
        .collect();
    Matrix::from_vec(rows, cols, data).expect("shape")
}

#[test]
fn memory_is_counted_and_released() {
    let Some(b) = open() else { return };
    let before = b.memory().live_bytes;
    let m = pack_q4(&matrix(64, 256), GroupSize::Cols(32)).expect("pack");
    let h = b.upload(&m).expect("upload");
    let during = b.memory();
    assert!(during.live_bytes >= before + h.bytes(), "{during:?}");
    assert!(h.bytes() >= m.storage_bytes().total() as u64);
    assert!(during.peak_bytes >= during.live_bytes);
    b.free(h).expect("free");
    assert_eq!(b.memory().live_bytes, before);
}

/// What the timing verbs report, checked without judging any time: the
/// sample count, the clock each claims (device timestamps exactly when the
/// adapter has them), the copy probe's byte count (a read and a write of the
/// asked 8 MiB) and its rate as that count over its median. The rates
/// themselves are measurements: `cargo bench --bench device_probes` and
/// `quantscope profile` print them.
#[test]
fn timing_and_ceilings_are_accounted() {
    let Some(b) = open() else { return };
    let m = pack_q4(&matrix(128, 512), GroupSize::Cols(64)).expect("pack");
    let h = b.upload(&m).expect("upload");
    let features = b.info().features;
    let has = |f: &str| features.iter().any(|g| g == f);
    for batch in [1, 16] {
        let t = b.time_matmul(&h, batch, 3).expect("time");
        assert_eq!(t.samples_s.len(), 3);
        assert!(t.samples_s.iter().all(|s| s.is_finite() && *s >= 0.0));
        let want = if has("timestamp-query") {
            TimingSource::DeviceTimestamp
        } else {
            TimingSource::WallClock
        };
        assert_eq!(t.source, want);
    }
    let bw = b.measure_bandwidth(8 << 20).expect("bandwidth");
    assert_eq!(bw.bytes_moved, 2 * (8 << 20), "{bw:?}");
    assert!(bw.seconds.is_finite() && bw.seconds > 0.0, "{bw:?}");
    let rate = bw.bytes_moved as f64 / bw.seconds;
    assert!(
        (bw.bytes_per_s - rate).abs() <= 1e-9 * rate,
        "rate {} is not bytes / seconds {rate}: {bw:?}",
        bw.bytes_per_s
    );
    let want = if has("timestamp-query-inside-encoders") {
        TimingSource::DeviceTimestamp
    } else {
        TimingSource::WallClock
    };
    assert_eq!(bw.source, want, "{bw:?}");
    b.free(h).expect("free");
}

#[test]
fn bad_handles_and_inputs_are_errors() {
    let Some(b) = open() else { return };
    let m = pack_q4(&matrix(8, 64), GroupSize::Row).expect("pack");
    let h = b.upload(&m).expect("upload");
    assert!(matches!(
        b.matmul(&h, &[1.0; 10], 1),
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        b.matmul(&h, &[], 0),
        Err(BackendError::Invalid(_))
    ));
    let cpu = quantscope::backend::cpu::CpuBackend::new();
    let hc = cpu.upload(&m).expect("cpu upload");
    assert!(matches!(b.dequantize(&hc), Err(BackendError::Invalid(_))));
    b.free(h).expect("free");
}

#[test]
fn unknown_adapter_or_backend_is_a_clear_error() {
    // Only meaningful where some adapter exists.
    if open().is_none() {
        return;
    }
    let e = WgpuBackend::open(&WgpuOptions {
        adapter: Some("no-such-adapter-anywhere".into()),
        ..Default::default()
    })
    .err()
    .expect("must fail");
    assert!(e.to_string().contains("no-such-adapter-anywhere"), "{e}");
    let e = WgpuBackend::open(&WgpuOptions {
        backend: Some("glide".into()),
        ..Default::default()
    })
    .err()
    .expect("must fail");
    assert!(e.to_string().contains("vulkan"), "{e}");
}

fn profile(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quantscope"))
        .arg("profile")
        .args(args)
        .output()
        .expect("run quantscope");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn profile_reports_times_and_ceilings() {
    if open().is_none() {
        return;
    }
    let (ok, out, err) = profile(&[
        "--backend",
        "wgpu",
        "--format",
        "q8",
        "--shape",
        "256x512",
        "--batch",
        "1",
        "--runs",
        "3",
        "--copy-mib",
        "8",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let k = &v["kernels"][0];
    assert_eq!(k["kernel"], "gemv_q8");
    // Bytes per run counted independently: q8 codes (one byte per weight),
    // one f16 scale per group of 128 (the default), X and Y in f32.
    let (rows, cols, batch) = (256u64, 512u64, 1u64);
    let bytes = rows * cols + 2 * rows * (cols / 128) + 4 * batch * (rows + cols);
    assert_eq!(k["bytes"].as_u64(), Some(bytes), "{k}");
    let median = k["median_s"].as_f64().expect("median");
    assert!(median.is_finite() && median > 0.0, "{k}");
    let close = |got: &serde_json::Value, want: f64, what: &str| {
        let g = got.as_f64().unwrap_or(f64::NAN);
        assert!(
            (g - want).abs() <= 1e-9 * want.abs(),
            "{what}: {g} vs {want} from the counts and the median ({v})"
        );
    };
    close(&k["gb_per_s"], bytes as f64 / median / 1e9, "GB/s");
    close(
        &k["gflop_per_s"],
        2.0 * (batch * rows * cols) as f64 / median / 1e9,
        "GFLOP/s",
    );
    let bw = &v["bandwidth"];
    assert_eq!(bw["bytes_moved"].as_u64(), Some(2 * (8 << 20)), "{bw}");
    let bw_gbps = bw["gb_per_s"].as_f64().expect("bandwidth GB/s");
    close(
        &k["fraction_of_bandwidth"],
        bytes as f64 / median / 1e9 / bw_gbps,
        "fraction of bandwidth",
    );
    let (ok, out, err) = profile(&[
        "--backend",
        "wgpu",
        "--format",
        "lut4",
        "--shape",
        "64x96",
        "--batch",
        "9",
        "--runs",
        "2",
        "--copy-mib",
        "4",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("gemm_lut4") && out.contains("GB/s"), "{out}");
}

#[test]
fn profile_rejects_bad_flags() {
    for args in [
        &["--backend", "tpu"][..],
        &["--format", "q3"],
        &["--shape", "12by12"],
        &["--shape", "0x4"],
        &["--group", "48"],
        &["--batch", "0"],
        &["--runs", "0"],
    ] {
        let (ok, _, err) = profile(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

/// Adapter features this run requires (`QUANTSCOPE_REQUIRE_WGPU_FEATURES`,
/// a comma list of `DeviceInfo::features` names, e.g. set by CI for its
/// lavapipe adapter): a required feature that is missing fails instead of
/// skipping the test that needs it.
fn required_features() -> Vec<String> {
    std::env::var("QUANTSCOPE_REQUIRE_WGPU_FEATURES")
        .unwrap_or_default()
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

/// Whether `b` has `feature`; `false` with one line when it lacks one that
/// is not required, a panic when it is required.
fn has_feature(b: &WgpuBackend, feature: &str) -> bool {
    if b.info().features.iter().any(|f| f == feature) {
        return true;
    }
    assert!(
        !required_features().iter().any(|f| f == feature),
        "QUANTSCOPE_REQUIRE_WGPU_FEATURES names {feature}, which {} lacks (it has: {})",
        b.info().name,
        b.info().features.join(", ")
    );
    eprintln!("skipping: {} has no {feature}", b.info().name);
    false
}

#[test]
fn required_adapter_features_are_present() {
    let Some(b) = open() else { return };
    for f in required_features() {
        assert!(has_feature(&b, &f));
    }
}

#[test]
fn q8_gemv_takes_the_packed_dot_product_path_where_available() {
    let Some(native) = open() else { return };
    if !has_feature(&native, "packed-4x8-integer") {
        return;
    }
    let portable = WgpuBackend::open(&WgpuOptions {
        portable: true,
        ..WgpuOptions::from_env()
    })
    .expect("portable instance");
    let m = quantscope::format::pack_q8(&matrix(96, 320), GroupSize::Cols(32)).expect("pack");
    let w_eff = m.dequantize();
    let x: Vec<f32> = (0..2 * 320)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
        .collect();
    let exact = CpuBackend::exact();
    let hc = exact.upload(&m).expect("upload");
    let want = exact.matmul(&hc, &x, 2).expect("cpu");
    let hn = native.upload(&m).expect("upload");
    let hp = portable.upload(&m).expect("upload");
    let yn = native.matmul(&hn, &x, 2).expect("native");
    let yp = portable.matmul(&hp, &x, 2).expect("portable");
    // Native: int8 X blocks of 16, within the int8 rounding bound; and not
    // the f32 result (the dot-product path really ran).
    let j = judge(&m, &w_eff, &x, 2, Arith::Int8Act { block: 16 }, &want, &yn);
    j.check().unwrap_or_else(|e| panic!("native: {e}"));
    assert!(
        quantscope::metrics::nmse(&yp, &yn) > 0.0,
        "native equals portable"
    );
    // Portable: f32 throughout.
    let j = judge(&m, &w_eff, &x, 2, Arith::F32, &want, &yp);
    j.check().unwrap_or_else(|e| panic!("portable: {e}"));
}

// ---- device tensors and forward-pass ops ----------------------------------

use quantscope::backend::cpu::CpuBackend;
use quantscope::backend::{x_stride, Activation, Op, TensorHandle, TensorInit};
use quantscope::format::{pack_q8, QuantizedMatrix};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64*: fresh, reproducible, non-zero values in [-1, 1).
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// One encoder block's worth of ops chained in one `run` (outputs of one op
/// are inputs of the next, so the padded layout is kept end to end): q/k/v
/// projections with bias, attention, output projection, residual add, layer
/// norm, MLP with GELU. Returns the final tensor's values.
fn encoder_block(b: &dyn Backend, ws: &[QuantizedMatrix], seqs: usize, s: usize) -> Vec<f32> {
    let (hidden, mlp, heads) = (ws[0].rows(), ws[4].rows(), 4);
    let n = seqs * s;
    let t = |rows, cols, seed| {
        b.tensor(rows, cols, TensorInit::Data(&values(rows * cols, seed)))
            .expect("tensor")
    };
    let out = |rows, cols| b.tensor(rows, cols, TensorInit::Poison).expect("tensor");
    let x = t(n, hidden, 1);
    let mut mask = vec![1.0f32; seqs * s];
    mask[seqs * s - 2..].fill(0.0);
    let mask = b.tensor(seqs, s, TensorInit::Data(&mask)).expect("mask");
    let hs: Vec<_> = ws.iter().map(|m| b.upload(m).expect("upload")).collect();
    let biases: Vec<TensorHandle> = ws
        .iter()
        .enumerate()
        .map(|(i, m)| t(1, m.rows(), 10 + i as u64))
        .collect();
    let (gamma, beta) = (t(1, hidden, 20), t(1, hidden, 21));
    let (q, k, v, a, o, r, ln, up, act, down) = (
        out(n, hidden),
        out(n, hidden),
        out(n, hidden),
        out(n, hidden),
        out(n, hidden),
        out(n, hidden),
        out(n, hidden),
        out(n, mlp),
        out(n, mlp),
        out(n, hidden),
    );
    let ops = [
        Op::Linear {
            x: &x,
            w: &hs[0],
            bias: Some(&biases[0]),
            y: &q,
        },
        Op::Linear {
            x: &x,
            w: &hs[1],
            bias: Some(&biases[1]),
            y: &k,
        },
        Op::Linear {
            x: &x,
            w: &hs[2],
            bias: Some(&biases[2]),
            y: &v,
        },
        Op::Attention {
            q: &q,
            k: &k,
            v: &v,
            mask: Some(&mask),
            seqs,
            heads,
            y: &a,
        },
        Op::Linear {
            x: &a,
            w: &hs[3],
            bias: Some(&biases[3]),
            y: &o,
        },
        Op::Add {
            a: &o,
            b: &x,
            y: &r,
        },
        Op::LayerNorm {
            x: &r,
            gamma: &gamma,
            beta: &beta,
            eps: 1e-12,
            y: &ln,
        },
        Op::Linear {
            x: &ln,
            w: &hs[4],
            bias: Some(&biases[4]),
            y: &up,
        },
        Op::Activation {
            kind: Activation::Gelu,
            x: &up,
            y: &act,
        },
        Op::Linear {
            x: &act,
            w: &hs[5],
            bias: None,
            y: &down,
        },
    ];
    b.run(&ops).expect("run");
    let timed = b.run_timed(&ops).expect("run_timed");
    assert_eq!(timed.per_op_s.len(), ops.len());
    assert!(
        timed.per_op_s.iter().all(|t| t.is_finite() && *t >= 0.0),
        "{timed:?}"
    );
    let got = b.read(&down).expect("read");
    for t in [x, mask, gamma, beta, q, k, v, a, o, r, ln, up, act, down]
        .into_iter()
        .chain(biases)
    {
        b.free_tensor(t).expect("free tensor");
    }
    for h in hs {
        b.free(h).expect("free");
    }
    got
}

#[test]
fn an_encoder_block_chained_in_one_run_matches_the_cpu() {
    let Some(b) = open() else { return };
    // Widths that are not multiples of 32 (the padded stride differs from
    // cols everywhere), a sequence length that is not a multiple of the
    // query tile, batch 2 x 37 = 74 rows (the GEMM path).
    let (hidden, mlp) = (100, 150);
    let shapes = [
        (hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (mlp, hidden),
        (hidden, mlp),
    ];
    let ws: Vec<QuantizedMatrix> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            let w = Matrix::from_vec(r, c, values(r * c, 100 + i as u64)).expect("shape");
            pack_q8(&w, GroupSize::Cols(32)).expect("pack")
        })
        .collect();
    for (seqs, s) in [(2, 37), (1, 3)] {
        let want = encoder_block(&CpuBackend::exact(), &ws, seqs, s);
        let got = encoder_block(&b, &ws, seqs, s);
        assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
        let e = quantscope::metrics::nmse(&want, &got);
        assert!(e <= 5e-4, "{seqs}x{s}: NMSE vs CPU {e:.3e}");
    }
    assert_eq!(b.memory().live_bytes, 16, "only the dummy buffer is left");
}

#[test]
fn op_timings_come_from_device_timestamps() {
    let Some(b) = open() else { return };
    let x = b
        .tensor(5, 40, TensorInit::Data(&values(200, 3)))
        .expect("tensor");
    let (y, z) = (
        b.tensor(5, 40, TensorInit::Poison).expect("tensor"),
        b.tensor(5, 40, TensorInit::Poison).expect("tensor"),
    );
    let ops = [
        Op::Activation {
            kind: Activation::QuickGelu,
            x: &x,
            y: &y,
        },
        Op::Add {
            a: &y,
            b: &x,
            y: &z,
        },
    ];
    let t = b.run_timed(&ops).expect("timed");
    let ts = b.info().features.iter().any(|f| f == "timestamp-query");
    let want = if ts {
        TimingSource::DeviceTimestamp
    } else {
        TimingSource::WallClock
    };
    assert_eq!(t.source, want);
    assert_eq!(t.per_op_s.len(), 2);
    // The span from the first op's start to the last op's end holds each op.
    let longest = t.per_op_s.iter().cloned().fold(0.0, f64::max);
    assert!(t.total_s >= longest, "{t:?}");
    let got = b.read(&z).expect("read");
    let xs = values(200, 3);
    for (g, &v) in got.iter().zip(&xs) {
        let want = v / (1.0 + (-1.702 * v).exp()) + v;
        assert!(
            (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{g} vs {want}"
        );
    }
    for t in [x, y, z] {
        b.free_tensor(t).expect("free");
    }
}

#[test]
fn tensors_are_padded_counted_checked_and_released() {
    let Some(b) = open() else { return };
    let before = b.memory().live_bytes;
    let data = values(3 * 45, 9);
    let t = b.tensor(3, 45, TensorInit::Data(&data)).expect("tensor");
    // Rows are padded to x_stride(cols) floats on the device and counted so.
    assert_eq!(
        b.memory().live_bytes,
        before + (3 * x_stride(45) * 4) as u64
    );
    assert_eq!(b.read(&t).expect("read"), data);
    let new = values(3 * 45, 10);
    b.write_tensor(&t, &new).expect("write");
    assert_eq!(b.read(&t).expect("read"), new);
    assert!(matches!(
        b.write_tensor(&t, &new[..10]),
        Err(BackendError::Invalid(_))
    ));
    let poison = b.tensor(2, 3, TensorInit::Poison).expect("poison");
    assert!(b.read(&poison).expect("read").iter().all(|v| v.is_nan()));
    let zeros = b.tensor(2, 3, TensorInit::Zeros).expect("zeros");
    assert_eq!(b.read(&zeros).expect("read"), vec![0.0; 6]);
    // Another backend's handle and a freed handle are refused.
    let cpu = CpuBackend::new();
    let foreign = cpu.tensor(3, 45, TensorInit::Zeros).expect("cpu tensor");
    assert!(matches!(b.read(&foreign), Err(BackendError::Invalid(_))));
    let ghost = TensorHandle::new(t.id(), t.backend(), 3, 45);
    for x in [t, poison, zeros] {
        b.free_tensor(x).expect("free");
    }
    assert!(matches!(b.read(&ghost), Err(BackendError::Invalid(_))));
    assert!(b.free_tensor(ghost).is_err());
    assert_eq!(b.memory().live_bytes, before);
}

#[test]
fn attention_beyond_the_kernel_tile_is_unsupported_not_wrong() {
    let Some(b) = open() else { return };
    // 513 keys (past the 512-key score tile), and heads of 160 columns (past
    // the 128-column query tile): `supports` says no and `run` refuses.
    for (s, hidden, heads) in [(513usize, 64usize, 1usize), (4, 320, 2)] {
        let t = |r, c| b.tensor(r, c, TensorInit::Zeros).expect("tensor");
        let (q, k, v, y) = (t(s, hidden), t(s, hidden), t(s, hidden), t(s, hidden));
        let op = Op::Attention {
            q: &q,
            k: &k,
            v: &v,
            mask: None,
            seqs: 1,
            heads,
            y: &y,
        };
        assert!(!b.supports(&op));
        assert!(matches!(
            b.run(&[op]),
            Err(BackendError::Unsupported { .. })
        ));
        for x in [q, k, v, y] {
            b.free_tensor(x).expect("free");
        }
    }
}
