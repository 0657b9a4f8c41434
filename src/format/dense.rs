//! A plain row-major f32 matrix: the input of every quantizer.

use super::FormatError;

/// Row-major `rows x cols` f32 matrix without padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// Wraps `data` (`rows * cols` values, row-major).
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, FormatError> {
        if rows == 0 || cols == 0 {
            return Err(FormatError::Empty { rows, cols });
        }
        if data.len() != rows * cols {
            return Err(FormatError::PartLength {
                part: "data",
                got: data.len(),
                expected: rows * cols,
                rows,
                cols,
                format: "f32",
            });
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// All values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// One row.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    /// Consumes the matrix, returning its values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Never true: a `Matrix` has at least one element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Position and value of the first NaN or infinity, if any.
    pub fn first_non_finite(&self) -> Option<(usize, usize, f32)> {
        self.data
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i / self.cols, i % self.cols, self.data[i]))
    }
}
