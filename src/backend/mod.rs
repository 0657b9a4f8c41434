//! One small interface over every device that runs the packed formats.
//!
//! Like ggml-backend, a [`Backend`] knows a handful of verbs: describe the
//! device, upload a packed matrix, dequantize it, multiply by it, quantize on
//! the device, assign values to levels, time a kernel, free, and report
//! memory. A new device is one new module implementing this trait; devices
//! compiled out (cargo features `wgpu`, `cuda`) answer "unavailable" through
//! [`open`] instead of `#[cfg]` spread through callers.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod ops;
pub mod params;
mod plan;
mod table;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use ops::{Activation, Op, OpTimings, TensorHandle, TensorInit};
pub use params::MatmulParams;
pub use plan::{x_stride, GEMM_MIN_BATCH};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::format::{FormatError, FormatKind, GroupSize, Matrix, QuantizedMatrix};

/// Which implementation a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Rust on the host CPU (rayon, SIMD).
    Cpu,
    /// WGSL compute shaders through wgpu.
    Wgpu,
    /// CUDA kernels through NVRTC and cudarc.
    Cuda,
}

impl BackendKind {
    /// Every kind, in the order `devices` lists them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda];

    /// `cpu`, `wgpu` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether support for this kind was compiled in.
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "unknown backend '{s}' (expected cpu, wgpu or cuda)"
                ))
            })
    }
}

/// Errors of every backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run here; `reason` says why (and how to fix it).
    #[error("{backend} unavailable: {reason}")]
    Unavailable {
        /// Which backend.
        backend: BackendKind,
        /// Why, with a hint where one helps.
        reason: String,
    },
    /// The backend cannot do this (format, feature, size).
    #[error("{backend} does not support {what}")]
    Unsupported {
        /// Which backend.
        backend: BackendKind,
        /// What was asked.
        what: String,
    },
    /// Arguments that do not fit (shapes, lengths, handles).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A buffer larger than a device limit.
    #[error(
        "{backend}: {what} needs {bytes} bytes, above the device limit {limit_name} = {limit}"
    )]
    TooLarge {
        /// Which backend.
        backend: BackendKind,
        /// Which buffer.
        what: String,
        /// Bytes needed.
        bytes: u64,
        /// The limit's name.
        limit_name: &'static str,
        /// The limit's value.
        limit: u64,
    },
    /// An error reported by the device, driver or kernel compiler.
    #[error("{backend} device error: {message}")]
    Device {
        /// Which backend.
        backend: BackendKind,
        /// The driver's or compiler's text.
        message: String,
    },
    /// A packed matrix that breaks its layout.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// What a device is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Which backend drives it.
    pub backend: BackendKind,
    /// Device name as the driver reports it.
    pub name: String,
    /// `cpu`, `discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `software (cpu)`, ...
    pub device_type: String,
    /// Driver or API description (e.g. `Vulkan 1.3, Mesa 24`).
    pub driver: String,
    /// Total device memory in bytes, where known.
    pub memory_total_bytes: Option<u64>,
    /// CUDA compute capability (major, minor), for NVIDIA devices.
    pub compute_capability: Option<(u32, u32)>,
    /// Notable features (`shader-f16`, `subgroups`, `timestamp-query`, `avx512vnni`, ...).
    pub features: Vec<String>,
}

/// A matrix living on a backend. Opaque; pass it back to the backend that made it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MatrixHandle {
    id: u64,
    backend: BackendKind,
    rows: usize,
    cols: usize,
    kind: FormatKind,
    bytes: u64,
}

