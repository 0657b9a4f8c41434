//! The vector quantization study (`quantscope vector`).
//!
//! A vector (the reference exercise's 10 values, 10 million N(0,1) samples, or
//! `N` samples of another distribution) is quantized to `2^bits` levels by
//! several approaches, on every chosen backend, and each is measured: the
//! reference's error figure `‖v − q‖₂ / N`, RMSE and SQNR, and the latency
//! split into fitting the levels and quantizing the whole vector.
//!
//! - [`generate`](mod@generate): the vectors, seeded and deterministic;
//! - [`fit`]: level fitters (fixed and MSE-optimal uniform grids, Lloyd-Max,
//!   the exact DP optimum) over one primitive, per-level sums and counts, that
//!   runs on the sorted sample (CPU) or through [`crate::backend::Backend::assign_levels`];
//! - [`study`]: the approaches and the measured runs;
//! - [`report`]: `results.txt` (the reference layout) and `results.json`;
//! - [`plot`]: histograms with levels, original vs quantized, outliers, and
//!   the summary image of `--all-configs`.

pub mod fit;
pub mod generate;
pub mod plot;
pub mod report;
pub mod study;

pub use fit::{dp_optimal, lloyd_max, uniform_fixed, uniform_optimal, Fit, IterOptions};
pub use generate::{generate, Distribution, VectorSize, VectorSpec, LARGE_LEN, SMALL_VECTOR};
pub use study::{
    run_study, Approach, ApproachResult, BackendRun, StudyConfig, StudyEvent, StudyRun,
};

use crate::backend::BackendError;
use crate::format::FormatError;

/// Errors of the vector study.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// A parameter or input that does not fit, with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A packed layout could not be built.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Reading or writing a results file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Encoding or decoding `results.json`.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// What went wrong.
        source: serde_json::Error,
    },
    /// Writing an output file (refused path, disk full, ...); nothing of
    /// the run was left behind.
    #[error(transparent)]
    Write(#[from] crate::atomic::AtomicError),
    /// Drawing a plot.
    #[error("plot {path}: {message}")]
    Plot {
        /// The image.
        path: String,
        /// What went wrong.
        message: String,
    },
}
