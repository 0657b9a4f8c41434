//! The CPU backend: rayon threads and run-time-selected SIMD kernels working
//! directly on the packed data.
//!
//! - [`kernel`]: which code path runs (AVX-512 + VNNI, AVX2 + FMA, scalar),
//!   chosen at run time, forced with `QUANTSCOPE_CPU_KERNEL`;
//! - GEMV (batch below `GEMM_MIN_BATCH`): streams the packed weights once,
//!   unpacking in registers, each pass of rows for every activation row;
//!   q8 / q4 / lut4 use int8 activations and integer dot products;
//! - GEMM (from `GEMM_MIN_BATCH` rows): cache-blocked, a dequantized weight
//!   panel reused across the batch by a register-tiled micro-kernel (f32
//!   FMA; int8 dot products for q4 / lut4 on AVX-512 VNNI);
//! - [`bandwidth`]: the read-bandwidth and FMA-rate probes (the floors).

mod act;
pub mod bandwidth;
mod gemm;
mod gemv;
pub mod kernel;
mod matmul;
pub mod ops;
mod sparse;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::table::{HandleTable, MemCounter};
use super::{
    check_ops, check_tensor_init, Backend, BackendError, BackendKind, Bandwidth, DeviceInfo,
    KernelTiming, LevelAssignment, MatrixHandle, MemoryReport, Op, OpTimings, RtnSpec,
    TensorHandle, TensorInit, TimingSource,
};
use crate::format::{nearest_level, pack_q4, pack_q8, FormatKind, Matrix, Packed, QuantizedMatrix};

pub(crate) use act::int8_rounded_into;
pub use kernel::{KernelPath, KERNEL_ENV};
pub use matmul::{
    matmul, matmul_bias, matmul_into, matmul_opts, matmul_outliers_into, matmul_with,
    uses_int8_activations, GemvActivations,
};

/// Host CPU backend.
pub struct CpuBackend {
    gemv_act: GemvActivations,
    matrices: HandleTable<QuantizedMatrix>,
    tensors: HandleTable<RwLock<Vec<f32>>>,
    mem: MemCounter,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend using rayon's global thread pool, the fast GEMV (int8
    /// activations for q8 / q4 / lut4) and the fast q4 GEMM (int8
    /// activations), see [`GemvActivations`].
    pub fn new() -> Self {
        Self::with_gemv_activations(GemvActivations::Int8)
    }

    /// A backend whose every matmul keeps f32 activations: exact up to f32
    /// rounding, the choice for a reference (W8A8 matrices still round
    /// theirs, as their definition says).
    pub fn exact() -> Self {
        Self::with_gemv_activations(GemvActivations::F32)
    }

    /// A backend with an explicit choice of GEMV activations.
    pub fn with_gemv_activations(gemv_act: GemvActivations) -> Self {
        CpuBackend {
            gemv_act,
            matrices: HandleTable::new(BackendKind::Cpu),
            tensors: HandleTable::new(BackendKind::Cpu),
            mem: MemCounter::default(),
        }
    }

    fn get(&self, h: &MatrixHandle) -> Result<Arc<QuantizedMatrix>, BackendError> {
        self.matrices.get(h)
    }

    fn get_tensor(&self, t: &TensorHandle) -> Result<Arc<RwLock<Vec<f32>>>, BackendError> {
        self.tensors.get(t)
    }

