//! quantscope: weight quantization engine and analyzer.
//!
//! Layers, top to bottom (data flows down, never back up):
//! - [`quant`]: quantization algorithms producing [`format`](mod@format) values;
//! - [`format`](mod@format): packed layouts and exact byte sizes, shared by every backend;
//! - [`backend`]: the [`backend::Backend`] trait and its CPU, wgpu and CUDA
//!   implementations, which run the packed formats;
//! - [`metrics`]: error measures used everywhere;
//! - [`io`]: safetensors in and out, atomic writes; [`sample`]: the built-in sample model;
//! - [`vector`]: the vector quantization study (`quantscope vector`);
//! - [`report`]: chart data, charts, the HTML report and the comparison of runs.
#![warn(missing_docs)]

pub mod analyze;
pub mod backend;
pub mod format;
pub mod hardware;
pub mod io;
pub mod metrics;
pub mod quant;
pub mod report;
pub mod sample;
pub mod vector;
