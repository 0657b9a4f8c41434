//! Sparse f16 outliers in CSR form, added to the dense part of a matrix.

use half::f16;

use super::FormatError;

/// Sparse outliers, CSR by row. Entry `i` of row `r` (for
/// `row_ptr[r] <= i < row_ptr[r+1]`) adds `values[i]` to `W[r][col_idx[i]]`.
/// Column indices are strictly increasing within a row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outliers {
    /// `rows + 1` offsets into `col_idx` / `values`.
    pub row_ptr: Vec<u32>,
    /// Column of each outlier.
    pub col_idx: Vec<u32>,
    /// Value added at that position.
    pub values: Vec<f16>,
}

impl Outliers {
    /// Builds the CSR arrays from per-row `(col, value)` lists (each sorted by column).
    pub fn from_rows(rows: &[Vec<(u32, f16)>]) -> Self {
        let mut o = Outliers {
            row_ptr: Vec::with_capacity(rows.len() + 1),
            ..Default::default()
        };
        o.row_ptr.push(0);
        for r in rows {
            for &(c, v) in r {
                o.col_idx.push(c);
                o.values.push(v);
            }
            o.row_ptr.push(o.col_idx.len() as u32);
        }
        o
    }

    /// Number of stored outliers.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Exact storage bytes (u32 row pointers, u32 columns, f16 values).
    pub fn bytes(&self) -> usize {
        self.row_ptr.len() * 4 + self.col_idx.len() * 4 + self.values.len() * 2
    }

    /// Checks the CSR invariants for a `rows x cols` matrix.
    pub fn validate(&self, rows: usize, cols: usize) -> Result<(), FormatError> {
        let bad = |detail: String| FormatError::BadValue {
            part: "outliers",
            detail,
        };
        if Some(self.row_ptr.len()) != rows.checked_add(1) {
            return Err(bad(format!(
                "row_ptr has {} entries, expected {rows} + 1",
                self.row_ptr.len(),
            )));
        }
        if self.col_idx.len() != self.values.len() {
            return Err(bad(format!(
                "{} column indices but {} values",
                self.col_idx.len(),
                self.values.len()
            )));
        }
        if self.row_ptr[0] != 0 || self.row_ptr[rows] as usize != self.values.len() {
            return Err(bad("row_ptr must start at 0 and end at nnz".into()));
        }
        for r in 0..rows {
            let (a, b) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
            if a > b {
                return Err(bad(format!("row_ptr decreases at row {r}")));
            }
            // Found by the fuzzer: a pointer past nnz before the last row.
            if b > self.col_idx.len() {
                return Err(bad(format!(
                    "row_ptr at row {r} points past the last outlier"
                )));
            }
            let cs = &self.col_idx[a..b];
            if cs.iter().any(|&c| c as usize >= cols) {
                return Err(bad(format!("row {r} has a column index >= {cols}")));
            }
            if cs.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad(format!("row {r} column indices are not increasing")));
            }
        }
        if self.values.iter().any(|v| !v.is_finite()) {
            return Err(bad("an outlier value is not finite".into()));
        }
        Ok(())
    }

    /// Adds row `r`'s outliers into `out`.
    pub(crate) fn add_row(&self, r: usize, out: &mut [f32]) {
        let (a, b) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
        for i in a..b {
            out[self.col_idx[i] as usize] += self.values[i].to_f32();
        }
    }
}
