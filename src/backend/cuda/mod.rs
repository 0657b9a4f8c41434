//! The CUDA backend: `kernels/*.cu` compiled to PTX by NVRTC for the device's
//! own compute capability, launched through cudarc, device facts from NVML.
//!
//! One matmul, in the order the data flows:
//! 1. [`CudaBackend::from_env`] checks that libcuda and libnvrtc can be
//!    loaded *before* any driver call (cudarc panics when they cannot), then
//!    opens device `QUANTSCOPE_CUDA_DEVICE` (default 0) on its default stream.
//! 2. `upload` copies every part of the packed matrix (codes, scales, zero
//!    points, codebook, CSR outliers, activation scale) into device buffers,
//!    laid out byte for byte as on the host (`docs/FORMATS.md`).
//! 3. `tensor` makes device tensors of `rows x x_stride(cols)` floats (rows
//!    padded to a multiple of 32 floats, the padding zero and never written
//!    by a kernel), so a tensor is the X of the GEMV / GEMM kernels as it is.
//! 4. `run` queues a list of ops on the stream without waiting: a `Linear` is
//!    `scale_input` when the matrix has an activation scale, `gemv_<format>`
//!    (batch < 8) or `gemm_<format>` (batch >= 8), `outliers_add` when it has
//!    outliers, `bias_add` when it has a bias, writing Y in the same padded
//!    layout; the other ops are the kernels of `kernels/ops.cu`.
//! 5. `read` copies a tensor back (the stream is synchronized there: errors
//!    of queued kernels surface at that point) and drops the padding. The
//!    trait's provided `matmul` is tensor + Linear + read.
//!
//! Modules are compiled on first use and cached per architecture for the
//! process ([`compile::cached_module_ptx`]). Every device allocation goes
//! through one counter (live and peak bytes); allocations are stream-ordered
//! (`cuMemAllocAsync`) from the device's memory pool, whose reserved bytes
//! [`Backend::memory`] reports next to the driver's `cuMemGetInfo`.
//! Timings use CUDA events recorded on the stream around each run, after
//! warm-up; the runs are queued back to back so launch gaps are not timed.

pub mod compile;
pub mod launch;
pub mod nvml;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, DriverError, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use half::f16;
use launch::{ArgKind, Elem, HostParts, KernelLaunch, MatrixParts, ParamBlock, Part};
use rand::{Rng, SeedableRng};

use super::params::{
    AssignParams, AttentionParams, MatmulParams, OpParams, QuantizeParams, ACT_GELU, ACT_QUICK_GELU,
};
use super::plan::{rtn_result, rtn_shape, x_stride, DenseStep, MatmulPlan};
use super::table::{HandleTable, MemCounter};
use super::{
    check_ops, check_tensor_init, Activation, Backend, BackendError, BackendKind, Bandwidth,
    DeviceInfo, KernelTiming, LevelAssignment, MatrixHandle, MemoryReport, Op, OpTimings, RtnSpec,
    TensorHandle, TensorInit, TimingSource, GEMM_MIN_BATCH,
};
use crate::format::{FormatKind, Matrix, QuantizedMatrix};

use nvml::{NvmlDevice, NvmlFacts};

/// Environment variable choosing the CUDA device ordinal (default 0).
pub const DEVICE_ENV: &str = "QUANTSCOPE_CUDA_DEVICE";

/// Environment variable: `1` loads the kernels as CUBINs for the device's
/// architecture instead of PTX (the fallback when the driver refuses PTX).
pub const CUBIN_ENV: &str = "QUANTSCOPE_CUDA_CUBIN";

// SAFETY: plain `#[repr(C)]` structs of u32 fields, the same layout as the
// structs of kernels/common.cuh that the kernels take by value.
unsafe impl DeviceRepr for MatmulParams {}
unsafe impl DeviceRepr for QuantizeParams {}
unsafe impl DeviceRepr for AssignParams {}
// SAFETY: `#[repr(C)]` structs of u32 and f32 fields, laid out as OpParams and
// AttentionParams of kernels/common.cuh (tests/cuda_compile.rs checks the
// field order and the 32-byte parameter of every ops.cu entry).
unsafe impl DeviceRepr for OpParams {}
unsafe impl DeviceRepr for AttentionParams {}

/// Whether libcuda (the NVIDIA driver) can be loaded here.
pub fn driver_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        catch_unwind(|| {
            // SAFETY: only tries to dlopen the library by its usual names.
            unsafe { sys::is_culib_present() }
        })
        .unwrap_or(false)
    })
}

fn unavailable(reason: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        backend: BackendKind::Cuda,
        reason: reason.into(),
    }
}

fn device_error(message: String) -> BackendError {
    BackendError::Device {
        backend: BackendKind::Cuda,
        message,
    }
}

/// Maps a driver error, saying what was being done.
fn drv(what: &'static str) -> impl Fn(DriverError) -> BackendError {
    move |e| device_error(format!("{what}: {e}"))
}

fn poisoned() -> BackendError {
    device_error("internal lock poisoned by an earlier panic".into())
}

fn to_u32(v: usize, what: &str) -> Result<u32, BackendError> {
    u32::try_from(v).map_err(|_| BackendError::Unsupported {
        backend: BackendKind::Cuda,
        what: format!("{what} = {v} (kernels index with 32-bit integers)"),
    })
}

/// A device buffer whose bytes are counted while it lives.
struct Buf<T> {
    slice: CudaSlice<T>,
    bytes: u64,
    mem: Arc<MemCounter>,
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        self.mem.sub(self.bytes);
    }
}

/// The device copies of a matrix's parts ([`launch::MatrixParts`]).
type DeviceParts = MatrixParts<Buf<u8>, Buf<u16>, Buf<u32>, Buf<f32>>;

/// A packed matrix on the device: every part in its own buffer (parts a
/// format lacks are one-element placeholders the kernels never read).
struct DeviceMatrix {
    params: MatmulParams,
    kind: FormatKind,
    parts: DeviceParts,
}

impl DeviceMatrix {
    fn bytes(&self) -> u64 {
        let p = &self.parts;
        p.dense.bytes
            + p.scales.bytes
            + p.zeros.bytes
            + p.codebook.bytes
            + p.row_ptr.bytes
            + p.col_idx.bytes
            + p.out_vals.bytes
            + p.act_scale.bytes
    }
    fn rows(&self) -> usize {
        self.params.rows as usize
    }
    fn cols(&self) -> usize {
        self.params.cols as usize
    }
}

/// A device tensor: `rows x x_stride(cols)` floats, the padding columns zero
/// (made so, and never written by a kernel).
struct DeviceTensor {
    rows: usize,
    cols: usize,
    buf: Buf<f32>,
}

impl DeviceTensor {
    fn stride(&self) -> usize {
        x_stride(self.cols)
    }
}

/// Queries per block of the `attention` kernel (`ATT_QT` in kernels/ops.cu).
const ATT_QT: usize = 16;
/// Keys (then values) per shared-memory tile of `attention` (`ATT_KT`).
const ATT_KT: usize = 32;
/// Threads per block of `attention` (`ATT_THREADS`).
const ATT_THREADS: u32 = 128;
/// Largest head size `attention` handles (`ATT_MAX_D`: 8 columns per lane).
const ATT_MAX_D: usize = 256;
/// Shared memory a block may use without opting in.
const SMEM_DEFAULT: usize = 48 * 1024;

/// Dynamic shared memory of one `attention` block: the query tile (rows of
/// `d` rounded up to 4 floats), a key / value tile (rows of `d` rounded up
/// to 8, plus 4: 16-byte loads of 8 lanes' rows without bank conflicts), the
/// scores of 16 queries and the key mask (`att_ldq` / `att_ldk` in
/// kernels/ops.cu).
pub fn attention_smem_bytes(seq_len: usize, head_dim: usize) -> usize {
    let ldq = head_dim.div_ceil(4) * 4;
    let ldk = head_dim.div_ceil(8) * 8 + 4;
    (ATT_QT * ldq + ATT_KT * ldk + (ATT_QT + 1) * seq_len) * 4
}

/// Output rows each warp of `gemv_<format>` computes (`GemvRows` in
/// kernels/gemv.cu): narrow codes share each load of X among several rows.
pub fn gemv_rows_per_warp(kind: FormatKind) -> u32 {
    match kind {
        FormatKind::Q4 | FormatKind::Lut4 => 4,
        FormatKind::Q8 => 2,
        FormatKind::F32 | FormatKind::F16 | FormatKind::Bf16 => 1,
    }
}

/// 1-D launch of `n` work items, 256 threads per block, grid-stride beyond
/// `max_blocks` blocks.
fn grid_stride(n: u64, max_blocks: u32) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, max_blocks as u64) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn internal(what: String) -> BackendError {
    BackendError::Invalid(format!("internal: {what}"))
}

