//! Quantization algorithms. They produce `format` values and never touch devices.
