//! quantscope: weight quantization engine and analyzer.
//!
//! Layers, top to bottom (data flows down, never back up):
//! - [`quant`]: quantization algorithms producing [`format`](mod@format) values;
//! - [`format`](mod@format): packed layouts and exact byte sizes, shared by every backend;
//! - [`backend`]: the [`backend::Backend`] trait and its CPU, wgpu and CUDA
//!   implementations, which run the packed formats;
//! - [`model`]: transformer encoders (BERT family, CLIP vision) loaded from
//!   the Hugging Face layout or built as presets, quantized, and run on any backend;
//! - [`metrics`]: error measures used everywhere;
//! - [`io`]: safetensors in and out; [`atomic`]: the one way a file is written
//!   (all files of a run or none); [`input`]: regular input files, memory-mapped;
//!   [`sample`]: the built-in sample model;
//! - [`vector`]: the vector quantization study (`quantscope vector`);
//! - [`report`]: chart data, charts, the HTML report and the comparison of runs.
#![warn(missing_docs)]

pub mod analyze;
pub mod atomic;
pub mod backend;
pub mod format;
pub mod hardware;
pub mod input;
pub mod io;
pub mod metrics;
pub mod model;
pub mod quant;
pub mod report;
pub mod sample;
pub mod vector;