/// The value of one launch argument: a parameter block, a device buffer of
/// one element type, or a scalar.
#[derive(Clone, Copy)]
enum DevArg<'a> {
    Matmul(&'a MatmulParams),
    Quantize(&'a QuantizeParams),
    Assign(&'a AssignParams),
    Op(&'a OpParams),
    Attention(&'a AttentionParams),
    U8(&'a CudaSlice<u8>),
    U16(&'a CudaSlice<u16>),
    U32(&'a CudaSlice<u32>),
    U64(&'a CudaSlice<u64>),
    F32(&'a CudaSlice<f32>),
    F64(&'a CudaSlice<f64>),
    /// Bytes holding elements of another type (an f32 matrix's dense part
    /// read as floats).
    Bytes(&'a CudaSlice<u8>, Elem),
    ScalarU32(&'a u32),
    ScalarF32(&'a f32),
}

impl DevArg<'_> {
    /// What this value is, in the terms of a launch description.
    fn kind(&self) -> ArgKind {
        let ptr = |elem| ArgKind::Ptr {
            elem,
            writes: false,
        };
        match *self {
            DevArg::Matmul(_) => ArgKind::Params(ParamBlock::Matmul),
            DevArg::Quantize(_) => ArgKind::Params(ParamBlock::Quantize),
            DevArg::Assign(_) => ArgKind::Params(ParamBlock::Assign),
            DevArg::Op(_) => ArgKind::Params(ParamBlock::Op),
            DevArg::Attention(_) => ArgKind::Params(ParamBlock::Attention),
            DevArg::U8(_) => ptr(Elem::U8),
            DevArg::U16(_) => ptr(Elem::U16),
            DevArg::U32(_) => ptr(Elem::U32),
            DevArg::U64(_) => ptr(Elem::U64),
            DevArg::F32(_) => ptr(Elem::F32),
            DevArg::F64(_) => ptr(Elem::F64),
            DevArg::Bytes(_, elem) => ptr(elem),
            DevArg::ScalarU32(_) => ArgKind::Scalar(Elem::U32),
            DevArg::ScalarF32(_) => ArgKind::Scalar(Elem::F32),
        }
    }

    /// Whether this value can be argument `want` (a buffer is writable or
    /// not by the kernel's declaration; the type must match).
    fn fits(&self, want: ArgKind) -> bool {
        match (self.kind(), want) {
            (ArgKind::Ptr { elem: a, .. }, ArgKind::Ptr { elem: b, .. }) => a == b,
            (a, b) => a == b,
        }
    }
}

macro_rules! dev_arg_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl<'a> From<&'a $t> for DevArg<'a> {
            fn from(v: &'a $t) -> Self {
                DevArg::$v(v)
            }
        }
    )*};
}
dev_arg_from!(
    MatmulParams => Matmul,
    QuantizeParams => Quantize,
    AssignParams => Assign,
    OpParams => Op,
    AttentionParams => Attention,
    CudaSlice<u8> => U8,
    CudaSlice<u16> => U16,
    CudaSlice<u32> => U32,
    CudaSlice<u64> => U64,
    CudaSlice<f32> => F32,
    CudaSlice<f64> => F64,
    u32 => ScalarU32,
    f32 => ScalarF32,
);

impl<'a, T> From<&'a Buf<T>> for DevArg<'a>
where
    DevArg<'a>: From<&'a CudaSlice<T>>,
{
    fn from(b: &'a Buf<T>) -> Self {
        DevArg::from(&b.slice)
    }
}

/// One kernel launch, checked against the kernel's launch description
/// ([`launch::LAUNCHES`]): the backend binds each value by its parameter
/// name, and the launch pushes them in the description's order once every
/// argument is bound exactly once with a value of the described kind. The
/// only way the backend passes arguments to a kernel.
struct Launch<'a> {
    entry: String,
    desc: &'static KernelLaunch,
    values: Vec<Option<DevArg<'a>>>,
}

impl<'a> Launch<'a> {
    fn new(entry: &str) -> Result<Launch<'a>, BackendError> {
        let desc = launch::launch_of(entry)
            .ok_or_else(|| internal(format!("kernel {entry} has no launch description")))?;
        Ok(Launch {
            entry: entry.to_string(),
            desc,
            values: vec![None; desc.args.len()],
        })
    }

    /// Binds argument `name` to `value`.
    fn arg(mut self, name: &str, value: impl Into<DevArg<'a>>) -> Result<Launch<'a>, BackendError> {
        let value = value.into();
        let Some(i) = self.desc.args.iter().position(|a| a.name == name) else {
            let names: Vec<&str> = self.desc.args.iter().map(|a| a.name).collect();
            return Err(internal(format!(
                "{} has no argument {name} (its arguments: {})",
                self.entry,
                names.join(", ")
            )));
        };
        let want = self.desc.args[i].kind;
        if !value.fits(want) {
            return Err(internal(format!(
                "{} argument {name} is {want:?}, the backend passes {:?}",
                self.entry,
                value.kind()
            )));
        }
        if self.values[i].replace(value).is_some() {
            return Err(internal(format!(
                "{} argument {name} bound twice",
                self.entry
            )));
        }
        Ok(self)
    }

    /// Binds every argument that names a part of `m`
    /// ([`launch::MatrixParts::by_name`]).
    fn matrix(mut self, m: &'a DeviceMatrix) -> Result<Launch<'a>, BackendError> {
        for a in self.desc.args {
            let value = match m.parts.by_name(a.name) {
                Some(Part::U8(b)) => DevArg::U8(&b.slice),
                Some(Part::U16(b)) => DevArg::U16(&b.slice),
                Some(Part::U32(b)) => DevArg::U32(&b.slice),
                Some(Part::F32(b)) => DevArg::F32(&b.slice),
                None => continue,
            };
            self = self.arg(a.name, value)?;
        }
        Ok(self)
    }

    /// Queues the kernel on `backend`'s stream.
    ///
    /// # Safety
    ///
    /// The bound buffers must hold what the kernel reads and writes for
    /// these parameters and `cfg` (each call says why they do).
    unsafe fn launch(self, backend: &CudaBackend, cfg: LaunchConfig) -> Result<(), BackendError> {
        self.check_bound()?;
        let f = backend.function(self.desc.stem, &self.entry)?;
        // SAFETY: passed on from the caller.
        unsafe { self.launch_on(backend, &f, cfg) }
    }

    fn check_bound(&self) -> Result<(), BackendError> {
        match self
            .desc
            .args
            .iter()
            .zip(&self.values)
            .find(|(_, v)| v.is_none())
        {
            Some((a, _)) => Err(internal(format!(
                "{} argument {} is not bound",
                self.entry, a.name
            ))),
            None => Ok(()),
        }
    }

    /// [`Launch::launch`] with the kernel already looked up (e.g. to set an
    /// attribute first).
    ///
    /// # Safety
    ///
    /// As [`Launch::launch`]; `f` must be the kernel `entry`.
    unsafe fn launch_on(
        self,
        backend: &CudaBackend,
        f: &CudaFunction,
        cfg: LaunchConfig,
    ) -> Result<(), BackendError> {
        self.check_bound()?;
        let mut b = backend.stream.launch_builder(f);
        for v in self.values.iter().flatten() {
            match *v {
                DevArg::Matmul(p) => b.arg(p),
                DevArg::Quantize(p) => b.arg(p),
                DevArg::Assign(p) => b.arg(p),
                DevArg::Op(p) => b.arg(p),
                DevArg::Attention(p) => b.arg(p),
                DevArg::U8(s) | DevArg::Bytes(s, _) => b.arg(s),
                DevArg::U16(s) => b.arg(s),
                DevArg::U32(s) => b.arg(s),
                DevArg::U64(s) => b.arg(s),
                DevArg::F32(s) => b.arg(s),
                DevArg::F64(s) => b.arg(s),
                DevArg::ScalarU32(v) => b.arg(v),
                DevArg::ScalarF32(v) => b.arg(v),
            };
        }
        // SAFETY: the arguments are those of the kernel's description, in
        // its order and of its kinds (checked above and by
        // tests/cuda_compile.rs against the .cu signature and the PTX); the
        // buffers' sizes are the caller's promise.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(|e| device_error(format!("launch {}: {e}", self.entry)))
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    cc: (i32, i32),
    info: DeviceInfo,
    multiprocessors: u32,
    nvml: NvmlDevice,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    matrices: HandleTable<DeviceMatrix>,
    tensors: HandleTable<DeviceTensor>,
    mem: Arc<MemCounter>,
    /// Largest dynamic shared memory a block may opt into (bytes).
    smem_optin: usize,
}

impl CudaBackend {
    /// Opens device `QUANTSCOPE_CUDA_DEVICE` (default 0). Without libcuda,
    /// libnvrtc or a device, returns [`BackendError::Unavailable`] with the
    /// reason; never panics.
    pub fn from_env() -> Result<CudaBackend, BackendError> {
        let ordinal = match std::env::var(DEVICE_ENV) {
            Ok(s) if !s.trim().is_empty() => s.trim().parse::<usize>().map_err(|_| {
                BackendError::Invalid(format!(
                    "{DEVICE_ENV}='{s}' is not a device ordinal (0, 1, ...)"
                ))
            })?,
            _ => 0,
        };
        Self::new(ordinal)
    }

    /// Opens CUDA device `ordinal`.
    pub fn new(ordinal: usize) -> Result<CudaBackend, BackendError> {
        if !driver_available() {
            return Err(unavailable(
                "libcuda not found (no NVIDIA driver on this machine; install the driver, \
                 or check that libcuda.so is on the loader path)",
            ));
        }
        if !compile::nvrtc_available() {
            return Err(unavailable(compile::nvrtc_missing_reason()));
        }
        catch_unwind(|| Self::open(ordinal)).unwrap_or_else(|_| {
            Err(unavailable(
                "the CUDA driver panicked while opening the device",
            ))
        })
    }

    fn open(ordinal: usize) -> Result<CudaBackend, BackendError> {
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("the CUDA driver cannot list devices: {e}")))?;
        if count <= 0 {
            return Err(unavailable("the CUDA driver reports no device"));
        }
        if ordinal >= count as usize {
            return Err(unavailable(format!(
                "device {ordinal} does not exist ({count} CUDA device(s); set {DEVICE_ENV})"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e}")))?;
        // SAFETY: the backend uses a single stream, so cudarc's cross-stream
        // event tracking is not needed; it is turned off before any allocation.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let name = ctx.name().map_err(drv("device name"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        let total = ctx.total_mem().map_err(drv("device memory"))? as u64;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("multiprocessor count"))?
            .max(1) as u32;
        let smem_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map(|v| (v.max(0) as usize).max(SMEM_DEFAULT))
            .unwrap_or(SMEM_DEFAULT);
        let integrated = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
            .map(|v| v != 0)
            .unwrap_or(false);
        let mut version = 0i32;
        // SAFETY: writes one int; the driver is loaded (context exists).
        let cuda_version = unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .ok()
            .map(|_| {
                format!(
                    "CUDA driver API {}.{}",
                    version / 1000,
                    (version % 1000) / 10
                )
            })
            .unwrap_or_else(|| "CUDA driver".into());
        let uuid = ctx.uuid().ok().map(|u| u.bytes.map(|b| b.to_ne_bytes()[0]));
        let nvml = NvmlDevice::open(uuid, ordinal as u32);
        let facts = nvml.facts();
        let arch = format!("sm_{major}{minor}");

        let mut features = vec![
            arch.clone(),
            format!("multiprocessors={multiprocessors}"),
            format!("nvrtc-arch={arch}"),
        ];
        if major >= 8 {
            features.push("tensor-cores (gemm_f16: mma.sync m16n8k16)".into());
        }
        if ctx.has_async_alloc() {
            features.push("stream-ordered memory pool".into());
        }
        features.extend(nvml_features(&facts));
        let driver = match &facts.driver_version {
            Some(v) => format!("{cuda_version}, driver {v}"),
            None => cuda_version,
        };
        let info = DeviceInfo {
            backend: BackendKind::Cuda,
            name,
            device_type: if integrated {
                "integrated-gpu".into()
            } else {
                "discrete-gpu".into()
            },
            driver,
            memory_total_bytes: Some(total),
            compute_capability: Some((major.max(0) as u32, minor.max(0) as u32)),
            features,
        };
        Ok(CudaBackend {
            ctx,
            stream,
            arch,
            cc: (major, minor),
            info,
            multiprocessors,
            nvml,
            modules: Mutex::new(HashMap::new()),
            matrices: HandleTable::new(BackendKind::Cuda),
            tensors: HandleTable::new(BackendKind::Cuda),
            mem: Arc::new(MemCounter::default()),
            smem_optin,
        })
    }

    /// NVML facts about this device, queried now (memory and clocks change).
    pub fn nvml_facts(&self) -> NvmlFacts {
        self.nvml.facts()
    }

    /// Times cuBLAS's f16 GEMM (`cublasGemmEx`, f16 inputs and output, f32
    /// compute, tensor cores) on the shape of `Y = X · Wᵀ` with W of
    /// `rows x cols` and X of `batch x cols`: the speed a plain f16 layer gets
    /// from the vendor library, the reference for the quantized kernels. The
    /// same protocol as [`Backend::time_matmul`] (warm-up, L2 flush, CUDA
    /// events); libcublas is loaded on first use and its absence reported as
    /// [`BackendError::Unavailable`].
    pub fn time_cublas_f16_gemm(
        &self,
        rows: usize,
        cols: usize,
        batch: usize,
        runs: usize,
    ) -> Result<KernelTiming, BackendError> {
        use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
        let present = catch_unwind(|| {
            // SAFETY: only tries to dlopen the library by its usual names.
            unsafe { blas_sys::is_culib_present() }
        })
        .unwrap_or(false);
        if !present {
            return Err(unavailable(
                "libcublas not found (install the CUDA toolkit or the nvidia-cublas-cu12 wheel)",
            ));
        }
        if rows == 0 || cols == 0 || batch == 0 {
            return Err(BackendError::Invalid(
                "cuBLAS GEMM needs rows, cols and batch >= 1".into(),
            ));
        }
        let (m, n, k) = (
            i32::try_from(rows).map_err(|_| BackendError::Invalid("rows too large".into()))?,
            i32::try_from(batch).map_err(|_| BackendError::Invalid("batch too large".into()))?,
            i32::try_from(cols).map_err(|_| BackendError::Invalid("cols too large".into()))?,
        );
        let blas = catch_unwind(AssertUnwindSafe(|| CudaBlas::new(self.stream.clone())))
            .map_err(|_| unavailable("cuBLAS panicked while loading"))?
            .map_err(|e| device_error(format!("cublasCreate: {e}")))?;
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0xb1a5);
        let mut random = |len: usize| -> Vec<f16> {
            (0..len)
                .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                .collect()
        };
        let w = self.upload_slice(&random(rows * cols))?;
        let x = self.upload_slice(&random(batch * cols))?;
        let mut y = self.zeros::<f16>(batch * rows)?;
        // Column-major view: Yᵀ (rows x batch) = op(W) · Xᵀ, where the
        // row-major W buffer is W (cols x rows, column-major) and op = T.
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            alpha: f16::ONE,
            lda: k,
            ldb: k,
            beta: f16::ZERO,
            ldc: m,
        };
        let l2 = self
            .ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .unwrap_or(0)
            .max(0) as usize;
        let mut flush = if l2 > 0 && w.bytes < 4 * l2 as u64 {
            Some(self.zeros::<u8>(2 * l2)?)
        } else {
            None
        };
        let samples = self.time_on_stream(
            3,
            runs,
            || match flush.as_mut() {
                Some(f) => self
                    .stream
                    .memset_zeros(&mut f.slice)
                    .map_err(drv("L2 flush")),
                None => Ok(()),
            },
            || {
                // SAFETY: W holds rows * cols, X batch * cols and Y
                // batch * rows halves, matching m, n, k and the leading
                // dimensions above.
                unsafe { blas.gemm(cfg, &w.slice, &x.slice, &mut y.slice) }
                    .map_err(|e| device_error(format!("cublasGemmEx: {e}")))
            },
        )?;
        Ok(KernelTiming {
            samples_s: samples,
            source: TimingSource::CudaEvent,
        })
    }

    /// The architecture the kernels are compiled for (`sm_90`, ...).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    // ---- kernels ----------------------------------------------------------

    /// Kernel `entry` of file `stem`, compiling and loading the module on
    /// first use.
    fn function(&self, stem: &'static str, entry: &str) -> Result<CudaFunction, BackendError> {
        let module = {
            let mut modules = self.modules.lock().map_err(|_| poisoned())?;
            match modules.get(stem) {
                Some(m) => m.clone(),
                None => {
                    let m = self.load_kernel_module(stem)?;
                    modules.insert(stem, m.clone());
                    m
                }
            }
        };
        module
            .load_function(entry)
            .map_err(|e| device_error(format!("kernel {entry} in {stem}.cu: {e}")))
    }

    /// Compiles and loads kernel file `stem` now, if it is not yet.
    fn module_loaded(&self, stem: &'static str) -> Result<(), BackendError> {
        let entry = *compile::kernel_entries(stem)
            .first()
            .ok_or_else(|| BackendError::Invalid(format!("no kernel file kernels/{stem}.cu")))?;
        self.function(stem, entry).map(drop)
    }

    /// Loads kernel file `stem`: its PTX, JIT-compiled by the driver; when
    /// the driver refuses it (`UNSUPPORTED_PTX_VERSION`: libnvrtc newer than
    /// the driver), or when `QUANTSCOPE_CUDA_CUBIN=1`, a CUBIN compiled by
    /// NVRTC for this device's exact architecture, which needs no JIT.
    fn load_kernel_module(&self, stem: &'static str) -> Result<Arc<CudaModule>, BackendError> {
        let load_cubin = || -> Result<Arc<CudaModule>, BackendError> {
            let bin = compile::cached_module_cubin(stem, &self.arch)?;
            self.ctx
                .load_module(Ptx::from_binary(bin.as_ref().clone()))
                .map_err(|e| device_error(format!("loading {stem}.cu CUBIN ({}): {e}", self.arch)))
        };
        if std::env::var(CUBIN_ENV).as_deref() == Ok("1") {
            return load_cubin();
        }
        let ptx = self.module_ptx(stem)?;
        match self.ctx.load_module(Ptx::from_src(ptx.as_str())) {
            Ok(m) => Ok(m),
            Err(e) if format!("{e:?}").contains("UNSUPPORTED_PTX_VERSION") => {
                load_cubin().map_err(|cubin| {
                    device_error(format!(
                        "loading {stem}.cu PTX: {e} (libnvrtc is newer than the driver), \
                         and the CUBIN fallback: {cubin}"
                    ))
                })
            }
            Err(e) => Err(device_error(format!("loading {stem}.cu PTX: {e}"))),
        }
    }

    /// PTX of `stem` for this device; NVRTC releases older than the device
    /// do not know its `sm_XY`, and then PTX for compute_80 (which the
    /// driver compiles for any newer GPU) is used instead.
    fn module_ptx(&self, stem: &'static str) -> Result<Arc<String>, BackendError> {
        match compile::cached_module_ptx(stem, &self.arch) {
            Ok(p) => Ok(p),
            Err(BackendError::Device { message, .. })
                if message.contains("gpu-architecture") && self.cc >= (8, 0) =>
            {
                compile::cached_module_ptx(stem, "compute_80").map_err(|e| {
                    device_error(format!("{message}\n(and the compute_80 fallback: {e})"))
                })
            }
            Err(e) => Err(e),
        }
    }

    // ---- buffers ----------------------------------------------------------

    fn track<T>(&self, slice: CudaSlice<T>) -> Buf<T> {
        let bytes = slice.num_bytes() as u64;
        self.mem.add(bytes);
        Buf {
            slice,
            bytes,
            mem: self.mem.clone(),
        }
    }

    /// A zeroed buffer of `len` elements (at least one).
    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<Buf<T>, BackendError> {
        let s = self
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(drv("device allocation"))?;
        Ok(self.track(s))
    }

    /// A copy of `data` on the device (a zeroed one-element placeholder when
    /// `data` is empty).
    fn upload_slice<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        data: &[T],
    ) -> Result<Buf<T>, BackendError> {
        if data.is_empty() {
            return self.zeros(1);
        }
        let s = self
            .stream
            .clone_htod(data)
            .map_err(drv("host-to-device copy"))?;
        Ok(self.track(s))
    }

    /// An f32 output buffer filled with NaN: any element a kernel forgets to
    /// write shows up in the cross-backend test instead of passing as 0.
    fn poisoned_f32(&self, len: usize) -> Result<Buf<f32>, BackendError> {
        // SAFETY: the memory is uninitialized only until the memset below,
        // queued on the same stream before any other use.
        let slice =
            unsafe { self.stream.alloc::<f32>(len.max(1)) }.map_err(drv("device allocation"))?;
        let buf = self.track(slice);
        let (ptr, sync) = buf.slice.device_ptr(&self.stream);
        // SAFETY: `ptr` addresses `buf.slice.len()` f32 values of a live
        // allocation, written on the stream that owns it.
        unsafe {
            sys::cuMemsetD32Async(
                ptr,
                f32::NAN.to_bits(),
                buf.slice.len(),
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(drv("memset"))?;
        drop(sync);
        Ok(buf)
    }

    fn download<T: DeviceRepr + ValidAsZeroBits + Clone>(
        &self,
        buf: &Buf<T>,
        len: usize,
    ) -> Result<Vec<T>, BackendError> {
        let mut out = self
            .stream
            .clone_dtoh(&buf.slice)
            .map_err(drv("device-to-host copy"))?;
        self.stream.synchronize().map_err(drv("synchronize"))?;
        out.truncate(len);
        Ok(out)
    }

    /// Host `rows x cols` values on the device in the tensor layout: rows of
    /// [`x_stride`] floats, the padding zero.
    fn upload_padded(&self, x: &[f32], rows: usize, cols: usize) -> Result<Buf<f32>, BackendError> {
        self.upload_slice(&pad_rows(x, rows, cols))
    }

    fn get(&self, h: &MatrixHandle) -> Result<Arc<DeviceMatrix>, BackendError> {
        self.matrices.get(h)
    }

    fn get_tensor(&self, t: &TensorHandle) -> Result<Arc<DeviceTensor>, BackendError> {
        let d = self.tensors.get(t)?;
        if (d.rows, d.cols) != t.shape() {
            return Err(BackendError::Invalid(format!(
                "tensor {} is {}x{} on the device, the handle says {}x{}",
                t.id(),
                d.rows,
                d.cols,
                t.rows(),
                t.cols()
            )));
        }
        Ok(d)
    }

    // ---- launches ---------------------------------------------------------

    /// Queues one `Y = X · Wᵀ` on the stream: scale_input, gemv / gemm,
    /// outliers_add. `x` holds `batch` rows of [`x_stride`]`(cols)` floats,
    /// `y` `batch` rows of `x_stride(rows)` floats (its padding is not
    /// written); `scaled` is scratch the size of `x`, used when the matrix
    /// has an activation scale. Outputs are passed by shared reference: the
    /// kernels write device memory the host never reads meanwhile, and the
    /// single stream orders every access.
    fn enqueue_matmul(
        &self,
        m: &DeviceMatrix,
        batch: usize,
        x: &Buf<f32>,
        scaled: Option<&Buf<f32>>,
        y: &Buf<f32>,
    ) -> Result<(), BackendError> {
        let mut p = m.params;
        p.batch = to_u32(batch, "batch")?;
        let xs = x_stride(m.cols()) as u64;
        // The kernels trust these sizes: check them here, loudly.
        let (x_need, y_need) = (batch * x_stride(m.cols()), batch * x_stride(m.rows()));
        if x.slice.len() < x_need || y.slice.len() < y_need {
            return Err(BackendError::Invalid(format!(
                "internal: matmul buffers hold {} / {} floats, need {x_need} / {y_need}",
                x.slice.len(),
                y.slice.len()
            )));
        }
        let plan = MatmulPlan::new(&p, batch, false);
        let input: &Buf<f32> = if plan.scale_input {
            let Some(xo) = scaled else {
                return Err(BackendError::Invalid(
                    "internal: no scratch buffer for the activation scale".into(),
                ));
            };
            let l = Launch::new("scale_input")?
                .matrix(m)?
                .arg("p", &p)?
                .arg("x", x)?
                .arg("xo", xo)?;
            // SAFETY: x and xo hold batch * x_stride floats, act_scale
            // holds cols floats.
            unsafe { l.launch(self, grid_stride(batch as u64 * xs, 65_535)) }?;
            xo
        } else {
            x
        };
        let (entry, cfg) = if plan.dense != DenseStep::Gemm {
            (
                format!("gemv_{}", m.kind.name()),
                LaunchConfig {
                    grid_dim: (p.rows.div_ceil(8 * gemv_rows_per_warp(m.kind)), 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            )
        } else {
            let gy = p.batch.div_ceil(32);
            if gy > 65_535 {
                return Err(BackendError::Unsupported {
                    backend: BackendKind::Cuda,
                    what: format!("batch {batch} (at most {} rows of X)", 65_535 * 32),
                });
            }
            (
                format!("gemm_{}", m.kind.name()),
                LaunchConfig {
                    grid_dim: (p.rows.div_ceil(64), gy, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            )
        };
        let l = Launch::new(&entry)?
            .matrix(m)?
            .arg("p", &p)?
            .arg("x", input)?
            .arg("y", y)?;
        // SAFETY: the matrix buffers have the sizes of kernels/common.cuh
        // for these params (checked at upload), x holds
        // batch * x_stride(cols) floats, y batch * x_stride(rows).
        unsafe { l.launch(self, cfg) }?;
        if plan.outliers {
            let l = Launch::new("outliers_add")?
                .matrix(m)?
                .arg("p", &p)?
                .arg("x", input)?
                .arg("y", y)?;
            // SAFETY: the CSR arrays were validated on the host at upload;
            // x and y as above.
            unsafe { l.launch(self, grid_stride(batch as u64 * p.rows as u64, 65_535)) }?;
        }
        Ok(())
    }

    /// Fills the valid columns of a zeroed tensor buffer with NaN (a 2-D
    /// memset: `cols` floats per row, rows `x_stride(cols)` floats apart), so
    /// an output value a kernel forgets fails every comparison while the
    /// padding stays zero as every kernel expects.
    fn poison_valid(&self, buf: &Buf<f32>, rows: usize, cols: usize) -> Result<(), BackendError> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (ptr, sync) = buf.slice.device_ptr(&self.stream);
        // SAFETY: the buffer holds rows * x_stride(cols) floats; each of the
        // `rows` rows of pitch x_stride(cols) * 4 bytes gets `cols` NaNs, in
        // bounds; queued on the stream that owns the buffer.
        unsafe {
            sys::cuMemsetD2D32Async(
                ptr,
                x_stride(cols) * 4,
                f32::NAN.to_bits(),
                cols,
                rows,
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(drv("memset"))?;
        drop(sync);
        Ok(())
    }

    /// Checks `ops` ([`check_ops`]) and looks up every handle they name.
    fn resolve_ops<'a>(&self, ops: &[Op<'a>]) -> Result<Vec<ReadyOp<'a>>, BackendError> {
        check_ops(self, ops)?;
        ops.iter()
            .map(|op| {
                let tensors = op
                    .inputs()
                    .into_iter()
                    .chain([op.output()])
                    .map(|t| self.get_tensor(t))
                    .collect::<Result<Vec<_>, _>>()?;
                let matrix = match op {
                    Op::Linear { w, .. } => Some(self.get(w)?),
                    _ => None,
                };
                Ok(ReadyOp {
                    op: *op,
                    tensors,
                    matrix,
                })
            })
            .collect()
    }

    /// Queues one op on the stream (no synchronization).
    fn enqueue_op(&self, r: &ReadyOp<'_>) -> Result<(), BackendError> {
        let t = &r.tensors;
        let y = &t[t.len() - 1].buf.slice;
        match r.op {
            Op::Linear { x, w, bias, .. } => {
                let m = r.matrix.as_ref().ok_or_else(|| {
                    BackendError::Invalid("internal: linear op without its matrix".into())
                })?;
                let batch = x.rows();
                let scratch = if m.params.prepares_input() {
                    Some(self.zeros::<f32>(batch * x_stride(m.cols()))?)
                } else {
                    None
                };
                self.enqueue_matmul(m, batch, &t[0].buf, scratch.as_ref(), &t[t.len() - 1].buf)?;
                if bias.is_some() {
                    let p = op_params(batch, w.rows(), 1, 0, 0.0);
                    let l = Launch::new("bias_add")?
                        .arg("p", &p)?
                        .arg("bias", &t[1].buf)?
                        .arg("y", y)?;
                    // SAFETY: bias is 1 x w.rows, y batch x w.rows, rows of
                    // x_stride(w.rows) floats (Op::check).
                    unsafe { l.launch(self, float4_launch(batch, w.rows())) }?;
                }
            }
            Op::LayerNorm { x, eps, .. } => {
                let p = op_params(x.rows(), x.cols(), 0, 0, eps);
                let l = Launch::new("layer_norm")?
                    .arg("p", &p)?
                    .arg("x", &t[0].buf)?
                    .arg("gamma", &t[1].buf)?
                    .arg("beta", &t[2].buf)?
                    .arg("y", y)?;
                // SAFETY: x and y are rows x cols, gamma and beta 1 x cols,
                // rows of x_stride(cols) floats (Op::check).
                unsafe { l.launch(self, rows_launch(x.rows())) }?;
            }
            Op::Activation { kind, x, .. } => {
                let entry = match kind {
                    Activation::Gelu => "gelu",
                    Activation::QuickGelu => "quick_gelu",
                };
                let mut p = op_params(x.rows(), x.cols(), 0, 0, 0.0);
                // One entry per function here; `kind` says which all the same
                // (the field the WGSL twin may switch on).
                p.kind = match kind {
                    Activation::Gelu => ACT_GELU,
                    Activation::QuickGelu => ACT_QUICK_GELU,
                };
                let l = Launch::new(entry)?
                    .arg("p", &p)?
                    .arg("x", &t[0].buf)?
                    .arg("y", y)?;
                // SAFETY: x and y are both rows x cols (Op::check).
                unsafe { l.launch(self, float4_launch(x.rows(), x.cols())) }?;
            }
            Op::Add { a, b: bt, .. } => {
                let p = op_params(a.rows(), a.cols(), bt.rows(), 0, 0.0);
                let l = Launch::new("add")?
                    .arg("p", &p)?
                    .arg("a", &t[0].buf)?
                    .arg("b", &t[1].buf)?
                    .arg("y", y)?;
                // SAFETY: a and y rows x cols, b aux_rows x cols with
                // aux_rows >= 1 dividing rows (Op::check).
                unsafe { l.launch(self, float4_launch(a.rows(), a.cols())) }?;
            }
            Op::Softmax { x, mask, scale, .. } => {
                let per_mask = mask.map_or(0, |m| x.rows() / m.rows());
                let p = op_params(x.rows(), x.cols(), per_mask, 0, scale);
                // Without a mask, x stands in for the pointer: the kernel
                // does not read it when aux_rows is 0.
                let m = if mask.is_some() { &t[1] } else { &t[0] };
                let l = Launch::new("softmax")?
                    .arg("p", &p)?
                    .arg("x", &t[0].buf)?
                    .arg("mask", &m.buf)?
                    .arg("y", y)?;
                // SAFETY: x and y rows x cols, the mask rows / aux_rows x
                // cols (Op::check), rows of x_stride(cols).
                unsafe { l.launch(self, rows_launch(x.rows())) }?;
            }
            Op::Attention {
                q,
                mask,
                seqs,
                heads,
                ..
            } => {
                let (s, d) = (q.rows() / seqs, q.cols() / heads);
                let p = AttentionParams {
                    seqs: seqs as u32,
                    seq_len: s as u32,
                    heads: heads as u32,
                    head_dim: d as u32,
                    stride: x_stride(q.cols()) as u32,
                    has_mask: mask.is_some() as u32,
                    // The CPU's scale, bit for bit.
                    scale: 1.0 / (d as f32).sqrt(),
                    _pad0: 0,
                };
                let smem = attention_smem_bytes(s, d);
                let f = self.function("ops", "attention")?;
                if smem > SMEM_DEFAULT {
                    // Above 48 KB a kernel must opt in (supports checked
                    // smem <= the device's opt-in limit).
                    f.set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem as i32,
                    )
                    .map_err(drv("attention shared memory limit"))?;
                }
                let cfg = LaunchConfig {
                    grid_dim: (s.div_ceil(ATT_QT) as u32, heads as u32, seqs as u32),
                    block_dim: (ATT_THREADS, 1, 1),
                    shared_mem_bytes: smem as u32,
                };
                let m = if mask.is_some() { &t[3] } else { &t[0] };
                let l = Launch::new("attention")?
                    .arg("p", &p)?
                    .arg("q", &t[0].buf)?
                    .arg("k", &t[1].buf)?
                    .arg("v", &t[2].buf)?
                    .arg("mask", &m.buf)?
                    .arg("y", y)?;
                // SAFETY: q, k, v, y are seqs * s x heads * d, the mask (read
                // only when has_mask) seqs x s, rows of x_stride floats
                // (Op::check); the dynamic shared memory is the kernel's
                // (16 + 32) * (d | 1) + 17 * s floats, head_dim <= 256
                // (supports); f is the attention kernel.
                unsafe { l.launch_on(self, &f, cfg) }?;
            }
            Op::TakeRows {
                x,
                offset,
                step,
                y: yt,
            } => {
                let p = op_params(yt.rows(), x.cols(), step, offset, 0.0);
                let l = Launch::new("take_rows")?
                    .arg("p", &p)?
                    .arg("x", &t[0].buf)?
                    .arg("y", y)?;
                // SAFETY: y rows x cols, every source row
                // offset + i * step < x.rows (Op::check).
                unsafe { l.launch(self, float4_launch(yt.rows(), x.cols())) }?;
            }
        }
        Ok(())
    }

    /// Times `runs` repetitions of `work`, queued back to back between CUDA
    /// events, after `warmup` untimed ones; `before` runs before each timed
    /// run, outside the events (e.g. an L2 flush). Returns seconds per run.
    /// cudarc looks driver symbols up by name at first use and panics when
    /// one is missing (a driver older than the bindings): that panic becomes
    /// an error here, as in `new`, instead of ending the program.
    fn time_on_stream(
        &self,
        warmup: usize,
        runs: usize,
        before: impl FnMut() -> Result<(), BackendError>,
        work: impl FnMut() -> Result<(), BackendError>,
    ) -> Result<Vec<f64>, BackendError> {
        catch_unwind(AssertUnwindSafe(|| {
            self.time_on_stream_unguarded(warmup, runs, before, work)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(device_error(format!(
                "the CUDA driver panicked while timing: {what}"
            )))
        })
    }

    fn time_on_stream_unguarded(
        &self,
        warmup: usize,
        runs: usize,
        mut before: impl FnMut() -> Result<(), BackendError>,
        mut work: impl FnMut() -> Result<(), BackendError>,
    ) -> Result<Vec<f64>, BackendError> {
        for _ in 0..warmup {
            work()?;
        }
        self.stream.synchronize().map_err(drv("synchronize"))?;
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut events: Vec<(CudaEvent, CudaEvent)> = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let start = self.ctx.new_event(timing).map_err(drv("create event"))?;
            let end = self.ctx.new_event(timing).map_err(drv("create event"))?;
            before()?;
            start.record(&self.stream).map_err(drv("record event"))?;
            work()?;
            end.record(&self.stream).map_err(drv("record event"))?;
            events.push((start, end));
        }
        events
            .iter()
            .map(|(s, e)| {
                s.elapsed_ms(e)
                    .map(|ms| ms as f64 / 1e3)
                    .map_err(drv("event timing"))
            })
            .collect()
    }

    fn pool_reserved_bytes(&self) -> Option<u64> {
        if !self.ctx.has_async_alloc() {
            return None;
        }
        let mut reserved: u64 = 0;
        // SAFETY: the device handle comes from the live context; the
        // attribute is a cuuint64_t written through the pointer.
        unsafe {
            let pool = cudarc::driver::result::device::get_mem_pool(self.ctx.cu_device()).ok()?;
            cudarc::driver::result::mem_pool::get_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                (&mut reserved as *mut u64).cast(),
            )
            .ok()?;
        }
        Some(reserved)
    }

    /// Values of an f32 matrix as one contiguous run of `rows * cols` floats:
    /// the dense buffer itself when rows are unpadded, else a compacted copy.
    fn compact_values(&self, m: &DeviceMatrix) -> Result<Option<Buf<f32>>, BackendError> {
        if m.cols().is_multiple_of(4) {
            return Ok(None);
        }
        let n = m.rows() * m.cols();
        let out = self.zeros::<f32>(n)?;
        let mut p = m.params;
        p.flags = 0; // the raw dense values, as the CPU backend uses
        let l = Launch::new("dequantize_f32")?
            .matrix(m)?
            .arg("p", &p)?
            .arg("out", &out)?;
        // SAFETY: out holds rows * cols floats, the matrix buffers the
        // sizes of its params.
        unsafe { l.launch(self, grid_stride(n as u64, 65_535)) }?;
        Ok(Some(out))
    }

    /// `values`: `n` floats on the device.
    fn run_assign(
        &self,
        values: DevArg<'_>,
        n: usize,
        levels: &[f32],
        want_codes: bool,
    ) -> Result<LevelAssignment, BackendError> {
        let k = levels.len();
        let p = AssignParams {
            n: to_u32(n, "number of values")?,
            levels: k as u32,
            want_codes: want_codes as u32,
            _pad0: 0,
        };
        let levels_d = self.upload_slice(levels)?;
        let codes = self.zeros::<u8>(n)?;
        let cfg = grid_stride(n as u64, 1024);
        let blocks = cfg.grid_dim.0 as usize;
        let sums = self.zeros::<f64>(blocks * k)?;
        let counts = self.zeros::<u64>(blocks * k)?;
        let l = Launch::new("assign_levels")?
            .arg("p", &p)?
            .arg("values", values)?
            .arg("levels", &levels_d)?
            .arg("codes", &codes)?;
        // SAFETY: values holds n floats, levels k, codes n bytes.
        unsafe { l.launch(self, cfg) }?;
        let l = Launch::new("reduce_levels")?
            .arg("p", &p)?
            .arg("values", values)?
            .arg("codes", &codes)?
            .arg("part_sums", &sums)?
            .arg("part_counts", &counts)?;
        // SAFETY: as above; the partial buffers hold gridDim.x * levels
        // entries.
        unsafe { l.launch(self, cfg) }?;
        let part_sums = self.download(&sums, blocks * k)?;
        let part_counts = self.download(&counts, blocks * k)?;
        let mut out = LevelAssignment {
            codes: Vec::new(),
            sums: vec![0.0; k],
            counts: vec![0; k],
        };
        for (s, c) in part_sums.chunks(k).zip(part_counts.chunks(k)) {
            for j in 0..k {
                out.sums[j] += s[j];
                out.counts[j] += c[j];
            }
        }
        if want_codes {
            out.codes = self.download(&codes, n)?;
        }
        Ok(out)
    }
}

/// `rows x cols` row-major values as rows of [`x_stride`]`(cols)` floats,
/// the padding zero.
fn pad_rows(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let xs = x_stride(cols);
    let mut padded = vec![0.0f32; rows * xs];
    if cols > 0 {
        for (dst, src) in padded.chunks_mut(xs).zip(x.chunks(cols)) {
            dst[..cols].copy_from_slice(src);
        }
    }
    padded
}

/// The inverse of [`pad_rows`].
fn unpad_rows(padded: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    if cols > 0 {
        for row in padded.chunks(x_stride(cols)).take(rows) {
            out.extend_from_slice(&row[..cols]);
        }
    }
    out
}

/// The parameter block of the row-wise and elementwise kernels of ops.cu
/// for an output of `rows x cols` (sizes checked by `supports`).
fn op_params(
    rows: usize,
    cols: usize,
    aux_rows: usize,
    offset: usize,
    eps_or_scale: f32,
) -> OpParams {
    OpParams {
        rows: rows as u32,
        cols: cols as u32,
        stride: x_stride(cols) as u32,
        aux_rows: aux_rows as u32,
        offset: offset as u32,
        kind: 0,
        eps_or_scale,
        _pad0: 0,
    }
}

/// Launch of the one-warp-per-row kernels (`layer_norm`, `softmax`): 8 rows
/// per 256-thread block, grid-stride beyond 2^20 blocks.
fn rows_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch of the elementwise kernels: one float4 of a padded row per thread.
fn float4_launch(rows: usize, cols: usize) -> LaunchConfig {
    grid_stride((rows * x_stride(cols) / 4) as u64, 1 << 20)
}

/// An op with its device objects looked up, so that a freed or foreign
/// handle fails before anything is queued.
struct ReadyOp<'a> {
    op: Op<'a>,
    /// The op's input tensors in [`Op::inputs`] order, then its output.
    tensors: Vec<Arc<DeviceTensor>>,
    /// The matrix of a `Linear`.
    matrix: Option<Arc<DeviceMatrix>>,
}

/// NVML facts worth a line in `devices`.
fn nvml_features(f: &NvmlFacts) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(why) = &f.unavailable {
        v.push(format!("nvml: {why}"));
        return v;
    }
    if let (Some(cur), Some(max)) = (f.sm_clock_mhz, f.sm_clock_max_mhz) {
        v.push(format!("sm-clock={cur}/{max} MHz"));
    }
    if let Some(m) = f.memory_clock_max_mhz {
        v.push(format!("mem-clock-max={m} MHz"));
    }
    if let Some(b) = f.memory_bus_width_bits {
        v.push(format!("mem-bus={b} bit"));
    }
    if let (Some(used), Some(total)) = (f.memory_used_bytes, f.memory_total_bytes) {
        v.push(format!(
            "nvml-memory-used={:.2}/{:.1} GiB",
            used as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        ));
    }
    if let Some(p) = f.process_memory_bytes {
        v.push(format!(
            "this-process={:.1} MiB",
            p as f64 / (1u64 << 20) as f64
        ));
    }
    v
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn info(&self) -> DeviceInfo {
        let mut info = self.info.clone();
        // Memory and clocks move: refresh the NVML part.
        info.features.retain(|f| {
            !(f.starts_with("sm-clock")
                || f.starts_with("mem-clock")
                || f.starts_with("mem-bus")
                || f.starts_with("nvml")
                || f.starts_with("this-process"))
        });
        info.features.extend(nvml_features(&self.nvml.facts()));
        info
    }

    fn upload(&self, m: &QuantizedMatrix) -> Result<MatrixHandle, BackendError> {
        to_u32(m.rows(), "rows")?;
        to_u32(m.cols(), "cols")?;
        to_u32(m.rows() * m.groups_per_row(), "groups")?;
        let mut params = MatmulParams::new(m, 1);
        params.batch = 0;
        // Empty parts (those the format lacks) become one-element
        // placeholders (upload_slice).
        let parts = HostParts::of(m).try_map(
            |v| self.upload_slice(v),
            |v| self.upload_slice(v),
            |v| self.upload_slice(v),
            |v| self.upload_slice(v),
        )?;
        let dm = DeviceMatrix {
            params,
            kind: m.kind(),
            parts,
        };
        let bytes = dm.bytes();
        let id = self.matrices.insert(dm)?;
        Ok(MatrixHandle::new(id, BackendKind::Cuda, m, bytes))
    }

    fn dequantize(&self, h: &MatrixHandle) -> Result<Vec<f32>, BackendError> {
        let m = self.get(h)?;
        let n = m.rows() * m.cols();
        let out = self.poisoned_f32(n)?;
        let entry = format!("dequantize_{}", m.kind.name());
        let l = Launch::new(&entry)?
            .matrix(&m)?
            .arg("p", &m.params)?
            .arg("out", &out)?;
        // SAFETY: out holds rows * cols floats, the matrix buffers the
        // sizes of its params (checked at upload).
        unsafe { l.launch(self, grid_stride(n as u64, 65_535)) }?;
        self.download(&out, n)
    }

    fn free(&self, h: MatrixHandle) -> Result<(), BackendError> {
        // Dropping the buffers frees them (stream-ordered) and uncounts them.
        self.matrices.remove(&h).map(drop)
    }

    fn tensor(
        &self,
        rows: usize,
        cols: usize,
        init: TensorInit<'_>,
    ) -> Result<TensorHandle, BackendError> {
        check_tensor_init(rows, cols, &init)?;
        let n = rows
            .checked_mul(x_stride(cols))
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(|| BackendError::Invalid(format!("tensor {rows}x{cols} is too large")))?;
        let buf = match init {
            TensorInit::Data(d) => self.upload_padded(d, rows, cols)?,
            TensorInit::Zeros => self.zeros::<f32>(n)?,
            TensorInit::Poison => {
                let buf = self.zeros::<f32>(n)?;
                self.poison_valid(&buf, rows, cols)?;
                buf
            }
        };
        let id = self.tensors.insert(DeviceTensor { rows, cols, buf })?;
        Ok(TensorHandle::new(id, BackendKind::Cuda, rows, cols))
    }

    fn write_tensor(&self, t: &TensorHandle, data: &[f32]) -> Result<(), BackendError> {
        check_tensor_init(t.rows(), t.cols(), &TensorInit::Data(data))?;
        let d = self.get_tensor(t)?;
        let padded = pad_rows(data, d.rows, d.cols);
        if padded.is_empty() {
            return Ok(());
        }
        let (ptr, sync) = d.buf.slice.device_ptr(&self.stream);
        // SAFETY: `ptr` addresses the tensor's rows * stride floats, exactly
        // `padded.len()`; the copy is queued on the stream that orders every
        // use of the buffer, and `padded` outlives it (synchronized below).
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                ptr,
                padded.as_ptr().cast(),
                padded.len() * 4,
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(drv("host-to-device copy"))?;
        drop(sync);
        self.stream.synchronize().map_err(drv("synchronize"))
    }

    fn read(&self, t: &TensorHandle) -> Result<Vec<f32>, BackendError> {
        let d = self.get_tensor(t)?;
        let (rows, cols, stride) = (d.rows, d.cols, d.stride());
        // `download` synchronizes the stream: an error of any op queued
        // before shows up here.
        let padded = self.download(&d.buf, rows * stride)?;
        Ok(unpad_rows(&padded, rows, cols))
    }

    fn free_tensor(&self, t: TensorHandle) -> Result<(), BackendError> {
        // Dropping the buffer frees it (stream-ordered: after every op
        // queued before) and uncounts it.
        self.tensors.remove(&t).map(drop)
    }

    fn supports(&self, op: &Op<'_>) -> bool {
        let fits = |v: usize| u32::try_from(v).is_ok();
        // Every kernel indexes rows and strides with 32-bit counts.
        let shapes_fit = op
            .inputs()
            .into_iter()
            .chain([op.output()])
            .all(|t| fits(t.rows()) && fits(x_stride(t.cols())));
        shapes_fit
            && match *op {
                Op::Linear { x, .. } => {
                    // gemm_*: gridDim.y = ceil(batch / 32) <= 65535.
                    x.rows() < GEMM_MIN_BATCH || x.rows().div_ceil(32) <= 65_535
                }
                Op::Attention { q, seqs, heads, .. } => {
                    let (s, d) = (q.rows() / seqs.max(1), q.cols() / heads.max(1));
                    (1..=ATT_MAX_D).contains(&d)
                        && s.div_ceil(ATT_QT) <= i32::MAX as usize
                        && heads <= 65_535
                        && seqs <= 65_535
                        && attention_smem_bytes(s, d) <= self.smem_optin
                }
                Op::TakeRows { offset, step, .. } => fits(offset) && fits(step),
                Op::LayerNorm { .. }
                | Op::Activation { .. }
                | Op::Add { .. }
                | Op::Softmax { .. } => true,
            }
    }

    fn run(&self, ops: &[Op<'_>]) -> Result<(), BackendError> {
        let ops = self.resolve_ops(ops)?;
        for op in &ops {
            self.enqueue_op(op)?;
        }
        Ok(())
    }

    fn run_timed(&self, ops: &[Op<'_>]) -> Result<OpTimings, BackendError> {
        let ops = self.resolve_ops(ops)?;
        // Compile and load the modules first: a module compiled between two
        // events would be timed as the op's device time.
        for stem in ["ops", "gemv", "gemm", "sparse"] {
            self.module_loaded(stem)?;
        }
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = || {
            let e = self.ctx.new_event(timing).map_err(drv("create event"))?;
            e.record(&self.stream).map_err(drv("record event"))?;
            Ok::<_, BackendError>(e)
        };
        // One event before the first op and one after each: op i is the
        // time between events i and i + 1, all on the one stream.
        let mut events = vec![event()?];
        for op in &ops {
            self.enqueue_op(op)?;
            events.push(event()?);
        }
        let elapsed = |a: &CudaEvent, b: &CudaEvent| {
            a.elapsed_ms(b)
                .map(|ms| ms as f64 / 1e3)
                .map_err(drv("event timing"))
        };
        let per_op_s = events
            .windows(2)
            .map(|w| elapsed(&w[0], &w[1]))
            .collect::<Result<Vec<_>, _>>()?;
        let total_s = elapsed(&events[0], &events[events.len() - 1])?;
        Ok(OpTimings {
            per_op_s,
            total_s,
            source: TimingSource::CudaEvent,
        })
    }

    fn memory(&self) -> MemoryReport {
        let (free, total) = match self.ctx.mem_get_info() {
            Ok((f, t)) => (Some(f as u64), Some(t as u64)),
            Err(_) => (None, None),
        };
        MemoryReport {
            live_bytes: self.mem.live(),
            peak_bytes: self.mem.peak(),
            reserved_bytes: self.pool_reserved_bytes(),
            device_used_bytes: free.zip(total).map(|(f, t)| t.saturating_sub(f)),
            device_total_bytes: total,
        }
    }

    fn quantize(&self, w: &Matrix, spec: RtnSpec) -> Result<QuantizedMatrix, BackendError> {
        let shape = rtn_shape(BackendKind::Cuda, w.rows(), w.cols(), spec)?;
        let (rows, stride, groups) = (w.rows(), shape.stride_bytes, shape.groups);
        let p = shape.params;
        let blocks = to_u32(groups.div_ceil(8), "quantize blocks")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let wd = self.upload_slice(w.data())?;
        // Codes start zeroed: the kernels never write the row padding.
        let codes = self.zeros::<u32>(rows * stride / 4)?;
        let scales = self.zeros::<u16>(groups)?;
        let zeros = if spec.kind == FormatKind::Q8 {
            let l = Launch::new("quantize_q8")?
                .arg("p", &p)?
                .arg("w", &wd)?
                .arg("codes", &codes)?
                .arg("scales", &scales)?;
            // SAFETY: w holds rows * cols floats, codes rows * stride
            // bytes, scales one per group.
            unsafe { l.launch(self, cfg) }?;
            Vec::new()
        } else {
            let zeros = self.zeros::<u8>(groups)?;
            let l = Launch::new("quantize_q4")?
                .arg("p", &p)?
                .arg("w", &wd)?
                .arg("codes", &codes)?
                .arg("scales", &scales)?
                .arg("zeros", &zeros)?;
            // SAFETY: sizes as above, zeros one per group.
            unsafe { l.launch(self, cfg) }?;
            self.download(&zeros, groups)?
        };
        let words = self.download(&codes, rows * stride / 4)?;
        let code_bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let scale_bits = self.download(&scales, groups)?;
        rtn_result(
            spec.kind,
            rows,
            w.cols(),
            shape.group,
            &code_bytes,
            &scale_bits,
            zeros,
        )
    }

    fn assign_levels(
        &self,
        values: &MatrixHandle,
        levels: &[f32],
        want_codes: bool,
    ) -> Result<LevelAssignment, BackendError> {
        super::check_assign_inputs(values, levels)?;
        let m = self.get(values)?;
        let n = m.rows() * m.cols();
        match self.compact_values(&m)? {
            Some(c) => self.run_assign(DevArg::F32(&c.slice), n, levels, want_codes),
            // An f32 matrix with cols % 4 == 0: its dense bytes are the
            // rows * cols floats themselves.
            None => self.run_assign(
                DevArg::Bytes(&m.parts.dense.slice, Elem::F32),
                n,
                levels,
                want_codes,
            ),
        }
    }

    fn time_matmul(
        &self,
        h: &MatrixHandle,
        batch: usize,
        runs: usize,
    ) -> Result<KernelTiming, BackendError> {
        let m = self.get(h)?;
        if batch == 0 {
            return Err(BackendError::Invalid("batch must be at least 1".into()));
        }
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0x5eed);
        let x: Vec<f32> = (0..batch * m.cols())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let xd = self.upload_padded(&x, batch, m.cols())?;
        let scaled = if m.params.prepares_input() {
            Some(self.zeros::<f32>(batch * x_stride(m.cols()))?)
        } else {
            None
        };
        let y = self.zeros::<f32>(batch * x_stride(m.rows()))?;
        // Weights smaller than the L2 cache would be timed from L2 after the
        // first run: overwrite a buffer twice the L2 size before each run
        // (outside the timed events), so every run reads the weights from
        // device memory as a real forward pass does.
        let l2 = self
            .ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .unwrap_or(0)
            .max(0) as usize;
        let mut flush = if l2 > 0 && (m.bytes() as usize) < 4 * l2 {
            Some(self.zeros::<u8>(2 * l2)?)
        } else {
            None
        };
        let samples = self.time_on_stream(
            3,
            runs,
            || match flush.as_mut() {
                Some(f) => self
                    .stream
                    .memset_zeros(&mut f.slice)
                    .map_err(drv("L2 flush")),
                None => Ok(()),
            },
            || self.enqueue_matmul(&m, batch, &xd, scaled.as_ref(), &y),
        )?;
        Ok(KernelTiming {
            samples_s: samples,
            source: TimingSource::CudaEvent,
        })
    }

    fn measure_bandwidth(&self, bytes: usize) -> Result<Bandwidth, BackendError> {
        let n = (bytes.max(1 << 20) / 256) * 256;
        let src = self.zeros::<u8>(n)?;
        let mut dst = self.zeros::<u8>(n)?;
        let samples = self.time_on_stream(
            2,
            15,
            || Ok(()),
            || {
                self.stream
                    .memcpy_dtod(&src.slice, &mut dst.slice)
                    .map_err(drv("device-to-device copy"))
            },
        )?;
        let seconds = KernelTiming {
            samples_s: samples,
            source: TimingSource::CudaEvent,
        }
        .median_s();
        let moved = 2 * n as u64;
        Ok(Bandwidth {
            bytes_per_s: moved as f64 / seconds,
            bytes_moved: moved,
            seconds,
            source: TimingSource::CudaEvent,
            method: "cuMemcpyDtoDAsync device-to-device copy (bytes read + written)",
        })
    }

    fn measure_flops(&self) -> Result<f64, BackendError> {
        const ITERS: u32 = 8192;
        let blocks = self.multiprocessors * 8;
        let threads = blocks as u64 * 256;
        let out = self.zeros::<f32>(threads as usize)?;
        // Looked up once, before the timing starts.
        let f = self.function("probe", "fma_rate")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let seed = 0.5f32;
        let samples = self.time_on_stream(
            1,
            7,
            || Ok(()),
            || {
                let l = Launch::new("fma_rate")?
                    .arg("out", &out)?
                    .arg("iters", &ITERS)?
                    .arg("seed", &seed)?;
                // SAFETY: out holds one float per thread; f is fma_rate.
                unsafe { l.launch_on(self, &f, cfg) }
            },
        )?;
        let seconds = KernelTiming {
            samples_s: samples,
            source: TimingSource::CudaEvent,
        }
        .median_s();
        // 8 chains x ITERS FMAs x 2 FLOPs per thread.
        Ok((threads * 8 * ITERS as u64 * 2) as f64 / seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_rows_are_padded_to_32_floats() {
        assert_eq!(x_stride(1), 32);
        assert_eq!(x_stride(32), 32);
        assert_eq!(x_stride(33), 64);
    }

    #[test]
    fn tensor_rows_pad_and_unpad() {
        let x: Vec<f32> = (0..3 * 5).map(|v| v as f32 + 0.5).collect();
        let p = pad_rows(&x, 3, 5);
        assert_eq!(p.len(), 3 * 32);
        assert_eq!(&p[32..37], &x[5..10]);
        assert!(p[37..64].iter().all(|&v| v == 0.0));
        assert_eq!(unpad_rows(&p, 3, 5), x);
        assert!(pad_rows(&[], 4, 0).is_empty() && unpad_rows(&[], 4, 0).is_empty());
    }

    /// The launch constants here are the `#define`s of kernels/ops.cu, and
    /// the shared-memory size is the kernel's own formula.
    #[test]
    fn attention_launch_matches_the_kernel() {
        let src = compile::module_source("ops").expect("ops.cu is embedded");
        for (name, value) in [
            ("ATT_QT", ATT_QT),
            ("ATT_KT", ATT_KT),
            ("ATT_THREADS", ATT_THREADS as usize),
            ("ATT_MAX_D", ATT_MAX_D),
        ] {
            assert!(
                src.contains(&format!("#define {name} {value}\n")),
                "kernels/ops.cu does not define {name} {value}"
            );
        }
        assert!(src.contains("float* kv = qs + ATT_QT * d4;"));
        assert!(src.contains("float* sc = kv + ATT_KT * ldk;"));
        assert!(src.contains("float* keep = sc + ATT_QT * S;"));
        assert!(src.contains("u32 att_ldq(u32 d) { return (d + 3u) & ~3u; }"));
        assert!(src.contains("u32 att_ldk(u32 d) { return ((d + 7u) & ~7u) + 4u; }"));
        // The longest sequence at BERT / CLIP head sizes fits the
        // default 48 KB; head size 256 needs the opt-in.
        assert!(attention_smem_bytes(512, 64) <= SMEM_DEFAULT);
        assert!(attention_smem_bytes(257, 64) <= SMEM_DEFAULT);
        assert!(attention_smem_bytes(512, 256) > SMEM_DEFAULT);
        assert_eq!(
            attention_smem_bytes(7, 125),
            (16 * 128 + 32 * 132 + 17 * 7) * 4
        );
        assert_eq!(
            attention_smem_bytes(512, 64),
            (16 * 64 + 32 * 68 + 17 * 512) * 4
        );
    }

    #[test]
    fn op_params_use_the_tensor_stride() {
        let p = op_params(77, 1000, 3, 5, 0.25);
        assert_eq!(
            (p.rows, p.cols, p.stride, p.aux_rows, p.offset),
            (77, 1000, 1024, 3, 5)
        );
        assert_eq!(p.eps_or_scale, 0.25);
        assert_eq!(
            float4_launch(77, 1000).grid_dim.0,
            (77u32 * 256).div_ceil(256)
        );
        assert_eq!(rows_launch(77).grid_dim.0, 10);
    }

    /// The launcher refuses arguments its description does not say (no GPU
    /// needed: parameter blocks and scalars need no device memory).
    #[test]
    fn launches_refuse_what_the_description_does_not_say() {
        let mp = MatmulParams::default();
        let op = op_params(1, 1, 0, 0, 0.0);
        let (iters, seed) = (5u32, 0.5f32);
        let refused = |r: Result<Launch<'_>, BackendError>, why: &str| match r {
            Err(BackendError::Invalid(m)) => assert!(m.starts_with("internal: "), "{why}: {m}"),
            Err(e) => panic!("{why}: {e}"),
            Ok(_) => panic!("{why}: accepted"),
        };
        assert!(Launch::new("gemm_q5").is_err());
        let gemm = || Launch::new("gemm_q4").expect("described");
        refused(gemm().arg("p", &op), "OpParams for a MatmulParams block");
        refused(gemm().arg("scales", &iters), "a scalar for a buffer");
        refused(gemm().arg("scale", &mp), "a name the kernel does not have");
        refused(
            gemm().arg("p", &mp).and_then(|l| l.arg("p", &mp)),
            "the same argument twice",
        );
        let fma = || Launch::new("fma_rate").expect("described");
        refused(fma().arg("iters", &seed), "an f32 for a u32 scalar");
        refused(fma().arg("seed", &iters), "a u32 for an f32 scalar");
        let partial = fma()
            .arg("iters", &iters)
            .and_then(|l| l.arg("seed", &seed))
            .expect("both scalars fit");
        assert!(partial.check_bound().is_err(), "launched without `out`");
        assert_eq!(partial.values.iter().flatten().count(), 2);
    }

    #[test]
    fn grid_stride_caps_blocks() {
        assert_eq!(grid_stride(0, 10).grid_dim.0, 1);
        assert_eq!(grid_stride(257, 10).grid_dim.0, 2);
        assert_eq!(grid_stride(1 << 30, 10).grid_dim.0, 10);
    }

    #[test]
    fn opening_without_a_driver_is_unavailable_not_a_panic() {
        match CudaBackend::from_env() {
            Ok(b) => assert_eq!(b.kind(), BackendKind::Cuda),
            Err(BackendError::Unavailable { backend, reason }) => {
                assert_eq!(backend, BackendKind::Cuda);
                assert!(!reason.is_empty());
                if !driver_available() {
                    assert!(reason.contains("libcuda not found"), "{reason}");
                }
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
