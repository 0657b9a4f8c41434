//! `quantscope analyze`: every strategy on every backend through a real
//! forward pass, then a recommendation. Thin: flags to
//! [`AnalyzeOptions`], [`runner::run`], print, write the results document.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};

use super::guard::{bad_flag, outln, BadFlag};
use quantscope::analyze::runner::{self, AnalyzeOptions, ModelSource, Progress};
use quantscope::analyze::{AnalysisRun, Priority};
use quantscope::backend::BackendKind;
use quantscope::format::GroupSize;
use quantscope::model::Preset;

/// Flags of `analyze`.
#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face checkpoint folder (config.json + model.safetensors or
    /// shards, tokenizer.json, sentence-transformers pooling files), or a
    /// folder written by `analyze --export`. Conflicts with --preset.
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A built-in synthetic model: tiny (default), minilm-l6, clip-vit-l14.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Comma-separated strategies (default: none, f16, int8, w8a8, int4,
    /// int4-clip, nf4, kmeans4, easyquant4, gptq-int4, awq-int4). w8a8 is
    /// SmoothQuant: int8 weights times int8 activations.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    strategies: Option<Vec<String>>,
    /// Comma-separated backends: cpu, wgpu, cuda (default: every available
    /// one; one asked for by name that cannot run is reported and skipped,
    /// and the run fails when none can).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    backends: Option<Vec<String>>,
    /// What the recommendation optimizes: balanced, accuracy, speed, memory.
    #[arg(long, default_value = "balanced")]
    priority: String,
    /// Largest memory a recommended pair may need (its peak during
    /// inference, weights included), in GB (1e9 bytes).
    #[arg(long, value_name = "GB")]
    max_memory_gb: Option<f64>,
    /// Lowest accuracy retention (mean cosine of the pooled outputs against
    /// the unquantized model) a recommended pair may have; also the target
    /// of the mixed-precision suggestion (0.999 when not given).
    #[arg(long, value_name = "COSINE")]
    min_accuracy: Option<f64>,
    /// Evaluation inputs, one text per line (BERT) or one image path per
    /// line (CLIP); default: the built-in set. GPTQ / AWQ calibrate on a
    /// separate built-in set.
    #[arg(long, value_name = "FILE")]
    inputs: Option<PathBuf>,
    /// Inputs per forward call (1..=4096).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed passes over the evaluation inputs per pair, after a warm-up.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Group size of the grouped formats: 32, 64, 128 or any multiple of
    /// 32, or `row`.
    #[arg(long, default_value = "128")]
    group: String,
    /// Skip the per-layer sensitivity and the mixed-precision suggestion.
    #[arg(long)]
    no_sensitivity: bool,
    /// Folder the results document is written to (`<run id>.json`).
    #[arg(long, default_value = "results", value_name = "DIR")]
    results_dir: PathBuf,
    /// Write the recommended configuration as a quantized checkpoint folder
    /// that `forward --model DIR` and `analyze --model DIR` load directly.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// With --export: write the mixed-precision configuration instead.
    #[arg(long, requires = "export")]
    export_mixed: bool,
    /// Also write the self-contained HTML report of this run (charts,
    /// table, per-layer view, recommendation) to this file.
    #[arg(long, value_name = "OUT.html")]
    html: Option<PathBuf>,
    /// Print the results document as JSON on stdout (the text table goes
    /// away; the file is still written).
    #[arg(long)]
    json: bool,
}

fn parse_group(s: &str) -> anyhow::Result<GroupSize> {
    if s.eq_ignore_ascii_case("row") {
        return Ok(GroupSize::Row);
    }
    let Ok(n) = s.parse::<usize>() else {
        bad_flag!("--group '{s}' is not a number or 'row'");
    };
    match GroupSize::Cols(n).validate() {
        Ok(g) => Ok(g),
        Err(e) => bad_flag!("--group {n}: {e}"),
    }
}

