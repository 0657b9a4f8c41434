//! The analyzer: which quantization should I use for this model on this
//! hardware, and what does it cost in accuracy, speed and memory?
//!
//! It runs every strategy on every available backend through a real
//! forward pass ([`crate::model`]), measures accuracy retention against the
//! f32 CPU reference, speed from the device's clock and memory from the
//! backend's accounting, and recommends a pair for a priority under the
//! hardware's and the user's limits. Results are one versioned document
//! ([`schema::AnalysisRun`]).
//!
//! - [`schema`]: the results document (serde), load with version checks;
//! - [`fidelity`]: retention (cosine, NMSE, top-10 neighbour agreement);
//! - [`efficiency`]: savings, accuracy per GB, Pareto fronts, scores;
//! - [`recommend`]: the recommendation under constraints;
//! - [`timeline`]: memory timelines;
//! - [`runner`]: the analysis itself, and `--export`.

pub mod efficiency;
pub mod fidelity;
pub mod recommend;
pub mod runner;
pub mod schema;
pub mod timeline;

pub use recommend::{recommend, Constraints};
pub use schema::{AnalysisRun, Priority, StrategyResult, SCHEMA_VERSION};

/// Errors of the analyzer.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// A request that cannot be analyzed (flag values, empty sets).
    #[error("{0}")]
    Invalid(String),
    /// A results file that cannot be read.
    #[error("results file {path}: {message}")]
    Results {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A backend error.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}
