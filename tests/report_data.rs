//! Chart data and comparisons on synthetic runs: the data round-trips
//! through JSON, bad results files get a clear error, a run compared with
//! itself shows zero deltas, different models or inputs are flagged, and the
//! CLI writes every output.

mod report_support;

use quantscope::analyze::SCHEMA_VERSION;
use quantscope::report::compare::{self, compare};
use quantscope::report::data::VisualizationData;

#[test]
fn chart_data_round_trips_through_json_and_covers_every_chart() {
    let run = report_support::rich_run(11, "host-a");
    let d = VisualizationData::from_run(&run);
    let text = d.to_json();
    assert_eq!(VisualizationData::from_json(&text).unwrap(), d);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for k in [
        "memory_usage",
        "inference_speed",
        "accuracy",
        "efficiency_scores",
        "hardware_compatibility",
        "memory_breakdown",
        "memory_timeline",
        "tradeoff_analysis",
        "overhead_analysis",
        "fragmentation_analysis",
        "memory_efficiency",
        "layer_sensitivity",
        "normalized_comparison",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    let n = run.results.len();
    assert_eq!(d.memory_usage.len(), n);
    assert_eq!(d.tradeoff_analysis.points.len(), n);
    // Timelines: {backend: {strategy: {timestamps, memory_values, phases}}}.
    let cpu = &d.memory_timeline["cpu"]["int4"];
    let r = run
        .results
        .iter()
        .find(|r| r.strategy == "int4" && r.backend.name() == "cpu")
        .unwrap();
    assert_eq!(cpu.timestamps.len(), r.timeline.samples.len());
    assert_eq!(cpu.phases[0], "load");
    // Normalized: every value in (0, 1], and 1 reached on every metric.
    let nc = &d.normalized_comparison;
    for m in 0..nc.metrics.len() {
        let col: Vec<f64> = nc.series.iter().map(|s| s.values[m]).collect();
        assert!(col.iter().all(|v| *v > 0.0 && *v <= 1.0 + 1e-12), "{col:?}");
        assert!(col.iter().any(|v| (*v - 1.0).abs() < 1e-12));
    }
    // The smallest model is 1 on weight memory (inverted: min / v).
    let wm = nc
        .metrics
        .iter()
        .position(|m| m == "weight memory")
        .unwrap();
    let smallest = (0..n).min_by_key(|&i| run.results[i].memory_bytes).unwrap();
    assert!((nc.series[smallest].values[wm] - 1.0).abs() < 1e-12);
    // Fronts agree with the analyzer's.
    assert_eq!(
        d.tradeoff_analysis.speed_accuracy_front,
        run.pareto.speed_accuracy
    );
    // Layer matrix: layers x strategies.
    let l = &d.layer_sensitivity;
    assert_eq!(l.weight_nmse.len(), run.layers.len());
    assert!(l.weight_nmse.iter().all(|r| r.len() == l.strategies.len()));
}

#[test]
fn corrupted_and_future_results_files_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = report_support::rich_run(5, "host-a");
    let text = run.to_json().unwrap();
    let cut = dir.path().join("cut.json");
    std::fs::write(&cut, &text[..text.len() / 3]).unwrap();
    let e = compare::load_all(&[cut]).unwrap_err().to_string();
    assert!(
        e.contains("cut.json") && e.contains("not a JSON document"),
        "{e}"
    );
    let future = dir.path().join("future.json");
    let t = text.replacen(
        &format!("\"schema_version\": {SCHEMA_VERSION}"),
        &format!("\"schema_version\": {}", SCHEMA_VERSION + 1),
        1,
    );
    std::fs::write(&future, t).unwrap();
    let e = compare::load_all(&[future]).unwrap_err().to_string();
    assert!(
        e.contains("future.json") && e.contains("newer quantscope"),
        "{e}"
    );
    let missing = dir.path().join("missing.json");
    let e = compare::load_all(&[missing]).unwrap_err().to_string();
    assert!(
        e.contains("missing.json") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn a_run_compared_with_itself_has_zero_deltas() {
    let run = report_support::rich_run(9, "host-a");
    let c = compare(&[("a".into(), run.clone()), ("b".into(), run.clone())]);
    assert_eq!(c.rows.len(), run.results.len());
    assert!(c.flags.is_empty(), "{:?}", c.flags);
    for row in &c.rows {
        assert!(row.deltas[0].is_none());
        let d = row.deltas[1].unwrap();
        assert_eq!(d.accuracy, 0.0);
        assert_eq!(d.inference_time_s, 0.0);
        assert_eq!(d.inference_time_pct, 0.0);
        assert_eq!(d.memory_bytes, 0);
    }
    let csv = c.to_csv();
    assert_eq!(csv.lines().count(), run.results.len() + 1);
    assert!(csv.starts_with("strategy,backend,a:accuracy,a:time_s,a:memory_bytes,b:accuracy"));
    // Every delta field of every line is 0.
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 2 + 6 + 4);
        assert!(
            f[8..].iter().all(|v| v.parse::<f64>().unwrap() == 0.0),
            "{line}"
        );
    }
}

