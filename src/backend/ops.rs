//! Device tensors and the ops of a transformer encoder's forward pass.
//!
//! As in ggml (`ggml_op` + `supports_op` + `graph_compute`), ops are data:
//! a forward pass is a list of [`Op`]s over [`TensorHandle`]s (f32
//! activations that stay on the device) and [`MatrixHandle`]s (packed
//! weights), submitted with [`Backend::run`](super::Backend::run) in one
//! command buffer / stream. A backend that lacks an op answers `false` from
//! [`Backend::supports`](super::Backend::supports); the caller reports
//! "n/a", the backend never falls back silently.
//!
//! Rules every backend follows (checked once, here, by [`Op::check`]):
//! - every handle of an op belongs to the backend that runs it;
//! - an op's output is a tensor distinct from its inputs (no aliasing, so a
//!   GPU binding is never read and written at once);
//! - shapes agree as each variant documents.

use serde::{Deserialize, Serialize};

use super::{BackendError, BackendKind, MatrixHandle};

/// An f32 tensor of `rows x cols` values on a backend (row-major as far as
/// the caller sees; a backend may pad rows internally). Opaque; pass it back
/// to the backend that made it and free it with
/// [`Backend::free_tensor`](super::Backend::free_tensor).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TensorHandle {
    id: u64,
    backend: BackendKind,
    rows: usize,
    cols: usize,
}

impl TensorHandle {
    /// Made by backends when a tensor is created.
    pub fn new(id: u64, backend: BackendKind, rows: usize, cols: usize) -> TensorHandle {
        TensorHandle {
            id,
            backend,
            rows,
            cols,
        }
    }
    /// Backend-local identifier.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The backend that owns it.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// The first contents of a new tensor.
#[derive(Debug, Clone, Copy)]
pub enum TensorInit<'a> {
    /// Every value 0.
    Zeros,
    /// Every value NaN: for outputs in tests, so a value a kernel forgot to
    /// write fails every comparison.
    Poison,
    /// These `rows * cols` values, row-major.
    Data(&'a [f32]),
}

/// An elementwise activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `x · Φ(x) = 0.5 · x · (1 + erf(x / √2))`: BERT's `gelu`.
    Gelu,
    /// `x · σ(1.702 · x)`: CLIP's `quick_gelu`.
    QuickGelu,
}

impl Activation {
    /// The f64 value, the reference every kernel is checked against.
    pub fn eval_f64(self, x: f64) -> f64 {
        match self {
            Activation::Gelu => 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2)),
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        }
    }
}

/// erf(x) to ~1e-15 (Abramowitz-Stegun 7.1.26 is not enough for an f64
/// reference): the series for |x| < 2.5, the continued fraction beyond.
pub fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let t = term / (2.0 * n + 1.0);
            sum += t;
            // The terms fall below 1e-17 of the sum by n ~ 60 for |x| < 2.5
            // (and at once for x = 0); the cap guards the loop regardless.
            if t.abs() <= 1e-17 * sum.abs() || n > 200.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}

