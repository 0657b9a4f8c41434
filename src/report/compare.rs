//! Runs side by side: `results list|show|compare`. Rows are strategy x
//! backend pairs; each run is a column with its accuracy, time and memory,
//! and every run after the first carries its deltas against the first. Runs
//! from different machines compare like any others (that is how a sweep over
//! many machines is combined); runs of different models or inputs are
//! compared but flagged, never silently merged. A file of another schema
//! version is refused when it is read ([`AnalysisRun::load`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ReportError;
use crate::analyze::schema::AnalysisRun;
use crate::backend::BackendKind;

/// Who a run is, for headers and `results list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    /// Column label: the file stem (unique among the runs compared).
    pub label: String,
    /// Run id.
    pub run_id: String,
    /// Unix seconds at the start.
    pub created_unix_s: u64,
    /// quantscope version that wrote it.
    pub tool_version: String,
    /// Model name.
    pub model: String,
    /// Model source.
    pub model_source: String,
    /// Digest of the evaluation inputs.
    pub input_digest: String,
    /// Host name, where known.
    pub host: Option<String>,
    /// CPU model.
    pub cpu: String,
    /// Results in the run.
    pub results: usize,
}

impl RunHeader {
    /// The header of `run` labelled `label`.
    pub fn of(label: &str, run: &AnalysisRun) -> RunHeader {
        RunHeader {
            label: label.into(),
            run_id: run.run_id.clone(),
            created_unix_s: run.created_unix_s,
            tool_version: run.tool_version.clone(),
            model: run.config.model.name.clone(),
            model_source: run.config.model.source.clone(),
            input_digest: run.config.eval_inputs.digest.clone(),
            host: run.hardware.host.clone(),
            cpu: run.hardware.cpu.model.clone(),
            results: run.results.len(),
        }
    }
}

/// One run's figures for one pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Accuracy retention.
    pub accuracy: f64,
    /// Median seconds per input.
    pub inference_time_s: f64,
    /// Packed weight bytes.
    pub memory_bytes: u64,
}

/// A run's figures minus the first run's, for one pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Accuracy difference.
    pub accuracy: f64,
    /// Time difference in seconds.
    pub inference_time_s: f64,
    /// Time difference in % of the first run's.
    pub inference_time_pct: f64,
    /// Memory difference in bytes.
    pub memory_bytes: i64,
}

/// One strategy x backend pair across the runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Strategy.
    pub strategy: String,
    /// Backend.
    pub backend: BackendKind,
    /// One cell per run (`None`: the pair is not in that run).
    pub cells: Vec<Option<Cell>>,
    /// One delta per run against the first (`None` for the first run and
    /// where either run lacks the pair).
    pub deltas: Vec<Option<Delta>>,
}

/// Runs side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The runs, the first is the base of the deltas.
    pub runs: Vec<RunHeader>,
    /// Every pair of any run, in first-seen order.
    pub rows: Vec<Row>,
    /// What differs between runs beyond the machine: model, inputs, tool.
    pub flags: Vec<String>,
}

fn cell(run: &AnalysisRun, strategy: &str, backend: BackendKind) -> Option<Cell> {
    run.results
        .iter()
        .find(|r| r.strategy == strategy && r.backend == backend)
        .map(|r| Cell {
            accuracy: r.accuracy,
            inference_time_s: r.inference_time_s,
            memory_bytes: r.memory_bytes,
        })
}

fn delta(a: Cell, b: Cell) -> Delta {
    Delta {
        accuracy: b.accuracy - a.accuracy,
        inference_time_s: b.inference_time_s - a.inference_time_s,
        inference_time_pct: if a.inference_time_s > 0.0 {
            100.0 * (b.inference_time_s - a.inference_time_s) / a.inference_time_s
        } else {
            0.0
        },
        memory_bytes: b.memory_bytes as i64 - a.memory_bytes as i64,
    }
}