/// A flag value refused by the library, as a bad flag (exit status 2).
fn flag<T, E: std::fmt::Display>(r: Result<T, E>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::Error::new(BadFlag(e.to_string())))
}

fn options(a: &Args) -> anyhow::Result<AnalyzeOptions> {
    let model = match (&a.model, &a.preset) {
        (Some(d), _) => ModelSource::Dir(d.clone()),
        (None, Some(p)) => ModelSource::Preset(flag(p.parse::<Preset>())?),
        (None, None) => ModelSource::Preset(Preset::Tiny),
    };
    let backends = match &a.backends {
        None => None,
        Some(list) => {
            let mut v = Vec::new();
            for b in list {
                let k: BackendKind = flag(b.trim().parse())?;
                if !v.contains(&k) {
                    v.push(k);
                }
            }
            Some(v)
        }
    };
    let mut o = AnalyzeOptions {
        model,
        backends,
        priority: flag(a.priority.parse::<Priority>())?,
        max_memory_gb: a.max_memory_gb,
        min_accuracy: a.min_accuracy,
        inputs: a.inputs.clone(),
        batch: a.batch,
        timed_runs: a.runs,
        group: parse_group(&a.group)?,
        sensitivity: !a.no_sensitivity,
        ..AnalyzeOptions::default()
    };
    if let Some(s) = &a.strategies {
        o.strategies = s.clone();
    }
    if a.export_mixed && a.no_sensitivity {
        bad_flag!("--export-mixed needs the mixed-precision suggestion: drop --no-sensitivity");
    }
    flag(runner::parse_strategies(&o.strategies))?;
    if !(1..=4096).contains(&o.batch) {
        bad_flag!("--batch {} is out of range (1..=4096)", o.batch);
    }
    if !(1..=1000).contains(&o.timed_runs) {
        bad_flag!("--runs {} is out of range (1..=1000)", o.timed_runs);
    }
    if let Some(m) = o.min_accuracy {
        if !(-1.0..=1.0).contains(&m) {
            bad_flag!("--min-accuracy {m} is not a cosine in [-1, 1]");
        }
    }
    if let Some(m) = o.max_memory_gb {
        if !(m.is_finite() && m > 0.0) {
            bad_flag!("--max-memory-gb {m} must be a positive number");
        }
    }
    Ok(o)
}

fn mb(b: u64) -> String {
    format!("{:.2}", b as f64 / 1e6)
}

