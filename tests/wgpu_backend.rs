//! The wgpu backend's own verbs beyond the kernels: memory accounting, timing
//! sources, ceilings, handle checks, adapter choice errors, and the `profile`
//! command on it. Skipped with one line when no adapter is present, unless
//! `QUANTSCOPE_REQUIRE_WGPU=1` (CI), where a missing adapter fails.
#![cfg(feature = "wgpu")]

use std::process::Command;

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

#[test]
fn timing_and_ceilings_are_measured() {
    let Some(b) = open() else { return };
    let m = pack_q4(&matrix(128, 512), GroupSize::Cols(64)).expect("pack");
    let h = b.upload(&m).expect("upload");
    for batch in [1, 16] {
        let t = b.time_matmul(&h, batch, 3).expect("time");
        assert_eq!(t.samples_s.len(), 3);
        assert!(t.samples_s.iter().all(|s| s.is_finite() && *s >= 0.0));
        let ts = b.info().features.iter().any(|f| f == "timestamp-query");
        let want = if ts {
            TimingSource::DeviceTimestamp
        } else {
            TimingSource::WallClock
        };
        assert_eq!(t.source, want);
    }
    let bw = b.measure_bandwidth(8 << 20).expect("bandwidth");
    assert!(bw.bytes_per_s > 0.0 && bw.bytes_moved >= 16 << 20, "{bw:?}");
    assert!(b.measure_flops().expect("flops") > 0.0);
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
    assert!(k["median_s"].as_f64().expect("median") > 0.0);
    assert!(k["gb_per_s"].as_f64().expect("GB/s") > 0.0);
    assert!(v["bandwidth"]["gb_per_s"].as_f64().expect("bw") > 0.0);
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

#[test]
fn q8_gemv_takes_the_packed_dot_product_path_where_available() {
    let Some(native) = open() else { return };
    if !native
        .info()
        .features
        .iter()
        .any(|f| f == "packed-4x8-integer")
    {
        eprintln!("adapter has no packed 4x8 integer dot product; nothing to compare");
        return;
    }
    let portable = WgpuBackend::open(&WgpuOptions {
        portable: true,
        ..WgpuOptions::from_env()
    })
    .expect("portable instance");
    let m = quantscope::format::pack_q8(&matrix(96, 320), GroupSize::Cols(32)).expect("pack");
    let x: Vec<f32> = (0..2 * 320)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
        .collect();
    let hn = native.upload(&m).expect("upload");
    let hp = portable.upload(&m).expect("upload");
    let yn = native.matmul(&hn, &x, 2).expect("native");
    let yp = portable.matmul(&hp, &x, 2).expect("portable");
    let err = quantscope::metrics::nmse(&yp, &yn);
    // int8 X blocks: a small, non-zero difference from the f32 path.
    assert!(err > 0.0 && err < 5e-4, "nmse {err:e}");
}