/// Compares `runs` (label, run); the first is the base.
pub fn compare(runs: &[(String, AnalysisRun)]) -> Comparison {
    let mut pairs: Vec<(String, BackendKind)> = Vec::new();
    for (_, run) in runs {
        for r in &run.results {
            if !pairs
                .iter()
                .any(|(s, b)| *s == r.strategy && *b == r.backend)
            {
                pairs.push((r.strategy.clone(), r.backend));
            }
        }
    }
    let rows = pairs
        .into_iter()
        .map(|(strategy, backend)| {
            let cells: Vec<Option<Cell>> = runs
                .iter()
                .map(|(_, r)| cell(r, &strategy, backend))
                .collect();
            let deltas = cells
                .iter()
                .enumerate()
                .map(|(i, c)| match (i, cells[0], c) {
                    (0, _, _) => None,
                    (_, Some(a), Some(b)) => Some(delta(a, *b)),
                    _ => None,
                })
                .collect();
            Row {
                strategy,
                backend,
                cells,
                deltas,
            }
        })
        .collect();
    Comparison {
        runs: runs.iter().map(|(l, r)| RunHeader::of(l, r)).collect(),
        rows,
        flags: flags(runs),
    }
}

fn flags(runs: &[(String, AnalysisRun)]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((base_label, base)) = runs.first() else {
        return out;
    };
    for (label, run) in &runs[1..] {
        let (a, b) = (&base.config, &run.config);
        if a.model.name != b.model.name
            || a.model.source != b.model.source
            || a.model.f32_weight_bytes != b.model.f32_weight_bytes
        {
            out.push(format!(
                "different models: {base_label} ran '{}' ({}), {label} ran '{}' ({}): \
                 accuracy and memory do not compare",
                a.model.name, a.model.source, b.model.name, b.model.source
            ));
        }
        if a.eval_inputs.digest != b.eval_inputs.digest
            || a.eval_inputs.seq_len != b.eval_inputs.seq_len
        {
            out.push(format!(
                "different inputs: {base_label} used {} x {} tokens (digest {}), {label} used \
                 {} x {} tokens (digest {}): accuracy retention does not compare exactly",
                a.eval_inputs.count,
                a.eval_inputs.seq_len,
                a.eval_inputs.digest,
                b.eval_inputs.count,
                b.eval_inputs.seq_len,
                b.eval_inputs.digest
            ));
        }
        if a.batch != b.batch {
            out.push(format!(
                "different batch: {base_label} {} per forward, {label} {}: times per input differ by design",
                a.batch, b.batch
            ));
        }
        if base.tool_version != run.tool_version {
            out.push(format!(
                "different quantscope versions: {base_label} {}, {label} {}",
                base.tool_version, run.tool_version
            ));
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Comparison {
    /// The merged table as CSV: one line per pair; per run its accuracy,
    /// seconds and bytes, then for every run after the first its deltas.
    /// Empty fields where a run lacks the pair.
    pub fn to_csv(&self) -> String {
        let mut head = vec!["strategy".to_string(), "backend".to_string()];
        for r in &self.runs {
            for f in ["accuracy", "time_s", "memory_bytes"] {
                head.push(format!("{}:{f}", r.label));
            }
        }
        for r in self.runs.iter().skip(1) {
            for f in ["d_accuracy", "d_time_s", "d_time_pct", "d_memory_bytes"] {
                head.push(format!("{}:{f}", r.label));
            }
        }
        let mut out = head
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for row in &self.rows {
            let mut f = vec![csv_field(&row.strategy), row.backend.name().to_string()];
            for c in &row.cells {
                match c {
                    Some(c) => f.extend([
                        format!("{}", c.accuracy),
                        format!("{}", c.inference_time_s),
                        c.memory_bytes.to_string(),
                    ]),
                    None => f.extend([String::new(), String::new(), String::new()]),
                }
            }
            for d in row.deltas.iter().skip(1) {
                match d {
                    Some(d) => f.extend([
                        format!("{}", d.accuracy),
                        format!("{}", d.inference_time_s),
                        format!("{}", d.inference_time_pct),
                        d.memory_bytes.to_string(),
                    ]),
                    None => f.extend([String::new(), String::new(), String::new(), String::new()]),
                }
            }
            out.push_str(&f.join(","));
            out.push('\n');
        }
        out
    }

    /// The merged table as aligned text for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&format!(
                "[{}] {}: run {}, model {}, host {}, cpu {}\n",
                i,
                r.label,
                r.run_id,
                r.model,
                r.host.as_deref().unwrap_or("?"),
                r.cpu
            ));
        }
        for f in &self.flags {
            out.push_str(&format!("warning: {f}\n"));
        }
        out.push_str(&format!("{:<22} {:<5}", "strategy", "back"));
        for i in 0..self.runs.len() {
            out.push_str(&format!(
                " | [{i}] {:>8} {:>9} {:>9}",
                "accuracy", "ms/input", "MB"
            ));
            if i > 0 {
                out.push_str(&format!(" {:>9} {:>8} {:>8}", "d_acc", "d_time%", "d_MB"));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!("{:<22} {:<5}", row.strategy, row.backend.name()));
            for (i, c) in row.cells.iter().enumerate() {
                match c {
                    Some(c) => out.push_str(&format!(
                        " | {:>12.6} {:>9.3} {:>9.2}",
                        c.accuracy,
                        c.inference_time_s * 1e3,
                        c.memory_bytes as f64 / 1e6
                    )),
                    None => out.push_str(&format!(" | {:>12} {:>9} {:>9}", "-", "-", "-")),
                }
                if i > 0 {
                    match row.deltas[i] {
                        Some(d) => out.push_str(&format!(
                            " {:>+9.6} {:>+7.1}% {:>+8.2}",
                            d.accuracy,
                            d.inference_time_pct,
                            d.memory_bytes as f64 / 1e6
                        )),
                        None => out.push_str(&format!(" {:>9} {:>8} {:>8}", "-", "-", "-")),
                    }
                }
            }
            out.push('\n');
        }
        out
    }
}

