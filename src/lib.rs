//! quantscope: weight quantization engine and analyzer.
//!
//! Layers, top to bottom (data flows down, never back up):
//! - [`quant`]: quantization algorithms producing [`format`] values;
//! - [`format`]: packed layouts and exact byte sizes, shared by every backend;
//! - [`backend`]: the [`backend::Backend`] trait and its CPU, wgpu and CUDA
//!   implementations, which run the packed formats;
//! - [`metrics`]: error measures used everywhere;
//! - [`vector`]: the vector quantization study (`quantscope vector`).
#![warn(missing_docs)]

pub mod backend;
pub mod format;
pub mod metrics;
pub mod quant;
pub mod vector;