/// One operation of a forward pass. Outputs are written whole; inputs are
/// never changed.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// `y = x · Wᵀ (+ bias)`: `x` is `batch x w.cols`, `y` is
    /// `batch x w.rows`, `bias` (when given) `1 x w.rows`, added to every row.
    Linear {
        /// Input activations.
        x: &'a TensorHandle,
        /// Packed weights (any format).
        w: &'a MatrixHandle,
        /// Optional bias row.
        bias: Option<&'a TensorHandle>,
        /// Output.
        y: &'a TensorHandle,
    },
    /// Per row: `y = (x − mean) / sqrt(var + eps) · gamma + beta` with the
    /// biased variance; `gamma`, `beta` are `1 x cols`.
    LayerNorm {
        /// Input.
        x: &'a TensorHandle,
        /// Scale row.
        gamma: &'a TensorHandle,
        /// Shift row.
        beta: &'a TensorHandle,
        /// Added to the variance.
        eps: f32,
        /// Output, the shape of `x`.
        y: &'a TensorHandle,
    },
    /// `y = f(x)` elementwise.
    Activation {
        /// Which function.
        kind: Activation,
        /// Input.
        x: &'a TensorHandle,
        /// Output, the shape of `x`.
        y: &'a TensorHandle,
    },
    /// `y = a + b`, `b` broadcast over rows: `b` has `a`'s columns and a
    /// number of rows that divides `a`'s; row `r` of `a` takes row
    /// `r % b.rows` of `b` (a bias row, or position embeddings repeated for
    /// every sequence of a batch).
    Add {
        /// Left operand, the output's shape.
        a: &'a TensorHandle,
        /// Right operand, broadcast.
        b: &'a TensorHandle,
        /// Output.
        y: &'a TensorHandle,
    },
    /// Per row: `y = softmax(scale · x)` over the positions the mask keeps.
    /// `mask` (when given) has `cols` columns and a number of rows `m` that
    /// divides `x.rows`: row `r` of `x` uses mask row `r / (x.rows / m)`;
    /// values > 0.5 keep a position, others drop it (probability exactly 0).
    /// A row with every position dropped is all zeros.
    Softmax {
        /// Input scores.
        x: &'a TensorHandle,
        /// Optional key mask.
        mask: Option<&'a TensorHandle>,
        /// Multiplies the scores first.
        scale: f32,
        /// Output, the shape of `x`.
        y: &'a TensorHandle,
    },
    /// Multi-head scaled dot-product attention over `seqs` sequences of
    /// equal length `S = q.rows / seqs`: `q`, `k`, `v`, `y` are
    /// `seqs·S x hidden`, `hidden = heads · d`. For sequence `b`, head `h`,
    /// query `i`: `y = Σ_j p_j · v_j` with `p = softmax_j(q_i · k_j / √d)`
    /// over the keys `j` that `mask` (`seqs x S`, > 0.5 keeps) keeps; a query
    /// whose every key is masked gets zeros.
    Attention {
        /// Queries.
        q: &'a TensorHandle,
        /// Keys.
        k: &'a TensorHandle,
        /// Values.
        v: &'a TensorHandle,
        /// Optional key mask, one row per sequence.
        mask: Option<&'a TensorHandle>,
        /// Number of sequences in the batch.
        seqs: usize,
        /// Number of heads.
        heads: usize,
        /// Output.
        y: &'a TensorHandle,
    },
    /// `y[i] = x[offset + i · step]` for every row `i` of `y` (e.g. the class
    /// token of every sequence: `offset 0`, `step S`).
    TakeRows {
        /// Input.
        x: &'a TensorHandle,
        /// First row taken.
        offset: usize,
        /// Row step.
        step: usize,
        /// Output, `x`'s columns.
        y: &'a TensorHandle,
    },
}

