//! What people look at: the data behind every chart, the charts themselves
//! (PNG and SVG through plotters, text in an embedded font), one
//! self-contained HTML report, and the comparison of runs from one or many
//! machines.
//!
//! - [`data`]: [`data::VisualizationData`], derived from an
//!   [`AnalysisRun`](crate::analyze::AnalysisRun), serializable;
//! - [`charts`]: every chart kind, drawn from that data;
//! - [`html`]: the HTML report of one run and the comparison report;
//! - [`compare`]: `results list|show|compare`: runs side by side, deltas, CSV;
//! - [`font`]: the embedded font every chart uses.

pub mod charts;
pub mod compare;
pub mod data;
pub mod font;
pub mod html;

use crate::analyze::AnalyzeError;
use crate::io::IoError;

/// Errors of the report layer.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A results file that cannot be used.
    #[error(transparent)]
    Results(#[from] AnalyzeError),
    /// A chart that could not be drawn.
    #[error("chart '{chart}': {message}")]
    Chart {
        /// The chart's name.
        chart: String,
        /// What went wrong.
        message: String,
    },
    /// A file that could not be written.
    #[error(transparent)]
    Write(#[from] IoError),
    /// A request that makes no sense (no runs, a folder that is not one).
    #[error("{0}")]
    Invalid(String),
}
