//! Quantization algorithms. They produce `format` values and never touch devices.

use crate::format::FormatError;

/// Errors of the quantizers.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// An input the algorithm cannot take (shape, value, parameter), with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A numerical failure the algorithm could not recover from.
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// The packed result broke its layout (a bug, reported rather than hidden).
    #[error(transparent)]
    Format(#[from] FormatError),
}

pub mod awq;
pub mod calib;
pub mod gptq;