/// The results files named by `paths` (a folder stands for its `*.json`
/// files) and, with `dir`, every `*.json` in it; sorted per folder.
pub fn collect_paths(dir: Option<&Path>, paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReportError> {
    let mut out = Vec::new();
    let scan = |d: &Path, out: &mut Vec<PathBuf>| -> Result<(), ReportError> {
        let entries = std::fs::read_dir(d).map_err(|e| {
            ReportError::Invalid(format!(
                "results folder '{}': cannot read: {e}",
                d.display()
            ))
        })?;
        let mut v: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
            .collect();
        v.sort();
        out.extend(v);
        Ok(())
    };
    if let Some(d) = dir {
        scan(d, &mut out)?;
    }
    for p in paths {
        if p.is_dir() {
            scan(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Loads every file, labelled by its stem (made unique with `#2`, `#3`).
/// Any file that cannot be read, is not a results document or has another
/// schema version is an error naming it.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<(String, AnalysisRun)>, ReportError> {
    let mut out: Vec<(String, AnalysisRun)> = Vec::new();
    for p in paths {
        let run = AnalysisRun::load(p)?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| run.run_id.clone());
        let mut label = stem.clone();
        let mut k = 2;
        while out.iter().any(|(l, _)| *l == label) {
            label = format!("{stem}#{k}");
            k += 1;
        }
        out.push((label, run));
    }
    Ok(out)
}

/// One line per file of a results folder: its header, or why it cannot be read.
pub fn list(paths: &[PathBuf]) -> Vec<(PathBuf, Result<RunHeader, String>)> {
    paths
        .iter()
        .map(|p| {
            let label = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let h = AnalysisRun::load(p)
                .map(|r| RunHeader::of(&label, &r))
                .map_err(|e| e.to_string());
            (p.clone(), h)
        })
        .collect()
}

/// One run as text: header, recommendation, results.
pub fn show_text(label: &str, run: &AnalysisRun) -> String {
    let h = RunHeader::of(label, run);
    let mut out = format!(
        "run {} ({}), quantscope {}\nmodel {} ({}), inputs {} x {} (digest {})\nhost {}, cpu {}\n",
        h.run_id,
        h.label,
        h.tool_version,
        h.model,
        h.model_source,
        run.config.eval_inputs.count,
        run.config.eval_inputs.seq_len,
        h.input_digest,
        h.host.as_deref().unwrap_or("?"),
        h.cpu
    );
    let rec = &run.recommendation;
    match &rec.recommended {
        Some(p) => out.push_str(&format!(
            "recommended ({}): {} on {} (score {:.3}): {}\n",
            rec.priority,
            p.strategy,
            p.backend.name(),
            p.score,
            p.reasons.join("; ")
        )),
        None => out.push_str(&format!(
            "no recommendation: {}\n",
            rec.binding_constraint.as_deref().unwrap_or("no result")
        )),
    }
    for w in &rec.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let single = compare(&[(label.to_string(), run.clone())]);
    let table = single.to_text();
    // The one-run table without its run header line.
    out.extend(table.lines().skip(1).map(|l| format!("{l}\n")));
    out
}