impl MatrixHandle {
    /// Made by backends when a matrix is uploaded.
    pub fn new(id: u64, backend: BackendKind, m: &QuantizedMatrix, bytes: u64) -> MatrixHandle {
        MatrixHandle {
            id,
            backend,
            rows: m.rows(),
            cols: m.cols(),
            kind: m.kind(),
            bytes,
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
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Format of the dense part.
    pub fn kind(&self) -> FormatKind {
        self.kind
    }
    /// Device bytes held by this matrix.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Checks that `x` holds `batch` rows of `cols` values for this matrix.
    pub fn check_input(&self, x: &[f32], batch: usize) -> Result<(), BackendError> {
        if batch == 0 {
            return Err(BackendError::Invalid("batch must be at least 1".into()));
        }
        if x.len() != batch * self.cols {
            return Err(BackendError::Invalid(format!(
                "input has {} values, expected batch {batch} x {} columns = {}",
                x.len(),
                self.cols,
                batch * self.cols
            )));
        }
        Ok(())
    }
}

/// Checks the arguments of [`Backend::assign_levels`]: an f32 matrix of
/// values and 1..=256 finite, ascending levels.
pub fn check_assign_inputs(values: &MatrixHandle, levels: &[f32]) -> Result<(), BackendError> {
    if values.kind() != FormatKind::F32 {
        return Err(BackendError::Invalid(
            "assign_levels needs an f32 matrix of values".into(),
        ));
    }
    cpu::check_levels(levels)
}

/// Checks a new tensor's first contents against its shape.
pub fn check_tensor_init(
    rows: usize,
    cols: usize,
    init: &TensorInit<'_>,
) -> Result<(), BackendError> {
    let n = rows
        .checked_mul(cols)
        .filter(|n| n.checked_mul(4).is_some())
        .ok_or_else(|| BackendError::Invalid(format!("tensor {rows}x{cols} is too large")))?;
    if let TensorInit::Data(d) = init {
        if d.len() != n {
            return Err(BackendError::Invalid(format!(
                "tensor {rows}x{cols} needs {n} values, got {}",
                d.len()
            )));
        }
    }
    Ok(())
}

/// Checks every op of a list for `backend` and that it [`Backend::supports`]
/// each, before anything runs.
pub fn check_ops(backend: &dyn Backend, ops: &[Op<'_>]) -> Result<(), BackendError> {
    for op in ops {
        op.check(backend.kind())?;
        if !backend.supports(op) {
            return Err(BackendError::Unsupported {
                backend: backend.kind(),
                what: format!("the {} op at these sizes", op.name()),
            });
        }
    }
    Ok(())
}

/// Device memory as the backend sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Bytes of buffers the engine holds now.
    pub live_bytes: u64,
    /// Highest `live_bytes` since the backend was opened.
    pub peak_bytes: u64,
    /// Bytes the allocator has reserved from the driver, where it says.
    pub reserved_bytes: Option<u64>,
    /// Device memory in use by everything (driver view), where known.
    pub device_used_bytes: Option<u64>,
    /// Device memory in total, where known.
    pub device_total_bytes: Option<u64>,
}

impl MemoryReport {
    /// Fraction of reserved memory that is not allocated (0 = none wasted).
    pub fn fragmentation(&self) -> Option<f64> {
        let r = self.reserved_bytes?;
        if r == 0 {
            return Some(0.0);
        }
        Some(1.0 - (self.live_bytes.min(r) as f64 / r as f64))
    }
}

/// Where kernel times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimingSource {
    /// GPU timestamp queries written by the device.
    DeviceTimestamp,
    /// CUDA events recorded on the stream.
    CudaEvent,
    /// Host wall clock around submit and wait.
    WallClock,
}

/// Repeated timings of one kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelTiming {
    /// Seconds per run, in run order.
    pub samples_s: Vec<f64>,
    /// Where they came from.
    pub source: TimingSource,
}

impl KernelTiming {
    /// Median seconds per run (NaN when there are no samples).
    pub fn median_s(&self) -> f64 {
        let mut v = self.samples_s.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        }
    }
}

/// What a device quantize kernel produces: q8 or q4, round to nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtnSpec {
    /// [`FormatKind::Q8`] or [`FormatKind::Q4`].
    pub kind: FormatKind,
    /// Group size.
    pub group: GroupSize,
}

/// Result of assigning values to their nearest level (Lloyd-Max step).
#[derive(Debug, Clone, PartialEq)]
pub struct LevelAssignment {
    /// Index of the nearest level per value (ties to the lower index); empty
    /// unless codes were asked for.
    pub codes: Vec<u8>,
    /// Sum of the values assigned to each level.
    pub sums: Vec<f64>,
    /// Number of values assigned to each level.
    pub counts: Vec<u64>,
}

/// The verbs every device implements.
pub trait Backend: Send + Sync {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;

    /// What the device is.
    fn info(&self) -> DeviceInfo;

    /// Copies a packed matrix to the device.
    fn upload(&self, m: &QuantizedMatrix) -> Result<MatrixHandle, BackendError>;

    /// Dequantizes a matrix on the device: `rows x cols` effective weights, row-major.
    fn dequantize(&self, h: &MatrixHandle) -> Result<Vec<f32>, BackendError>;

    /// `Y = X · Wᵀ` with `X` of `batch x cols` and `Y` of `batch x rows`,
    /// row-major: X uploaded as a tensor, one [`Op::Linear`], Y read back.
    fn matmul(&self, h: &MatrixHandle, x: &[f32], batch: usize) -> Result<Vec<f32>, BackendError> {
        h.check_input(x, batch)?;
        let xt = self.tensor(batch, h.cols(), TensorInit::Data(x))?;
        let yt = match self.tensor(batch, h.rows(), TensorInit::Poison) {
            Ok(t) => t,
            Err(e) => {
                let _ = self.free_tensor(xt);
                return Err(e);
            }
        };
        let op = Op::Linear {
            x: &xt,
            w: h,
            bias: None,
            y: &yt,
        };
        let y = self.run(&[op]).and_then(|()| self.read(&yt));
        let freed = self.free_tensor(xt).and(self.free_tensor(yt));
        let y = y?;
        freed?;
        Ok(y)
    }

    /// Releases a matrix.
    fn free(&self, h: MatrixHandle) -> Result<(), BackendError>;

