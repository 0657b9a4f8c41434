//! `results.txt` in the reference exercise's layout (appended per run) and
//! `results.json` with every figure (a list of runs, rewritten atomically).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::study::StudyRun;
use super::VectorError;
use crate::atomic::Transaction;

/// Name of the text results file.
pub const RESULTS_TXT: &str = "results.txt";
/// Name of the JSON results file.
pub const RESULTS_JSON: &str = "results.json";

/// Contents of `results.json`. Runs are kept as JSON values: figures that
/// are not finite (an SQNR of a lossless quantization) are written as `null`,
/// and older runs are carried over as they were.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultsFile {
    /// Every run ([`StudyRun`]), oldest first.
    pub runs: Vec<serde_json::Value>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VectorError + '_ {
    move |source| VectorError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The text block of one run: per backend a header line
/// `Vector Size: <size>___multiprocess: <True|False>__device: <backend>`, a
/// configuration line, then per approach `<Title> Quantization:`,
/// `L2 Norm: <‖v − q‖₂ / N>`, `Latency: <s> seconds` (fit + quantize) and the
/// extra figures, and a dashed separator.
pub fn results_text(run: &StudyRun) -> String {
    let mut s = String::new();
    let c = &run.config;
    for b in &run.runs {
        s.push_str(&format!(
            "Vector Size: {}___multiprocess: {}__device: {}\n",
            c.spec.size.label(),
            if b.threads > 1 { "True" } else { "False" },
            b.backend.name()
        ));
        s.push_str(&format!(
            "Config: bits {}, distribution {}, seed {}, threshold {}, sample size {}, threads {}, device {}\n\n",
            c.bits,
            c.spec.distribution,
            c.spec.seed,
            c.threshold,
            c.sample_size,
            b.threads,
            b.device
        ));
        for r in &b.results {
            s.push_str(&format!("{} Quantization:\n", r.approach.title()));
            s.push_str(&format!("L2 Norm: {:e}\n", r.l2_over_n));
            s.push_str(&format!("Latency: {:.6} seconds\n", r.latency_s));
            s.push_str(&format!(
                "Fit: {:.6} seconds, Quantize: {:.6} seconds\n",
                r.fit_s, r.quantize_s
            ));
            s.push_str(&format!(
                "RMSE: {:.6e}, SQNR: {:.3} dB\n",
                r.rmse, r.sqnr_db
            ));
            if let Some(o) = r.outliers {
                s.push_str(&format!("Outliers kept: {o}\n"));
            }
            s.push('\n');
        }
        for (a, why) in &b.skipped {
            s.push_str(&format!("{} Quantization: skipped ({why})\n\n", a.title()));
        }
        s.push_str(&"-".repeat(60));
        s.push('\n');
    }
    s
}

/// Appends the run's block to `dir/results.txt`, atomically (old contents
/// plus the block, written to a temporary file and renamed).
pub fn append_results_txt(dir: &Path, run: &StudyRun) -> Result<(), VectorError> {
    let mut tx = Transaction::new();
    tx.append(&dir.join(RESULTS_TXT), results_text(run).as_bytes())?;
    tx.commit()?;
    Ok(())
}

/// Stages the runs' blocks appended to `dir/results.txt` and the runs added
/// to `dir/results.json` in `tx`: both files change when `tx` is committed,
/// or neither. A `results.json` that is not a valid results file is kept
/// beside as `results.json.bad`.
pub fn stage_results(
    tx: &mut Transaction,
    dir: &Path,
    runs: &[StudyRun],
) -> Result<(), VectorError> {
    let text: String = runs.iter().map(results_text).collect();
    tx.append(&dir.join(RESULTS_TXT), text.as_bytes())?;
    let path = dir.join(RESULTS_JSON);
    let mut file = match read_results_json(dir) {
        Ok(f) => f,
        Err(VectorError::Json { .. }) => {
            let old = std::fs::read(&path).map_err(io_err(&path))?;
            tx.write(&dir.join(format!("{RESULTS_JSON}.bad")), |w| {
                w.write_all(&old)
            })?;
            ResultsFile::default()
        }
        Err(e) => return Err(e),
    };
    for run in runs {
        let value = serde_json::to_value(run).map_err(|source| VectorError::Json {
            path: path.display().to_string(),
            source,
        })?;
        file.runs.push(value);
    }
    tx.write(&path, |w| {
        serde_json::to_writer_pretty(&mut *w, &file).map_err(std::io::Error::from)?;
        w.write_all(b"\n")
    })?;
    Ok(())
}

/// Reads `dir/results.json` (empty when absent).
pub fn read_results_json(dir: &Path) -> Result<ResultsFile, VectorError> {
    let path = dir.join(RESULTS_JSON);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| VectorError::Json {
            path: path.display().to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ResultsFile::default()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Adds `run` to `dir/results.json`, atomically ([`stage_results`] without
/// the text file).
pub fn append_results_json(dir: &Path, run: &StudyRun) -> Result<(), VectorError> {
    let path = dir.join(RESULTS_JSON);
    let mut file = match read_results_json(dir) {
        Ok(f) => f,
        Err(VectorError::Json { .. }) => {
            let bad = dir.join(format!("{RESULTS_JSON}.bad"));
            std::fs::rename(&path, &bad).map_err(io_err(&path))?;
            ResultsFile::default()
        }
        Err(e) => return Err(e),
    };
    let value = serde_json::to_value(run).map_err(|source| VectorError::Json {
        path: path.display().to_string(),
        source,
    })?;
    file.runs.push(value);
    write_json_atomic(&path, &file)
}

/// Writes `value` as pretty JSON to `path` atomically ([`crate::atomic`]).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), VectorError> {
    crate::atomic::write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::from)?;
        w.write_all(b"\n")
    })?;
    Ok(())
}