    /// Runs one checked op.
    fn run_op(&self, op: &Op<'_>) -> Result<(), BackendError> {
        // Inputs are read-locked, the output write-locked: `Op::check`
        // refused an output that is also an input, so this cannot deadlock.
        let out = self.get_tensor(op.output())?;
        let mut inputs = Vec::new();
        for t in op.inputs() {
            inputs.push(self.get_tensor(t)?);
        }
        let guards = inputs
            .iter()
            .map(|t| t.read().map_err(|_| poisoned()))
            .collect::<Result<Vec<_>, _>>()?;
        let ins: Vec<&[f32]> = guards.iter().map(|g| g.as_slice()).collect();
        let mut y = out.write().map_err(|_| poisoned())?;
        let y = y.as_mut_slice();
        match *op {
            Op::Linear { x, w, bias, .. } => {
                let m = self.get(w)?;
                matmul_bias(
                    KernelPath::selected(),
                    self.gemv_act,
                    &m,
                    ins[0],
                    x.rows(),
                    bias.map(|_| ins[1]),
                    y,
                )?;
            }
            Op::LayerNorm { x, eps, .. } => {
                ops::layer_norm(ins[0], ins[1], ins[2], eps, x.cols(), y)
            }
            Op::Activation { kind, .. } => ops::activation(kind, ins[0], y),
            Op::Add { a, .. } => ops::add(ins[0], ins[1], a.cols(), y),
            Op::Softmax { x, mask, scale, .. } => {
                ops::softmax(ins[0], mask.map(|_| ins[1]), scale, x.cols(), y)
            }
            Op::Attention {
                q,
                mask,
                seqs,
                heads,
                ..
            } => ops::attention(
                ins[0],
                ins[1],
                ins[2],
                mask.map(|_| ins[3]),
                seqs,
                heads,
                q.cols(),
                y,
            ),
            Op::TakeRows {
                x, offset, step, ..
            } => ops::take_rows(ins[0], offset, step, x.cols(), y),
        }
        Ok(())
    }
}

/// Runs `f` on a thread of rayon's pool (the calling thread when it is one).
///
/// A list of ops is many short parallel loops. Issued from a thread outside
/// the pool, each one is a hand-off: the job goes into the pool's queue, a
/// sleeping worker is woken, the caller sleeps until the last task is done
/// and is woken in turn, two futex round trips per op. Measured on the
/// 2-core VM (MiniLM-L6, 128 tokens, ~72 ops), that was 20-30 µs per op:
/// an add of 49 k values took 32 µs. Run from a worker, the loop's own
/// thread takes a share of every op and the other worker, still spinning
/// from the last op, steals the rest.
///
/// The price: a worker waiting inside one list may take up another list
/// submitted from another thread, on the same stack. Two lists run at once
/// on one backend must therefore not share a tensor that either writes (the
/// second would wait for a lock the first, below it, holds); the model
/// layer runs one forward pass at a time per model (its scratch lock,
/// taken before `run`).
fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

fn poisoned() -> BackendError {
    BackendError::Device {
        backend: BackendKind::Cpu,
        message: "internal lock poisoned by an earlier panic".into(),
    }
}

