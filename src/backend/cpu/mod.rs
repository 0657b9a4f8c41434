//! The CPU backend: rayon threads and run-time-selected SIMD kernels working
//! directly on the packed data.
//!
//! - [`kernel`]: which code path runs (AVX-512 + VNNI, AVX2 + FMA, scalar),
//!   chosen at run time, forced with `QUANTSCOPE_CPU_KERNEL`;
//! - GEMV (batch 1): streams the packed weights once, unpacking in registers;
//!   q8 / q4 / lut4 use int8 activations and integer dot products;
//! - GEMM (batch > 1): cache-blocked, a dequantized weight panel reused across
//!   the batch by a register-tiled f32 FMA micro-kernel;
//! - [`bandwidth`]: the read-bandwidth and FMA-rate probes (the floors).

mod act;
pub mod bandwidth;
mod gemm;
mod gemv;
pub mod kernel;
mod matmul;
mod sparse;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::{
    Backend, BackendError, BackendKind, Bandwidth, DeviceInfo, KernelTiming, LevelAssignment,
    MatrixHandle, MemoryReport, RtnSpec, TimingSource,
};
use crate::format::{nearest_level, pack_q4, pack_q8, FormatKind, Matrix, Packed, QuantizedMatrix};

pub use kernel::{KernelPath, KERNEL_ENV};
pub use matmul::{
    matmul, matmul_into, matmul_opts, matmul_outliers_into, matmul_with, GemvActivations,
};

/// Host CPU backend.
pub struct CpuBackend {
    gemv_act: GemvActivations,
    matrices: Mutex<HashMap<u64, Arc<QuantizedMatrix>>>,
    next_id: AtomicU64,
    live: AtomicU64,
    peak: AtomicU64,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend using rayon's global thread pool and the fast GEMV
    /// (int8 activations for q8 / q4 / lut4, see [`GemvActivations`]).
    pub fn new() -> Self {
        Self::with_gemv_activations(GemvActivations::Int8)
    }

    /// A backend whose every matmul keeps f32 activations: exact up to f32
    /// rounding, the choice for a reference.
    pub fn exact() -> Self {
        Self::with_gemv_activations(GemvActivations::F32)
    }

    /// A backend with an explicit choice of GEMV activations.
    pub fn with_gemv_activations(gemv_act: GemvActivations) -> Self {
        CpuBackend {
            gemv_act,
            matrices: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            live: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    fn get(&self, h: &MatrixHandle) -> Result<Arc<QuantizedMatrix>, BackendError> {
        super::lookup_handle(&self.matrices, h, BackendKind::Cpu)
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.matrices
            .lock()
            .map_err(|_| poisoned())?
            .insert(id, Arc::new(m.clone()));
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
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

    fn matmul(&self, h: &MatrixHandle, x: &[f32], batch: usize) -> Result<Vec<f32>, BackendError> {
        h.check_input(x, batch)?;
        let m = self.get(h)?;
        let mut y = vec![0.0f32; batch * m.rows()];
        matmul_opts(KernelPath::selected(), self.gemv_act, &m, x, batch, &mut y)?;
        Ok(y)
    }

    fn free(&self, h: MatrixHandle) -> Result<(), BackendError> {
        let removed = self
            .matrices
            .lock()
            .map_err(|_| poisoned())?
            .remove(&h.id());
        match removed {
            Some(_) => {
                self.live.fetch_sub(h.bytes(), Ordering::Relaxed);
                Ok(())
            }
            None => Err(BackendError::Invalid(format!(
                "unknown or freed matrix {}",
                h.id()
            ))),
        }
    }

    fn memory(&self) -> MemoryReport {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        MemoryReport {
            live_bytes: self.live.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
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