    /// A new `rows x cols` f32 tensor on the device (see [`TensorInit`]).
    fn tensor(
        &self,
        rows: usize,
        cols: usize,
        init: TensorInit<'_>,
    ) -> Result<TensorHandle, BackendError>;

    /// Replaces a tensor's values with `data` (`rows * cols`, row-major).
    fn write_tensor(&self, t: &TensorHandle, data: &[f32]) -> Result<(), BackendError>;

    /// A tensor's values, `rows * cols` row-major, after every op submitted
    /// before has finished.
    fn read(&self, t: &TensorHandle) -> Result<Vec<f32>, BackendError>;

    /// Releases a tensor.
    fn free_tensor(&self, t: TensorHandle) -> Result<(), BackendError>;

    /// Whether this backend can run `op` (its kind and its sizes). The
    /// caller reports an op it cannot run as "n/a"; nothing falls back.
    fn supports(&self, op: &Op<'_>) -> bool;

    /// Runs `ops` in order, in one command buffer / stream where the device
    /// has one. Each op is checked ([`Op::check`]) and [`Self::supports`]ed
    /// before anything runs.
    fn run(&self, ops: &[Op<'_>]) -> Result<(), BackendError>;

    /// Runs `ops` like [`Self::run`] and returns the device time of each op
    /// from the device's own clock where it has one (timestamps, events).
    fn run_timed(&self, ops: &[Op<'_>]) -> Result<OpTimings, BackendError>;

    /// Memory in use.
    fn memory(&self) -> MemoryReport;

    /// Round-to-nearest q8 / q4 quantization computed on the device, producing
    /// the same bytes as `format::pack_q8` / `format::pack_q4`.
    fn quantize(&self, w: &Matrix, spec: RtnSpec) -> Result<QuantizedMatrix, BackendError>;

    /// Assigns every value of an uploaded f32 matrix to its nearest level
    /// (`levels` ascending), returning per-level sums and counts, and the codes
    /// when `want_codes`.
    fn assign_levels(
        &self,
        values: &MatrixHandle,
        levels: &[f32],
        want_codes: bool,
    ) -> Result<LevelAssignment, BackendError>;

    /// Times `runs` matmuls with a device-resident random input of `batch`
    /// rows, after warm-up, using the device's own clock where it has one.
    fn time_matmul(
        &self,
        h: &MatrixHandle,
        batch: usize,
        runs: usize,
    ) -> Result<KernelTiming, BackendError>;

    /// Measured memory bandwidth in bytes per second: a device-to-device copy
    /// of a buffer of `bytes` bytes on a GPU (bytes read + bytes written per
    /// second), a multi-threaded read of a buffer larger than the last-level
    /// cache on the CPU. This is the floor every memory-bound kernel is
    /// compared with.
    fn measure_bandwidth(&self, bytes: usize) -> Result<Bandwidth, BackendError>;

    /// Measured f32 multiply-add rate in FLOP/s (2 per FMA) from a kernel that
    /// does nothing else: the floor for compute-bound kernels.
    fn measure_flops(&self) -> Result<f64, BackendError>;
}

/// A bandwidth measurement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Bytes per second.
    pub bytes_per_s: f64,
    /// Bytes moved per run (read + write).
    pub bytes_moved: u64,
    /// Median seconds per run.
    pub seconds: f64,
    /// Where the time came from.
    pub source: TimingSource,
    /// What was measured, e.g. `copy_buffer_to_buffer 256 MiB`.
    pub method: &'static str,
}

/// A backend compiled into this build and whether it can run here.
pub struct BackendStatus {
    /// Which backend.
    pub kind: BackendKind,
    /// The opened backend, or why it cannot be opened.
    pub backend: Result<Arc<dyn Backend>, BackendError>,
}

/// Opens one backend with its default device (see each backend for the
/// environment variables that choose another).
pub fn open(kind: BackendKind) -> Result<Arc<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Cpu => Ok(Arc::new(cpu::CpuBackend::new())),
        BackendKind::Wgpu => open_wgpu(),
        BackendKind::Cuda => open_cuda(),
    }
}

#[cfg(feature = "wgpu")]
fn open_wgpu() -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(wgpu::WgpuBackend::from_env()?))
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu() -> Result<Arc<dyn Backend>, BackendError> {
    Err(BackendError::Unavailable {
        backend: BackendKind::Wgpu,
        reason: "this build has no `wgpu` cargo feature".into(),
    })
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(cuda::CudaBackend::from_env()?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Arc<dyn Backend>, BackendError> {
    Err(BackendError::Unavailable {
        backend: BackendKind::Cuda,
        reason: "this build has no `cuda` cargo feature".into(),
    })
}

/// Every backend kind, opened where possible.
pub fn backends() -> Vec<BackendStatus> {
    BackendKind::ALL
        .into_iter()
        .map(|kind| BackendStatus {
            kind,
            backend: open(kind),
        })
        .collect()
}

/// The backends that opened.
pub fn available() -> Vec<Arc<dyn Backend>> {
    backends()
        .into_iter()
        .filter_map(|s| s.backend.ok())
        .collect()
}