/// CPU features worth reporting (those the kernels may use).
pub fn cpu_features() -> Vec<String> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2".into());
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma".into());
        }
        if std::arch::is_x86_feature_detected!("f16c") {
            f.push("f16c".into());
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f".into());
        }
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            f.push("avx512vnni".into());
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        f.push("neon".into());
    }
    f.push(format!("kernel={}", KernelPath::selected()));
    f.push(format!("threads={}", rayon::current_num_threads()));
    f
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn info(&self) -> DeviceInfo {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        sys.refresh_cpu_all();
        let name = sys
            .cpus()
            .first()
            .map(|c| c.brand().trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        DeviceInfo {
            backend: BackendKind::Cpu,
            name,
            device_type: "cpu".into(),
            driver: format!("{} cores", sys.cpus().len()),
            memory_total_bytes: Some(sys.total_memory()),
            compute_capability: None,
            features: cpu_features(),
        }
    }

    fn upload(&self, m: &QuantizedMatrix) -> Result<MatrixHandle, BackendError> {
        let bytes = m.storage_bytes().total() as u64;
        let id = self.matrices.insert(m.clone())?;
        self.mem.add(bytes);
        Ok(MatrixHandle::new(id, BackendKind::Cpu, m, bytes))
    }

    fn dequantize(&self, h: &MatrixHandle) -> Result<Vec<f32>, BackendError> {
        let m = self.get(h)?;
        let cols = m.cols();
        let mut out = vec![0.0f32; m.rows() * cols];
        out.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, row)| m.dequantize_row(r, row));
        Ok(out)
    }

    fn free(&self, h: MatrixHandle) -> Result<(), BackendError> {
        self.matrices.remove(&h)?;
        self.mem.sub(h.bytes());
        Ok(())
    }

    fn tensor(
        &self,
        rows: usize,
        cols: usize,
        init: TensorInit<'_>,
    ) -> Result<TensorHandle, BackendError> {
        check_tensor_init(rows, cols, &init)?;
        let n = rows * cols;
        let data = match init {
            TensorInit::Zeros => vec![0.0f32; n],
            TensorInit::Poison => vec![f32::NAN; n],
            TensorInit::Data(d) => d.to_vec(),
        };
        let id = self.tensors.insert(RwLock::new(data))?;
        self.mem.add(4 * n as u64);
        Ok(TensorHandle::new(id, BackendKind::Cpu, rows, cols))
    }

    fn write_tensor(&self, t: &TensorHandle, data: &[f32]) -> Result<(), BackendError> {
        check_tensor_init(t.rows(), t.cols(), &TensorInit::Data(data))?;
        let v = self.get_tensor(t)?;
        v.write().map_err(|_| poisoned())?.copy_from_slice(data);
        Ok(())
    }

    fn read(&self, t: &TensorHandle) -> Result<Vec<f32>, BackendError> {
        let v = self.get_tensor(t)?;
        let data = v.read().map_err(|_| poisoned())?.clone();
        Ok(data)
    }

    fn free_tensor(&self, t: TensorHandle) -> Result<(), BackendError> {
        self.tensors.remove(&t)?;
        self.mem.sub(4 * t.len() as u64);
        Ok(())
    }

    fn supports(&self, _op: &Op<'_>) -> bool {
        true
    }

    fn run(&self, ops: &[Op<'_>]) -> Result<(), BackendError> {
        check_ops(self, ops)?;
        on_worker(|| ops.iter().try_for_each(|op| self.run_op(op)))
    }

    fn run_timed(&self, ops: &[Op<'_>]) -> Result<OpTimings, BackendError> {
        check_ops(self, ops)?;
        on_worker(|| {
            let start = Instant::now();
            let mut per_op_s = Vec::with_capacity(ops.len());
            for op in ops {
                let t = Instant::now();
                self.run_op(op)?;
                per_op_s.push(t.elapsed().as_secs_f64());
            }
            Ok(OpTimings {
                per_op_s,
                total_s: start.elapsed().as_secs_f64(),
                source: TimingSource::WallClock,
            })
        })
    }

    fn memory(&self) -> MemoryReport {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        MemoryReport {
            live_bytes: self.mem.live(),
            peak_bytes: self.mem.peak(),
            reserved_bytes: None,
            device_used_bytes: Some(sys.used_memory()),
            device_total_bytes: Some(sys.total_memory()),
        }
    }

    fn quantize(&self, w: &Matrix, spec: RtnSpec) -> Result<QuantizedMatrix, BackendError> {
        match spec.kind {
            FormatKind::Q8 => Ok(pack_q8(w, spec.group)?),
            FormatKind::Q4 => Ok(pack_q4(w, spec.group)?),
            other => Err(BackendError::Unsupported {
                backend: BackendKind::Cpu,
                what: format!("round-to-nearest quantization to {other}"),
            }),
        }
    }

    fn assign_levels(
        &self,
        values: &MatrixHandle,
        levels: &[f32],
        want_codes: bool,
    ) -> Result<LevelAssignment, BackendError> {
        let m = self.get(values)?;
        let Packed::F32(data) = m.packed() else {
            return Err(BackendError::Invalid(
                "assign_levels needs an f32 matrix of values".into(),
            ));
        };
        check_levels(levels)?;
        let (rows, cols) = (m.rows(), m.cols());
        let stride = m.row_stride_bytes() / 4;
        let k = levels.len();
        let mut codes = if want_codes {
            vec![0u8; rows * cols]
        } else {
            Vec::new()
        };
        // Work in chunks of whole rows so the padded layout is respected.
        let chunk_rows = (65536 / cols).max(1);
        let partials: Vec<(Vec<f64>, Vec<u64>)> = if want_codes {
            codes
                .par_chunks_mut(chunk_rows * cols)
                .enumerate()
                .map(|(i, out)| {
                    let n = out.len() / cols;
                    assign_rows(data, stride, cols, i * chunk_rows, n, levels, Some(out))
                })
                .collect()
        } else {
            (0..rows.div_ceil(chunk_rows))
                .into_par_iter()
                .map(|i| {
                    let n = chunk_rows.min(rows - i * chunk_rows);
                    assign_rows(data, stride, cols, i * chunk_rows, n, levels, None)
                })
                .collect()
        };
        let mut sums = vec![0.0f64; k];
        let mut counts = vec![0u64; k];
        for (s, c) in partials {
            for j in 0..k {
                sums[j] += s[j];
                counts[j] += c[j];
            }
        }
        Ok(LevelAssignment {
            codes,
            sums,
            counts,
        })
    }

    fn time_matmul(
        &self,
        h: &MatrixHandle,
        batch: usize,
        runs: usize,
    ) -> Result<KernelTiming, BackendError> {
        let m = self.get(h)?;
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0x5eed);
        let x: Vec<f32> = (0..batch * m.cols())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        h.check_input(&x, batch)?;
        let mut y = vec![0.0f32; batch * m.rows()];
        let path = KernelPath::selected();
        matmul_opts(path, self.gemv_act, &m, &x, batch, &mut y)?;
        // As the GPU backends flush their L2: before each run, read a buffer
        // of twice the last-level cache, so the weights come from DRAM (a
        // 4096x14336 q4 matrix, 33 MB, otherwise sits half in a 32 MiB L3).
        let flush = bandwidth::ReadProbe::new(2 * bandwidth::llc_bytes().unwrap_or(32 << 20));
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            flush.read_once();
            let t = Instant::now();
            matmul_opts(path, self.gemv_act, &m, &x, batch, &mut y)?;
            samples.push(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&y);
        Ok(KernelTiming {
            samples_s: samples,
            source: TimingSource::WallClock,
        })
    }

    /// Reads at least [`bandwidth::probe_bytes`] (1 GiB or 8x the LLC,
    /// whichever is larger) so the figure is a DRAM figure whatever `bytes` is.
    fn measure_bandwidth(&self, bytes: usize) -> Result<Bandwidth, BackendError> {
        Ok(bandwidth::measure_read_bandwidth(
            bytes.max(bandwidth::probe_bytes()),
        ))
    }

    fn measure_flops(&self) -> Result<f64, BackendError> {
        Ok(bandwidth::measure_fma_rate())
    }
}