#[test]
fn runs_from_two_machines_merge_and_differences_are_flagged() {
    let a = report_support::rich_run(1, "host-a");
    let mut b = report_support::rich_run(2, "host-b");
    b.results.retain(|r| r.strategy != "nf4");
    let c = compare(&[("a".into(), a.clone()), ("b".into(), b.clone())]);
    assert!(c.flags.is_empty(), "same model and inputs: {:?}", c.flags);
    let row = c
        .rows
        .iter()
        .find(|r| r.strategy == "int4" && r.backend.name() == "wgpu")
        .unwrap();
    let (ca, cb) = (row.cells[0].unwrap(), row.cells[1].unwrap());
    let d = row.deltas[1].unwrap();
    assert!((d.accuracy - (cb.accuracy - ca.accuracy)).abs() < 1e-15);
    assert_eq!(
        d.memory_bytes,
        cb.memory_bytes as i64 - ca.memory_bytes as i64
    );
    assert!(d.accuracy != 0.0, "different seeds give different numbers");
    // A pair missing in one run has no cell and no delta there.
    let nf4 = c.rows.iter().find(|r| r.strategy == "nf4").unwrap();
    assert!(nf4.cells[1].is_none() && nf4.deltas[1].is_none());
    // Other model and inputs are flagged.
    let mut other = b.clone();
    other.config.model.name = "minilm".into();
    other.config.eval_inputs.digest = "ffff".into();
    let c = compare(&[("a".into(), a), ("o".into(), other)]);
    assert!(
        c.flags.iter().any(|f| f.contains("different models")),
        "{:?}",
        c.flags
    );
    assert!(
        c.flags.iter().any(|f| f.contains("different inputs")),
        "{:?}",
        c.flags
    );
}

#[test]
fn the_cli_writes_data_charts_html_and_comparisons() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    std::fs::write(&a, report_support::rich_run(1, "host-a").to_json().unwrap()).unwrap();
    std::fs::write(&b, report_support::rich_run(2, "host-b").to_json().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_quantscope");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let p = |x: &std::path::Path| x.as_os_str().to_owned();
    let (data, html, charts) = (
        dir.path().join("d.json"),
        dir.path().join("r.html"),
        dir.path().join("c"),
    );
    run(&[
        "report".as_ref(),
        &p(&a),
        "--data".as_ref(),
        &p(&data),
        "--html".as_ref(),
        &p(&html),
        "--charts".as_ref(),
        &p(&charts),
        "--format".as_ref(),
        "both".as_ref(),
    ]);
    assert!(VisualizationData::from_json(&std::fs::read_to_string(&data).unwrap()).is_ok());
    assert!(std::fs::read_to_string(&html)
        .unwrap()
        .contains("<table id=\"results\""));
    for k in quantscope::report::charts::ChartKind::ALL {
        assert!(charts.join(format!("{}.png", k.name())).is_file());
        assert!(charts.join(format!("{}.svg", k.name())).is_file());
    }
    let csv = run(&[
        "results".as_ref(),
        "compare".as_ref(),
        &p(&a),
        &p(&b),
        "--csv".as_ref(),
        "-".as_ref(),
    ]);
    assert_eq!(csv.lines().count(), 13);
    let list = run(&[
        "results".as_ref(),
        "list".as_ref(),
        "--results-dir".as_ref(),
        &p(dir.path()),
    ]);
    assert!(list.contains("host-a") && list.contains("host-b"), "{list}");
    let show = run(&["results".as_ref(), "show".as_ref(), &p(&a)]);
    assert!(
        show.contains("recommended") || show.contains("no recommendation"),
        "{show}"
    );
    let cmp_html = dir.path().join("cmp.html");
    run(&[
        "report".as_ref(),
        &p(&a),
        &p(&b),
        "--html".as_ref(),
        &p(&cmp_html),
    ]);
    let t = std::fs::read_to_string(&cmp_html).unwrap();
    assert!(t.contains("runs compared") && !t.contains("http"));
    // A future-version file is refused by the CLI too, naming the file.
    let f = dir.path().join("future.json");
    let text = std::fs::read_to_string(&a).unwrap().replacen(
        &format!("\"schema_version\": {SCHEMA_VERSION}"),
        "\"schema_version\": 999",
        1,
    );
    std::fs::write(&f, text).unwrap();
    let o = std::process::Command::new(bin)
        .args(["results".as_ref(), "show".as_ref(), f.as_os_str()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("future.json") && err.contains("schema version 999"),
        "{err}"
    );
}
