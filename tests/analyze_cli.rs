//! `quantscope analyze` end to end on the `tiny` preset: complete results
//! on the CPU and (where it opens; required in CI) wgpu, the results file,
//! the HTML report, the exported checkpoint reproducing the analysis's
//! outputs bit for bit, and bad input.

use std::path::Path;
use std::process::Command;

use quantscope::analyze::runner::pooled_digest;
use quantscope::analyze::AnalysisRun;
use quantscope::backend::{self, BackendKind};
use quantscope::model::{DeviceModel, Model, QuantizedModel};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quantscope"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn wgpu_here() -> bool {
    match backend::open(BackendKind::Wgpu) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("QUANTSCOPE_REQUIRE_WGPU").as_deref() != Ok("1"),
                "QUANTSCOPE_REQUIRE_WGPU=1 but wgpu is unavailable: {e}"
            );
            eprintln!("analyze on wgpu skipped: {e}");
            false
        }
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn tiny_on_every_backend_with_report_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let export = dir.path().join("export");
    let html = dir.path().join("report.html");
    let backends = if wgpu_here() { "cpu,wgpu" } else { "cpu" };
    let out = bin()
        .args([
            "analyze",
            "--preset",
            "tiny",
            "--strategies",
            "none,int8,int4,gptq-int4",
            "--backends",
            backends,
            "--runs",
            "1",
            "--json",
            "--results-dir",
        ])
        .arg(&results)
        .arg("--export")
        .arg(&export)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "analyze failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = AnalysisRun::from_json(&String::from_utf8_lossy(&out.stdout), "stdout").unwrap();

    // Complete: every strategy on every backend asked for.
    let kinds: Vec<BackendKind> = backends.split(',').map(|b| b.parse().unwrap()).collect();
    assert_eq!(
        run.results.len(),
        4 * kinds.len(),
        "skipped: {:?}",
        run.skipped
    );
    let get = |s: &str, b: BackendKind| {
        run.results
            .iter()
            .find(|r| r.strategy == s && r.backend == b)
            .unwrap_or_else(|| panic!("no result for {s} on {b}"))
    };
    for &b in &kinds {
        let (none, int8, int4) = (get("none", b), get("int8", b), get("int4", b));
        assert!(
            int8.accuracy > int4.accuracy,
            "{b}: int8 {} vs int4 {}",
            int8.accuracy,
            int4.accuracy
        );
        assert!(int4.memory_bytes < int8.memory_bytes && int8.memory_bytes < none.memory_bytes);
        assert!(
            none.accuracy > 0.99999,
            "{b}: none retains {}",
            none.accuracy
        );
        for r in [none, int8, int4, get("gptq-int4", b)] {
            assert!(r.inference_time_s > 0.0 && r.inference_time_s.is_finite());
            assert!(r.accuracy.is_finite() && r.retention.worst_cosine <= r.accuracy);
            assert!(r.retention.top10_agreement.is_some());
            assert!(r.memory.device_peak_bytes >= r.memory.resident_after_upload_bytes);
            let phases: Vec<&str> = r
                .timeline
                .samples
                .iter()
                .map(|s| s.phase.as_str())
                .collect();
            for p in ["quantize", "upload", "warm-up", "inference", "free"] {
                assert!(
                    phases.contains(&p),
                    "{} on {b}: no {p} sample in {phases:?}",
                    r.strategy
                );
            }
            assert!(r.efficiency.scores.balanced >= 0.0 && r.efficiency.scores.balanced <= 1.0);
        }
    }
    // GPTQ and AWQ calibrate on inputs the evaluation does not use.
    assert_ne!(
        run.config.calib_inputs.digest,
        run.config.eval_inputs.digest
    );
    // Per-layer data for every linear and a mixed-precision suggestion.
    assert_eq!(run.layers.len(), run.config.model.linear_layers.len());
    let mixed = run.mixed_precision.as_ref().expect("mixed precision");
    assert_eq!(
        mixed.meets_target,
        mixed.result.accuracy >= mixed.target_accuracy
    );
    let rec = run
        .recommendation
        .recommended
        .as_ref()
        .expect("a recommendation");

    // The results file is the document printed.
    let files = files_in(&results);
    assert_eq!(files, vec![format!("{}.json", run.run_id)]);
    let saved = AnalysisRun::load(&results.join(&files[0])).unwrap();
    assert_eq!(saved, run);

    // The HTML report is there and self-contained.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && !page.contains("http://") && !page.contains("https://"));

    // The export reproduces the analysis's outputs on the same backend.
    let q = QuantizedModel::load(&export).unwrap();
    assert_eq!(q.strategy(), rec.strategy);
    let model = Model::load(&export).unwrap();
    let inputs = model.default_inputs();
    let b = backend::open(rec.backend).unwrap();
    let dm = DeviceModel::upload(b.as_ref(), &q).unwrap();
    let mut pooled = Vec::new();
    let n = inputs.len();
    for i in (0..n).step_by(run.config.batch) {
        let batch = model
            .encode(&inputs, i..(i + run.config.batch).min(n))
            .unwrap();
        pooled.extend(dm.forward(&batch).unwrap().pooled);
    }
    dm.free().unwrap();
    let recorded = get(&rec.strategy, rec.backend);
    assert_eq!(pooled_digest(&pooled), recorded.output_digest);
}