/// The text report: an aligned table, then the recommendation.
pub fn print_text(run: &AnalysisRun) {
    let header = [
        "strategy",
        "backend",
        "format",
        "bits/w",
        "retention",
        "worst",
        "top10",
        "MB",
        "saved",
        "ms/input",
        "speedup",
        "score",
    ];
    let p = run.config.priority;
    let rows: Vec<Vec<String>> = run
        .results
        .iter()
        .map(|r| {
            vec![
                r.strategy.clone(),
                r.backend.to_string(),
                r.format.clone(),
                format!("{:.2}", r.bits_per_weight),
                format!("{:.5}", r.accuracy),
                format!("{:.5}", r.retention.worst_cosine),
                r.retention
                    .top10_agreement
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "n/a".into()),
                mb(r.memory_bytes),
                format!("{:.1}%", r.efficiency.savings_pct),
                format!("{:.3}", r.inference_time_s * 1e3),
                r.efficiency
                    .speedup_vs_baseline
                    .map(|v| format!("{v:.2}x"))
                    .unwrap_or_else(|| "n/a".into()),
                format!("{:.3}", r.efficiency.scores.get(p)),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 3 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        outln!("{}", s.join("  ").trim_end());
    };
    let c = &run.config;
    outln!(
        "model {} ({}, {}), {} evaluation inputs ({} tokens each at most), batch {}",
        c.model.name,
        c.model.source,
        c.model.family,
        c.eval_inputs.count,
        c.eval_inputs.seq_len,
        c.batch
    );
    outln!(
        "retention = fidelity to the unquantized f32 model on the CPU (mean cosine of pooled \
         outputs), not task accuracy; score = {p} priority"
    );
    outln!();
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
    // One line per backend and reason, naming the strategies.
    let mut grouped: Vec<(BackendKind, &str, Vec<&str>)> = Vec::new();
    for s in &run.skipped {
        match grouped
            .iter_mut()
            .find(|g| g.0 == s.backend && g.1 == s.reason)
        {
            Some(g) => g.2.push(&s.strategy),
            None => grouped.push((s.backend, &s.reason, vec![&s.strategy])),
        }
    }
    for (b, reason, strategies) in grouped {
        let which = if strategies.len() == run.config.strategies.len() {
            "every strategy".to_string()
        } else {
            strategies.join(", ")
        };
        outln!("skipped on {b} ({which}): {reason}");
    }
    if let Some(m) = &run.mixed_precision {
        outln!();
        outln!(
            "mixed precision: int4 with {} of {} layers at int8 -> retention {:.5}, {} MB ({}; target {})",
            m.high_layers.len(),
            run.config.model.linear_layers.len(),
            m.result.accuracy,
            mb(m.result.memory_bytes),
            if m.meets_target { "meets" } else { "misses" },
            m.target_accuracy
        );
        if !m.high_layers.is_empty() {
            outln!("  int8 layers: {}", m.high_layers.join(", "));
        }
    }
    let rec = &run.recommendation;
    outln!();
    match &rec.recommended {
        Some(pk) => {
            outln!(
                "recommended ({}): {} on {}",
                rec.priority,
                pk.strategy,
                pk.backend
            );
            for r in &pk.reasons {
                outln!("  - {r}");
            }
            if let Some(ru) = &rec.runner_up {
                outln!(
                    "runner-up: {} on {} (score {:.3}, retention {:.5}, {} MB, {:.3} ms/input)",
                    ru.strategy,
                    ru.backend,
                    ru.score,
                    ru.accuracy,
                    mb(ru.memory_bytes),
                    ru.inference_time_s * 1e3
                );
            }
        }
        None => outln!(
            "no recommendation: {}",
            rec.binding_constraint
                .as_deref()
                .unwrap_or("no pair meets the constraints")
        ),
    }
    for a in &rec.avoid {
        outln!("avoid: {} on {}: {}", a.strategy, a.backend, a.reason);
    }
    for w in &rec.warnings {
        outln!("warning: {w}");
    }
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let opts = options(&a)?;
    let terminal = std::io::stderr().is_terminal() && !a.json;
    let bar = super::progress::bar(0, "analyze", !terminal);
    let progress = |p: Progress| match p {
        Progress::Pairs(n) => bar.set_length(n as u64),
        Progress::Phase(m) => bar.set_message(m),
        Progress::PairDone(line) => {
            bar.inc(1);
            if terminal {
                bar.println(line);
            } else {
                eprintln!("{line}");
            }
        }
    };
    let run = runner::run(&opts, &progress)?;
    bar.finish_and_clear();
    // Print first: a failing write never loses a finished analysis.
    if a.json {
        outln!("{}", run.to_json()?);
    } else {
        print_text(&run);
    }
    std::fs::create_dir_all(&a.results_dir)
        .with_context(|| format!("creating the results folder {}", a.results_dir.display()))?;
    let path = a.results_dir.join(format!("{}.json", run.run_id));
    quantscope::io::write_atomic(&path, run.to_json()?.as_bytes())?;
    if !a.json {
        outln!("results: {}", path.display());
    }
    if let Some(out) = &a.html {
        quantscope::report::html::write_run_report(&run, out)?;
        if !a.json {
            outln!("report: {}", out.display());
        }
    }
    if let Some(dir) = &a.export {
        let what = runner::export(&opts, &run, dir, a.export_mixed)?;
        if !a.json {
            outln!("exported {what} to {}", dir.display());
        }
    }
    if run.results.is_empty() {
        bail!("no strategy x backend pair could be analyzed (see the skipped lines)");
    }
    Ok(())
}