/// Checks a level table: 1..=256 finite values, ascending.
pub fn check_levels(levels: &[f32]) -> Result<(), BackendError> {
    if levels.is_empty() || levels.len() > 256 {
        return Err(BackendError::Invalid(format!(
            "need 1..=256 levels, got {}",
            levels.len()
        )));
    }
    if levels.iter().any(|v| !v.is_finite()) || levels.windows(2).any(|w| w[0] > w[1]) {
        return Err(BackendError::Invalid(
            "levels must be finite and ascending".into(),
        ));
    }
    Ok(())
}

/// Assigns rows `row0..row0 + nrows` to levels; codes go to `out` when given.
fn assign_rows(
    data: &[f32],
    stride: usize,
    cols: usize,
    row0: usize,
    nrows: usize,
    levels: &[f32],
    mut out: Option<&mut [u8]>,
) -> (Vec<f64>, Vec<u64>) {
    let k = levels.len();
    let mut sums = vec![0.0f64; k];
    let mut counts = vec![0u64; k];
    // Up to 16 levels: the index of the nearest level is the number of
    // midpoints strictly below the value (ties go to the lower level, as in
    // `nearest_level`), counted without branches so the compiler vectorizes
    // it across a block of values.
    let mids: Vec<f32> = levels.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut idx = [0u8; 256];
    for r in 0..nrows {
        let row = &data[(row0 + r) * stride..][..cols];
        for (b, block) in row.chunks(256).enumerate() {
            let idx = &mut idx[..block.len()];
            if k <= 16 {
                idx.fill(0);
                for &m in &mids {
                    for (i, &v) in idx.iter_mut().zip(block) {
                        *i += (v > m) as u8;
                    }
                }
            } else {
                for (i, &v) in idx.iter_mut().zip(block) {
                    *i = nearest_level(levels, v) as u8;
                }
            }
            for (&j, &v) in idx.iter().zip(block) {
                sums[j as usize] += v as f64;
                counts[j as usize] += 1;
            }
            if let Some(o) = out.as_deref_mut() {
                o[r * cols + b * 256..][..block.len()].copy_from_slice(idx);
            }
        }
    }
    (sums, counts)
}