#[test]
fn bad_requests_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["--strategies".into(), "int3".into()],
            2,
            "unknown strategy 'int3' (valid: none, f16, int8",
        ),
        (
            vec!["--strategies".into(), "int4,int4".into()],
            2,
            "listed twice",
        ),
        (
            vec!["--backends".into(), "tpu".into()],
            2,
            "unknown backend 'tpu'",
        ),
        (
            vec!["--priority".into(), "cost".into()],
            2,
            "unknown priority 'cost'",
        ),
        (
            vec!["--preset".into(), "gpt2".into()],
            2,
            "unknown preset 'gpt2'",
        ),
        (vec!["--min-accuracy".into(), "2".into()], 2, "not a cosine"),
        (
            vec!["--batch".into(), "0".into()],
            2,
            "--batch 0 is out of range",
        ),
        (vec!["--group".into(), "48".into()], 2, "--group 48"),
        (
            vec!["--inputs".into(), empty.display().to_string()],
            1,
            "has no inputs",
        ),
        (
            vec![
                "--model".into(),
                dir.path().join("nope").display().to_string(),
            ],
            1,
            "nope",
        ),
    ];
    for (args, status, phrase) in cases {
        let out = bin()
            .arg("analyze")
            .args(&args)
            .args(["--backends", "cpu", "--results-dir"])
            .arg(&results)
            .output()
            .unwrap();
        // A repeated --backends appends: the tpu case still lists tpu.
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {err}");
        assert!(
            err.contains(phrase),
            "{args:?}: expected '{phrase}' in: {err}"
        );
        assert!(
            files_in(&results).is_empty(),
            "{args:?} wrote {:?}",
            files_in(&results)
        );
    }
    // A backend asked for by name that cannot run: its reason, exit 1.
    if backend::open(BackendKind::Cuda).is_err() {
        let out = bin()
            .args([
                "analyze",
                "--backends",
                "cuda",
                "--strategies",
                "int8",
                "--results-dir",
            ])
            .arg(&results)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("no requested backend is available") && err.contains("cuda unavailable"),
            "{err}"
        );
        assert!(files_in(&results).is_empty());
    }
}

#[test]
fn constraints_no_pair_meets_are_stated() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "analyze",
            "--strategies",
            "none,int4",
            "--backends",
            "cpu",
            "--runs",
            "1",
            "--no-sensitivity",
            "--max-memory-gb",
            "0.000001",
            "--results-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("no recommendation: --max-memory-gb binds"),
        "{text}"
    );
}