impl<'a> Op<'a> {
    /// The op's name as reports print it (`linear`, `layer_norm`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Activation {
                kind: Activation::Gelu,
                ..
            } => "gelu",
            Op::Activation {
                kind: Activation::QuickGelu,
                ..
            } => "quick_gelu",
            Op::Add { .. } => "add",
            Op::Softmax { .. } => "softmax",
            Op::Attention { .. } => "attention",
            Op::TakeRows { .. } => "take_rows",
        }
    }

    /// The tensor the op writes.
    pub fn output(&self) -> &'a TensorHandle {
        match *self {
            Op::Linear { y, .. }
            | Op::LayerNorm { y, .. }
            | Op::Activation { y, .. }
            | Op::Add { y, .. }
            | Op::Softmax { y, .. }
            | Op::Attention { y, .. }
            | Op::TakeRows { y, .. } => y,
        }
    }

    /// The tensors the op reads (not the matrix of a `Linear`).
    pub fn inputs(&self) -> Vec<&'a TensorHandle> {
        match *self {
            Op::Linear { x, bias, .. } => std::iter::once(x).chain(bias).collect(),
            Op::LayerNorm { x, gamma, beta, .. } => vec![x, gamma, beta],
            Op::Activation { x, .. } | Op::TakeRows { x, .. } => vec![x],
            Op::Add { a, b, .. } => vec![a, b],
            Op::Softmax { x, mask, .. } => std::iter::once(x).chain(mask).collect(),
            Op::Attention { q, k, v, mask, .. } => [q, k, v].into_iter().chain(mask).collect(),
        }
    }

    /// Floating-point operations the op does (a multiply-add counts 2), for
    /// GFLOP/s figures.
    pub fn flops(&self) -> f64 {
        match *self {
            Op::Linear { x, w, .. } => 2.0 * x.rows() as f64 * w.rows() as f64 * w.cols() as f64,
            Op::Attention { q, seqs, .. } => {
                let s = (q.rows() / seqs.max(1)) as f64;
                // Q·Kᵀ and P·V: 2 · 2 · S² · hidden per sequence.
                4.0 * seqs as f64 * s * s * q.cols() as f64
            }
            Op::LayerNorm { x, .. } => 8.0 * x.len() as f64,
            Op::Activation { x, .. } | Op::Softmax { x, .. } => 8.0 * x.len() as f64,
            Op::Add { a, .. } => a.len() as f64,
            Op::TakeRows { .. } => 0.0,
        }
    }

    /// Checks the op for `backend`: ownership of every handle, no output
    /// that is also an input, and the shapes each variant documents.
    pub fn check(&self, backend: BackendKind) -> Result<(), BackendError> {
        let name = self.name();
        let bad = |msg: String| BackendError::Invalid(format!("{name}: {msg}"));
        let y = self.output();
        for t in self.inputs().into_iter().chain([y]) {
            if t.backend() != backend {
                return Err(bad(format!(
                    "tensor {} belongs to the {} backend, not {backend}",
                    t.id(),
                    t.backend()
                )));
            }
        }
        if self.inputs().iter().any(|t| t.id() == y.id()) {
            return Err(bad(format!(
                "output tensor {} is also an input (ops do not work in place)",
                y.id()
            )));
        }
        let same = |what: &str, t: &TensorHandle, shape: (usize, usize)| {
            if t.shape() == shape {
                Ok(())
            } else {
                Err(bad(format!(
                    "{what} is {}x{}, expected {}x{}",
                    t.rows(),
                    t.cols(),
                    shape.0,
                    shape.1
                )))
            }
        };
        match *self {
            Op::Linear { x, w, bias, y } => {
                if w.backend() != backend {
                    return Err(bad(format!(
                        "matrix {} belongs to the {} backend, not {backend}",
                        w.id(),
                        w.backend()
                    )));
                }
                if x.rows() == 0 {
                    return Err(bad("input has no rows".into()));
                }
                same("input", x, (x.rows(), w.cols()))?;
                same("output", y, (x.rows(), w.rows()))?;
                if let Some(b) = bias {
                    same("bias", b, (1, w.rows()))?;
                }
            }
            Op::LayerNorm {
                x,
                gamma,
                beta,
                eps,
                y,
            } => {
                same("output", y, x.shape())?;
                same("gamma", gamma, (1, x.cols()))?;
                same("beta", beta, (1, x.cols()))?;
                if !(eps.is_finite() && eps >= 0.0) {
                    return Err(bad(format!("eps {eps} is not a finite value >= 0")));
                }
            }
            Op::Activation { x, y, .. } => same("output", y, x.shape())?,
            Op::Add { a, b, y } => {
                same("output", y, a.shape())?;
                if b.cols() != a.cols() || b.rows() == 0 || a.rows() % b.rows() != 0 {
                    return Err(bad(format!(
                        "b is {}x{}; it needs {} columns and a row count dividing {}",
                        b.rows(),
                        b.cols(),
                        a.cols(),
                        a.rows()
                    )));
                }
            }
            Op::Softmax { x, mask, scale, y } => {
                same("output", y, x.shape())?;
                if !scale.is_finite() {
                    return Err(bad(format!("scale {scale} is not finite")));
                }
                if let Some(m) = mask {
                    if m.cols() != x.cols() || m.rows() == 0 || x.rows() % m.rows() != 0 {
                        return Err(bad(format!(
                            "mask is {}x{}; it needs {} columns and a row count dividing {}",
                            m.rows(),
                            m.cols(),
                            x.cols(),
                            x.rows()
                        )));
                    }
                }
            }
            Op::Attention {
                q,
                k,
                v,
                mask,
                seqs,
                heads,
                y,
            } => {
                if seqs == 0 || q.rows() == 0 || q.rows() % seqs != 0 {
                    return Err(bad(format!(
                        "{} query rows do not split into {seqs} sequences",
                        q.rows()
                    )));
                }
                if heads == 0 || q.cols() % heads != 0 {
                    return Err(bad(format!(
                        "hidden size {} does not split into {heads} heads",
                        q.cols()
                    )));
                }
                same("keys", k, q.shape())?;
                same("values", v, q.shape())?;
                same("output", y, q.shape())?;
                if let Some(m) = mask {
                    same("mask", m, (seqs, q.rows() / seqs))?;
                }
            }
            Op::TakeRows { x, offset, step, y } => {
                if y.cols() != x.cols() {
                    return Err(bad(format!(
                        "output has {} columns, input {}",
                        y.cols(),
                        x.cols()
                    )));
                }
                if y.rows() > 0 {
                    let last = (y.rows() - 1)
                        .checked_mul(step)
                        .and_then(|v| v.checked_add(offset));
                    if last.is_none_or(|l| l >= x.rows()) {
                        return Err(bad(format!(
                            "rows {offset} + i·{step} for i < {} run past the input's {} rows",
                            y.rows(),
                            x.rows()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Device time of a list of ops run once with
/// [`Backend::run_timed`](super::Backend::run_timed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpTimings {
    /// Seconds per op, in the order given.
    pub per_op_s: Vec<f64>,
    /// Seconds from the start of the first op to the end of the last.
    pub total_s: f64,
    /// Where the times came from.
    pub source: super::TimingSource,
}
