//! The wgpu backend: WGSL compute shaders (`shaders/*.wgsl`) on Vulkan, Metal,
//! DX12 or GL.
//!
//! One matmul, top to bottom, in the order of this file:
//! 1. [`WgpuBackend::open`] picks an adapter (environment variables
//!    `QUANTSCOPE_WGPU_ADAPTER` = index or name substring and
//!    `QUANTSCOPE_WGPU_BACKEND` = `vulkan|metal|dx12|gl`; default: the most
//!    capable non-CPU adapter on Vulkan/Metal/DX12, else a CPU one such as
//!    Mesa's lavapipe; GL only when asked, never as a silent fallback) and
//!    opens a device with the optional features it has (`shader-f16`,
//!    subgroups, timestamps; `QUANTSCOPE_WGPU_PORTABLE=1` turns them off).
//! 2. `upload` copies the packed parts into storage buffers laid out as
//!    `shaders/matrix.wgsl` documents; every buffer is counted.
//! 3. `tensor` makes X a device tensor: rows padded to `round_up(cols, 32)`
//!    floats, the padding zero (the provided `Backend::matmul` does this,
//!    runs one `Op::Linear` and reads Y back).
//! 4. `run` checks every op, then records all of their dispatches into one
//!    compute pass: for a Linear `scale_input` (activation scale), `gemv_*`
//!    (batch < 8) or `gemm_*`, `outliers_add`, `bias_add`, writing Y as a
//!    padded tensor too; the other ops are `shaders/ops.wgsl`. Pipelines come
//!    from a cache compiled on first use.
//! 5. `read` copies the tensor to a mappable buffer, waits and unpads; device
//!    errors, validation errors and device loss come back as [`BackendError`].

mod shaders;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::params::{
    AssignParams, AttentionParams, MatmulParams, OpParams, ACT_GELU, ACT_QUICK_GELU,
    FLAG_ACT_SCALE, FLAG_INT8_ACT, FLAG_OUTLIERS,
};
use super::plan::{rtn_result, rtn_shape, x_stride, DenseStep, MatmulPlan, GEMM_MIN_BATCH};
use super::table::{HandleTable, MemCounter};
use super::{
    check_ops, check_tensor_init, Activation, Backend, BackendError, BackendKind, Bandwidth,
    DeviceInfo, KernelTiming, LevelAssignment, MatrixHandle, MemoryReport, Op, OpTimings, RtnSpec,
    TensorHandle, TensorInit, TimingSource,
};
use half::f16;

use crate::format::{FormatKind, Matrix, Packed, QuantizedMatrix};
use shaders::{Family, Pipelines};

/// How long one wait for the device may take before it counts as lost.
const WAIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes copied between timed runs to evict the weights from a GPU's
/// last-level cache (H100/H200: 50 MiB of L2).
const FLUSH_BYTES: u64 = 128 << 20;

const BACKEND: BackendKind = BackendKind::Wgpu;

const INSTALL_HINT: &str = "install a Vulkan driver; on a machine without a GPU, Mesa's lavapipe \
     runs on the CPU: apt-get install mesa-vulkan-drivers libvulkan1";

pub(crate) fn device_error(message: String) -> BackendError {
    BackendError::Device {
        backend: BACKEND,
        message,
    }
}

fn unavailable(reason: String) -> BackendError {
    BackendError::Unavailable {
        backend: BACKEND,
        reason,
    }
}

/// How to choose the adapter and which optional features to use.
#[derive(Debug, Clone, Default)]
pub struct WgpuOptions {
    /// Adapter index (in enumeration order) or a case-insensitive name substring.
    pub adapter: Option<String>,
    /// `vulkan`, `metal`, `dx12` or `gl`; `None` = Vulkan, Metal and DX12.
    pub backend: Option<String>,
    /// Use only core WGSL (no `shader-f16`, subgroups or packed 4x8 integers),
    /// the fallback path of adapters that lack them.
    pub portable: bool,
    /// Turn off single optional features by name (`f16`, `subgroups`, `packed`).
    pub disable: Vec<String>,
}

impl WgpuOptions {
    /// Reads `QUANTSCOPE_WGPU_ADAPTER`, `QUANTSCOPE_WGPU_BACKEND` and
    /// `QUANTSCOPE_WGPU_PORTABLE` (`1`/`true`/`all`, or a comma list of
    /// `f16`, `subgroups`, `packed` to turn off only those).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let portable = var("QUANTSCOPE_WGPU_PORTABLE").unwrap_or_default();
        let all = ["1", "true", "all"]
            .iter()
            .any(|v| portable.eq_ignore_ascii_case(v));
        WgpuOptions {
            adapter: var("QUANTSCOPE_WGPU_ADAPTER"),
            backend: var("QUANTSCOPE_WGPU_BACKEND"),
            portable: all,
            disable: if all {
                Vec::new()
            } else {
                portable
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            },
        }
    }

    fn allows(&self, feature: &str) -> bool {
        !self.portable && !self.disable.iter().any(|d| d == feature)
    }
}

/// Optional device capabilities the shaders use.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Caps {
    /// `shader-f16`: native f16 decode.
    f16: bool,
    /// Subgroup operations: `subgroupAdd` reductions in GEMV.
    subgroups: bool,
    /// WGSL `packed_4x8_integer_dot_product`: `unpack4xI8` for q8.
    packed: bool,
    /// Timestamps around compute passes.
    timestamps: bool,
    /// Timestamps anywhere in an encoder (around buffer copies).
    timestamps_in_encoders: bool,
}

/// A device buffer whose bytes are counted while it lives.
struct Tracked {
    buf: wgpu::Buffer,
    size: u64,
    counters: Arc<MemCounter>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counters.sub(self.size);
        self.buf.destroy();
    }
}

/// A packed matrix on the device (layout: `shaders/matrix.wgsl`).
struct DeviceMatrix {
    params: MatmulParams,
    kind: FormatKind,
    w: Tracked,
    aux: Tracked,
    csr: Option<Tracked>,
    act: Option<Tracked>,
}

/// An f32 tensor on the device: `rows x x_stride(cols)` floats, the padding
/// columns zero (no kernel writes them), so it is X of a matmul as it is.
struct DeviceTensor {
    buf: Tracked,
}

/// Attention limits of `ops.wgsl`: keys per sequence (the score tile),
/// columns per head (the query tile) and the workgroup memory both take.
const ATTENTION_MAX_SEQ: usize = 512;
const ATTENTION_MAX_HEAD_DIM: usize = 128;
const ATTENTION_QUERY_TILE: usize = 8;
const ATTENTION_SHARED_BYTES: u32 = (4096 + 1024 + 256 + 256) * 4;

/// Invocations per workgroup of the elementwise ops in `ops.wgsl`.
const OPS_WG: usize = 256;

/// One dispatch, ready to record.
struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32, u32),
}

/// The wgpu backend. See the module documentation for the flow of a matmul.
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    caps: Caps,
    limits: wgpu::Limits,
    pipelines: Pipelines,
    matrices: HandleTable<DeviceMatrix>,
    tensors: HandleTable<DeviceTensor>,
    counters: Arc<MemCounter>,
    lost: Arc<Mutex<Option<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    dummy: Tracked,
}

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete-gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated-gpu",
        wgpu::DeviceType::VirtualGpu => "virtual-gpu",
        wgpu::DeviceType::Other => "other",
        wgpu::DeviceType::Cpu => "software (cpu)",
    }
}

fn parse_backends(name: Option<&str>) -> Result<wgpu::Backends, BackendError> {
    match name.map(|s| s.to_ascii_lowercase()).as_deref() {
        None => Ok(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
        Some("vulkan") => Ok(wgpu::Backends::VULKAN),
        Some("metal") => Ok(wgpu::Backends::METAL),
        Some("dx12") => Ok(wgpu::Backends::DX12),
        Some("gl") => Ok(wgpu::Backends::GL),
        Some(other) => Err(BackendError::Invalid(format!(
            "unknown wgpu backend '{other}' (expected vulkan, metal, dx12 or gl)"
        ))),
    }
}

impl WgpuBackend {
    /// Opens the device chosen by the `QUANTSCOPE_WGPU_*` environment variables.
    pub fn from_env() -> Result<WgpuBackend, BackendError> {
        Self::open(&WgpuOptions::from_env())
    }

    /// Opens the device chosen by `opts`.
    pub fn open(opts: &WgpuOptions) -> Result<WgpuBackend, BackendError> {
        // Instance: only the backends asked for, so GL never stands in silently.
        let backends = parse_backends(opts.backend.as_deref())?;
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        desc.flags = wgpu::InstanceFlags::empty();
        let instance = wgpu::Instance::new(desc);

        // Adapter: by index or name when asked, else the most capable one.
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        if adapters.is_empty() {
            return Err(unavailable(format!(
                "no wgpu adapter on {backends:?}; {INSTALL_HINT}"
            )));
        }
        let adapter = match &opts.adapter {
            Some(sel) => {
                let names: Vec<String> = adapters
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{i}: {}", a.get_info().name))
                    .collect();
                let found = match sel.parse::<usize>() {
                    Ok(i) => adapters.get(i),
                    Err(_) => adapters.iter().find(|a| {
                        a.get_info()
                            .name
                            .to_ascii_lowercase()
                            .contains(&sel.to_ascii_lowercase())
                    }),
                };
                found.ok_or_else(|| {
                    unavailable(format!(
                        "no adapter matches '{sel}' (adapters: {})",
                        names.join(", ")
                    ))
                })?
            }
            None => adapters
                .iter()
                .min_by_key(|a| rank(a.get_info().device_type))
                .ok_or_else(|| unavailable(format!("no wgpu adapter; {INSTALL_HINT}")))?,
        };
        let ainfo = adapter.get_info();

        // Device: the optional features the shaders can use, the adapter's limits.
        let have = adapter.features();
        let lang = instance.wgsl_language_features();
        let caps = Caps {
            f16: opts.allows("f16") && have.contains(wgpu::Features::SHADER_F16),
            subgroups: opts.allows("subgroups") && have.contains(wgpu::Features::SUBGROUP),
            packed: opts.allows("packed")
                && lang.contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct),
            timestamps: have.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_in_encoders: have.contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            ),
        };
        let mut features = wgpu::Features::empty();
        if caps.f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        if caps.subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if caps.timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if caps.timestamps_in_encoders {
            features |= wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("quantscope"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| unavailable(format!("cannot open {}: {e}", ainfo.name)))?;

        // Errors: never the default panic; device loss is remembered and reported.
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(shaders::error_text(&e));
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(format!("device lost ({reason:?}): {message}"));
            }
        });

        let mut feature_names = Vec::new();
        for (on, name) in [
            (caps.f16, "shader-f16"),
            (caps.subgroups, "subgroups"),
            (caps.packed, "packed-4x8-integer"),
            (caps.timestamps, "timestamp-query"),
            (
                caps.timestamps_in_encoders,
                "timestamp-query-inside-encoders",
            ),
        ] {
            if on {
                feature_names.push(name.to_string());
            }
        }
        if opts.portable {
            feature_names.push("portable-wgsl".into());
        }
        let info = DeviceInfo {
            backend: BACKEND,
            name: ainfo.name.clone(),
            device_type: type_name(ainfo.device_type).into(),
            driver: format!(
                "{:?}, {} {}",
                ainfo.backend, ainfo.driver, ainfo.driver_info
            )
            .trim()
            .to_string(),
            memory_total_bytes: None,
            compute_capability: None,
            features: feature_names,
        };
        let counters = Arc::new(MemCounter::default());
        let pipelines = Pipelines::new(&device);
        let dummy = Self::make_buffer(
            &device,
            &limits,
            &counters,
            "dummy",
            16,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
        )?;
        Ok(WgpuBackend {
            device,
            queue,
            info,
            caps,
            limits,
            pipelines,
            matrices: HandleTable::new(BACKEND),
            tensors: HandleTable::new(BACKEND),
            counters,
            lost,
            errors,
            dummy,
        })
    }

    /// Whether the portable (core WGSL) kernels are in use for every optional feature.
    pub fn is_portable(&self) -> bool {
        !(self.caps.f16 || self.caps.subgroups || self.caps.packed)
    }

    // ---- buffers -------------------------------------------------------

    fn make_buffer(
        device: &wgpu::Device,
        limits: &wgpu::Limits,
        counters: &Arc<MemCounter>,
        what: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<Tracked, BackendError> {
        // Round up to 16 bytes: copies need 4, vec4 views need 16.
        let size = size.max(16).div_ceil(16) * 16;
        if usage.contains(wgpu::BufferUsages::STORAGE)
            && size > limits.max_storage_buffer_binding_size
        {
            return Err(BackendError::TooLarge {
                backend: BACKEND,
                what: what.into(),
                bytes: size,
                limit_name: "max_storage_buffer_binding_size",
                limit: limits.max_storage_buffer_binding_size,
            });
        }
        if size > limits.max_buffer_size {
            return Err(BackendError::TooLarge {
                backend: BACKEND,
                what: what.into(),
                bytes: size,
                limit_name: "max_buffer_size",
                limit: limits.max_buffer_size,
            });
        }
        let buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage,
            mapped_at_creation: false,
        });
        counters.add(size);
        Ok(Tracked {
            buf,
            size,
            counters: counters.clone(),
        })
    }

    fn buffer(
        &self,
        what: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<Tracked, BackendError> {
        Self::make_buffer(
            &self.device,
            &self.limits,
            &self.counters,
            what,
            size,
            usage,
        )
    }

    /// A storage buffer holding `bytes` (zero padded to 16 bytes).
    fn storage_with(
        &self,
        what: &str,
        bytes: &[u8],
        extra: wgpu::BufferUsages,
    ) -> Result<Tracked, BackendError> {
        let b = self.buffer(
            what,
            bytes.len() as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
        )?;
        self.write(&b, bytes);
        Ok(b)
    }

    fn uniform<T: bytemuck::Pod>(&self, what: &str, value: &T) -> Result<Tracked, BackendError> {
        let b = self.buffer(
            what,
            std::mem::size_of::<T>() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        self.write(&b, bytemuck::bytes_of(value));
        Ok(b)
    }

    fn write(&self, b: &Tracked, bytes: &[u8]) {
        let n = bytes.len() / 4 * 4;
        if n > 0 {
            self.queue.write_buffer(&b.buf, 0, &bytes[..n]);
        }
        if n < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - n].copy_from_slice(&bytes[n..]);
            self.queue.write_buffer(&b.buf, n as u64, &tail);
        }
    }

    /// Fills an output buffer with NaN so that a value a kernel forgot to
    /// write fails every comparison.
    fn poison(&self, b: &Tracked) {
        let nan = vec![0xFFu8; b.size as usize];
        self.queue.write_buffer(&b.buf, 0, &nan);
    }

    // ---- submission and errors ------------------------------------------

    fn check_health(&self) -> Result<(), BackendError> {
        if let Some(msg) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(device_error(msg));
        }
        if let Ok(mut errs) = self.errors.lock() {
            if !errs.is_empty() {
                let msg = errs.join("; ");
                errs.clear();
                return Err(device_error(msg));
            }
        }
        Ok(())
    }

    /// Blocks until the queue is idle; a lost device or a timeout is an error.
    fn wait(&self) -> Result<(), BackendError> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(WAIT_TIMEOUT),
            })
            .map_err(|e| device_error(format!("waiting for the device: {e}")))?;
        self.check_health()
    }

    fn submit(&self, enc: wgpu::CommandEncoder) -> Result<(), BackendError> {
        self.check_health()?;
        self.queue.submit([enc.finish()]);
        Ok(())
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Copies `src` to a mappable buffer and returns its first `len` bytes.
    fn read_back(&self, src: &Tracked, len: u64) -> Result<Vec<u8>, BackendError> {
        let staging = self.buffer(
            "readback",
            src.size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut enc = self.encoder();
        enc.copy_buffer_to_buffer(&src.buf, 0, &staging.buf, 0, src.size);
        self.submit(enc)?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.buf.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(device_error(format!("mapping the output: {e}"))),
            Err(_) => return Err(device_error("the output buffer was never mapped".into())),
        }
        let out = {
            let view = staging
                .buf
                .get_mapped_range(..)
                .map_err(|e| device_error(format!("reading the output: {e:?}")))?;
            view[..len.min(src.size) as usize].to_vec()
        };
        staging.buf.unmap();
        Ok(out)
    }

    fn read_f32(&self, src: &Tracked, n: usize) -> Result<Vec<f32>, BackendError> {
        let bytes = self.read_back(src, (n * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn read_u32(&self, src: &Tracked, n: usize) -> Result<Vec<u32>, BackendError> {
        let bytes = self.read_back(src, (n * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    // ---- dispatches -----------------------------------------------------

    /// Workgroup counts for `n` workgroups: x first, wrapping into y past the limit.
    fn groups_1d(&self, n: u32) -> (u32, u32, u32) {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if n <= max {
            (n.max(1), 1, 1)
        } else {
            (max, n.div_ceil(max), 1)
        }
    }

    fn dispatch(
        &self,
        family: Family,
        entry: &'static str,
        uniform: &Tracked,
        storage: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) -> Result<Dispatch, BackendError> {
        self.dispatch_with(family, entry, None, uniform, storage, groups)
    }

    /// [`Self::dispatch`] with the `GEMV_BATCH` override constant set.
    fn dispatch_with(
        &self,
        family: Family,
        entry: &'static str,
        batch: Option<u32>,
        uniform: &Tracked,
        storage: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) -> Result<Dispatch, BackendError> {
        let pipeline = self
            .pipelines
            .get(&self.device, &self.caps, family, entry, batch)?;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.buf.as_entire_binding(),
        }];
        if let Some(binding) = family.extra_uniform() {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: uniform.buf.as_entire_binding(),
            });
        }
        for (i, b) in storage.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: self.pipelines.bind_group_layout(family)?,
            entries: &entries,
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            groups,
        })
    }

    /// Records `dispatches` in one compute pass, with timestamps `(begin, end)`
    /// written at its start and end when given.
    fn record(
        enc: &mut wgpu::CommandEncoder,
        dispatches: &[Dispatch],
        timestamps: Option<(&wgpu::QuerySet, u32)>,
    ) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: timestamps.map(|(qs, i)| wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: Some(i),
                end_of_pass_write_index: Some(i + 1),
            }),
        });
        for d in dispatches {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, d.groups.2);
        }
    }

    fn run_dispatches(&self, dispatches: &[Dispatch]) -> Result<(), BackendError> {
        let mut enc = self.encoder();
        Self::record(&mut enc, dispatches, None);
        self.submit(enc)
    }

    fn get(&self, h: &MatrixHandle) -> Result<Arc<DeviceMatrix>, BackendError> {
        self.matrices.get(h)
    }

    /// The storage bindings 1..=6 of a matrix kernel.
    fn matrix_bindings<'a>(
        &'a self,
        m: &'a DeviceMatrix,
        x: &'a wgpu::Buffer,
        y: &'a wgpu::Buffer,
    ) -> [&'a wgpu::Buffer; 6] {
        [
            &m.w.buf,
            &m.aux.buf,
            m.csr.as_ref().map(|b| &b.buf).unwrap_or(&self.dummy.buf),
            m.act.as_ref().map(|b| &b.buf).unwrap_or(&self.dummy.buf),
            x,
            y,
        ]
    }

    /// The dispatches of `Y = X · Wᵀ`, X already on the device in the padded
    /// layout. Returns them with the buffers they use (kept alive by the caller).
    fn matmul_plan(
        &self,
        m: &DeviceMatrix,
        x: &Tracked,
        y: &Tracked,
        batch: usize,
    ) -> Result<(Vec<Dispatch>, Vec<Tracked>), BackendError> {
        let mut params = m.params;
        params.batch = batch as u32;
        let uniform = self.uniform("matmul params", &params)?;
        let xs = x_stride(params.cols as usize);
        let plan = MatmulPlan::new(&params, batch, self.caps.packed);
        let mut dispatches = Vec::new();
        let mut keep = Vec::new();
        let scaled = match plan.scale_input {
            true => Some(self.buffer(
                "scaled input",
                (batch * xs * 4) as u64,
                wgpu::BufferUsages::STORAGE,
            )?),
            false => None,
        };
        if let Some(scaled) = &scaled {
            let n = (batch * xs).div_ceil(256) as u32;
            dispatches.push(self.dispatch(
                Family::Sparse,
                "scale_input",
                &uniform,
                &self.matrix_bindings(m, &x.buf, &scaled.buf),
                self.groups_1d(n),
            )?);
        }
        let input = scaled.as_ref().map(|b| &b.buf).unwrap_or(&x.buf);
        let bindings = self.matrix_bindings(m, input, &y.buf);
        let kind = m.kind;
        if plan.dense == DenseStep::GemvDp4 {
            // X to int8 blocks, then integer dot products (gemv_dp4.wgsl).
            let nblk = batch * xs / 16;
            let xq = self.buffer(
                "quantized input",
                (nblk * 5 * 4) as u64,
                wgpu::BufferUsages::STORAGE,
            )?;
            let d = &self.dummy.buf;
            dispatches.push(self.dispatch(
                Family::GemvDp4,
                "quantize_input_q8",
                &uniform,
                &[&m.w.buf, &m.aux.buf, d, input, d, &xq.buf],
                self.groups_1d(nblk.div_ceil(256) as u32),
            )?);
            dispatches.push(self.dispatch_with(
                Family::GemvDp4,
                "gemv_q8_dp4",
                Some(batch as u32),
                &uniform,
                &[&m.w.buf, &m.aux.buf, &xq.buf, d, d, &y.buf],
                self.groups_1d(params.rows),
            )?);
            keep.push(xq);
        } else if plan.dense == DenseStep::Gemv {
            dispatches.push(self.dispatch_with(
                Family::Gemv,
                gemv_entry(kind),
                Some(batch as u32),
                &uniform,
                &bindings,
                self.groups_1d(params.rows),
            )?);
        } else {
            let gx = params.rows.div_ceil(64);
            let gy = (batch as u32).div_ceil(64);
            let max = self.limits.max_compute_workgroups_per_dimension;
            if gx > max || gy > max {
                return Err(BackendError::TooLarge {
                    backend: BACKEND,
                    what: "gemm dispatch".into(),
                    bytes: u64::from(gx.max(gy)),
                    limit_name: "max_compute_workgroups_per_dimension",
                    limit: u64::from(max),
                });
            }
            dispatches.push(self.dispatch(
                Family::Gemm,
                gemm_entry(kind),
                &uniform,
                &bindings,
                (gx, gy, 1),
            )?);
        }
        if plan.outliers {
            let n = (batch * params.rows as usize).div_ceil(256) as u32;
            dispatches.push(self.dispatch(
                Family::Sparse,
                "outliers_add",
                &uniform,
                &bindings,
                self.groups_1d(n),
            )?);
        }
        keep.extend(scaled);
        keep.push(uniform);
        Ok((dispatches, keep))
    }

    // ---- tensors and ops ---------------------------------------------------

    fn get_tensor(&self, t: &TensorHandle) -> Result<Arc<DeviceTensor>, BackendError> {
        self.tensors.get(t)
    }

    /// A new device tensor buffer of `rows x x_stride(cols)` floats holding
    /// `fill(row)` in each row's first `cols` (zeros when `fill` is None:
    /// wgpu zero-initializes buffers), the padding zero.
    fn tensor_buffer(
        &self,
        what: &str,
        rows: usize,
        cols: usize,
        values: Option<&[f32]>,
    ) -> Result<Tracked, BackendError> {
        let xs = x_stride(cols);
        let n = rows
            .checked_mul(xs)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| BackendError::Invalid(format!("tensor {rows}x{cols} is too large")))?;
        let b = self.buffer(
            what,
            n as u64,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )?;
        if let Some(v) = values {
            self.write_padded(&b, v, cols);
        }
        Ok(b)
    }

    /// Writes row-major `rows x cols` values into a padded tensor buffer.
    fn write_padded(&self, b: &Tracked, values: &[f32], cols: usize) {
        let xs = x_stride(cols);
        let rows = values.len() / cols.max(1);
        let mut padded = vec![0.0f32; rows * xs];
        for (dst, src) in padded.chunks_mut(xs).zip(values.chunks(cols.max(1))) {
            dst[..cols].copy_from_slice(src);
        }
        self.write(b, bytemuck::cast_slice(&padded));
    }

    /// Groups of the elementwise ops: one invocation per valid element.
    fn groups_elementwise(&self, t: &TensorHandle) -> (u32, u32, u32) {
        self.groups_1d(t.len().div_ceil(OPS_WG) as u32)
    }

    /// `OpParams` of a row-wise or elementwise op over `t`'s shape.
    fn op_params(t: &TensorHandle) -> OpParams {
        OpParams {
            rows: t.rows() as u32,
            cols: t.cols() as u32,
            stride: x_stride(t.cols()) as u32,
            ..OpParams::default()
        }
    }

    /// The dispatches of one op, with the buffers they use kept in `keep`
    /// (tensors and parameter blocks live until the caller has submitted).
    fn op_dispatches(
        &self,
        op: &Op<'_>,
        keep: &mut Vec<Tracked>,
        held: &mut Vec<Arc<DeviceTensor>>,
    ) -> Result<Vec<Dispatch>, BackendError> {
        let mut tensor = |t: &TensorHandle| -> Result<Arc<DeviceTensor>, BackendError> {
            let d = self.get_tensor(t)?;
            held.push(d.clone());
            Ok(d)
        };
        let dummy = &self.dummy.buf;
        let ops_dispatch = |entry: &'static str,
                            uniform: Tracked,
                            bufs: [&wgpu::Buffer; 5],
                            groups: (u32, u32, u32),
                            keep: &mut Vec<Tracked>|
         -> Result<Dispatch, BackendError> {
            let d = self.dispatch(Family::Ops, entry, &uniform, &bufs, groups)?;
            keep.push(uniform);
            Ok(d)
        };
        match *op {
            Op::Linear { x, w, bias, y } => {
                let m = self.get(w)?;
                let (xt, yt) = (tensor(x)?, tensor(y)?);
                let bt = bias.map(&mut tensor).transpose()?;
                let (mut ds, k) = self.matmul_plan(&m, &xt.buf, &yt.buf, x.rows())?;
                keep.extend(k);
                if let Some(bt) = bt {
                    let u = self.uniform("bias_add params", &Self::op_params(y))?;
                    let bufs = [dummy, &bt.buf.buf, dummy, dummy, &yt.buf.buf];
                    ds.push(ops_dispatch(
                        "bias_add",
                        u,
                        bufs,
                        self.groups_elementwise(y),
                        keep,
                    )?);
                }
                Ok(ds)
            }
            Op::LayerNorm {
                x,
                gamma,
                beta,
                eps,
                y,
            } => {
                let (xt, gt, bt, yt) = (tensor(x)?, tensor(gamma)?, tensor(beta)?, tensor(y)?);
                let mut p = Self::op_params(x);
                p.eps_or_scale = eps;
                let u = self.uniform("layer_norm params", &p)?;
                let bufs = [&xt.buf.buf, &gt.buf.buf, &bt.buf.buf, dummy, &yt.buf.buf];
                let groups = self.groups_1d(x.rows() as u32);
                Ok(vec![ops_dispatch("layer_norm", u, bufs, groups, keep)?])
            }
            Op::Activation { kind, x, y } => {
                let (xt, yt) = (tensor(x)?, tensor(y)?);
                let mut p = Self::op_params(x);
                let entry = match kind {
                    Activation::Gelu => {
                        p.kind = ACT_GELU;
                        "gelu"
                    }
                    Activation::QuickGelu => {
                        p.kind = ACT_QUICK_GELU;
                        "quick_gelu"
                    }
                };
                let u = self.uniform("activation params", &p)?;
                let bufs = [&xt.buf.buf, dummy, dummy, dummy, &yt.buf.buf];
                Ok(vec![ops_dispatch(
                    entry,
                    u,
                    bufs,
                    self.groups_elementwise(x),
                    keep,
                )?])
            }
            Op::Add { a, b, y } => {
                let (at, bt, yt) = (tensor(a)?, tensor(b)?, tensor(y)?);
                let mut p = Self::op_params(a);
                p.aux_rows = b.rows() as u32;
                let u = self.uniform("add params", &p)?;
                let bufs = [&at.buf.buf, &bt.buf.buf, dummy, dummy, &yt.buf.buf];
                Ok(vec![ops_dispatch(
                    "add",
                    u,
                    bufs,
                    self.groups_elementwise(a),
                    keep,
                )?])
            }
            Op::Softmax { x, mask, scale, y } => {
                let (xt, yt) = (tensor(x)?, tensor(y)?);
                let mt = mask.map(&mut tensor).transpose()?;
                let mut p = Self::op_params(x);
                p.aux_rows = mask.map_or(0, |m| (x.rows() / m.rows()) as u32);
                p.eps_or_scale = scale;
                let u = self.uniform("softmax params", &p)?;
                let mb = mt.as_ref().map_or(dummy, |m| &m.buf.buf);
                let bufs = [&xt.buf.buf, dummy, dummy, mb, &yt.buf.buf];
                let groups = self.groups_1d(x.rows() as u32);
                Ok(vec![ops_dispatch("softmax", u, bufs, groups, keep)?])
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
                let (qt, kt, vt, yt) = (tensor(q)?, tensor(k)?, tensor(v)?, tensor(y)?);
                let mt = mask.map(&mut tensor).transpose()?;
                let s = q.rows() / seqs;
                let d = q.cols() / heads;
                let p = AttentionParams {
                    seqs: seqs as u32,
                    seq_len: s as u32,
                    heads: heads as u32,
                    head_dim: d as u32,
                    stride: x_stride(q.cols()) as u32,
                    has_mask: mask.is_some() as u32,
                    scale: 1.0 / (d as f32).sqrt(),
                    _pad0: 0,
                };
                let u = self.uniform("attention params", &p)?;
                let mb = mt.as_ref().map_or(dummy, |m| &m.buf.buf);
                let bufs = [&qt.buf.buf, &kt.buf.buf, &vt.buf.buf, mb, &yt.buf.buf];
                let groups = (
                    s.div_ceil(ATTENTION_QUERY_TILE) as u32,
                    heads as u32,
                    seqs as u32,
                );
                Ok(vec![ops_dispatch("attention", u, bufs, groups, keep)?])
            }
            Op::TakeRows { x, offset, step, y } => {
                let (xt, yt) = (tensor(x)?, tensor(y)?);
                let mut p = Self::op_params(y);
                p.aux_rows = step as u32;
                p.offset = offset as u32;
                let u = self.uniform("take_rows params", &p)?;
                let bufs = [&xt.buf.buf, dummy, dummy, dummy, &yt.buf.buf];
                Ok(vec![ops_dispatch(
                    "take_rows",
                    u,
                    bufs,
                    self.groups_elementwise(y),
                    keep,
                )?])
            }
        }
    }

    /// Whether 32-bit element indices and the dispatch limits hold for a
    /// tensor of `rows x cols` run by the ops kernels.
    fn fits_ops(&self, t: &TensorHandle) -> bool {
        let max_groups = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let elems = (t.rows() as u64) * (x_stride(t.cols()) as u64);
        elems <= u64::from(u32::MAX) && (t.rows() as u64) <= max_groups * max_groups
    }

    // ---- timing -------------------------------------------------------------

    /// Times `runs` executions of `dispatches` (one compute pass each) after a
    /// warm-up, with device timestamps when the device has them.
    ///
    /// With `flush`, a copy of a buffer larger than a GPU's last-level cache
    /// runs (untimed) before every timed run, so the weights come from DRAM
    /// as they would in a model with many layers, not from the cache.
    fn time_dispatches(
        &self,
        dispatches: &[Dispatch],
        runs: usize,
        flush: bool,
    ) -> Result<KernelTiming, BackendError> {
        let runs = runs.clamp(1, 1024);
        let flush = if flush {
            let size = FLUSH_BYTES.min(self.limits.max_buffer_size) / 16 * 16;
            Some((
                self.buffer("cache flush source", size, wgpu::BufferUsages::COPY_SRC)?,
                self.buffer(
                    "cache flush destination",
                    size,
                    wgpu::BufferUsages::COPY_DST,
                )?,
            ))
        } else {
            None
        };
        let flush_cache = |enc: &mut wgpu::CommandEncoder| {
            if let Some((a, b)) = &flush {
                enc.copy_buffer_to_buffer(&a.buf, 0, &b.buf, 0, a.size);
            }
        };
        // Warm-up: first use compiles, caches fill.
        for _ in 0..2 {
            self.run_dispatches(dispatches)?;
        }
        self.wait()?;
        if self.caps.timestamps {
            let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: (2 * runs) as u32,
            });
            let resolve = self.buffer(
                "timestamps",
                (16 * runs) as u64,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            )?;
            let mut enc = self.encoder();
            for i in 0..runs {
                flush_cache(&mut enc);
                Self::record(&mut enc, dispatches, Some((&qs, (2 * i) as u32)));
            }
            enc.resolve_query_set(&qs, 0..(2 * runs) as u32, &resolve.buf, 0);
            self.submit(enc)?;
            let ticks: Vec<u64> =
                bytemuck::pod_collect_to_vec(&self.read_back(&resolve, (16 * runs) as u64)?);
            let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
            let samples = ticks
                .chunks(2)
                .map(|t| t[1].saturating_sub(t[0]) as f64 * period)
                .collect();
            return Ok(KernelTiming {
                samples_s: samples,
                source: TimingSource::DeviceTimestamp,
            });
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut enc = self.encoder();
            flush_cache(&mut enc);
            self.submit(enc)?;
            self.wait()?;
            let t = Instant::now();
            self.run_dispatches(dispatches)?;
            self.wait()?;
            samples.push(t.elapsed().as_secs_f64());
        }
        Ok(KernelTiming {
            samples_s: samples,
            source: TimingSource::WallClock,
        })
    }
}

fn gemv_entry(kind: FormatKind) -> &'static str {
    match kind {
        FormatKind::F32 => "gemv_f32",
        FormatKind::F16 => "gemv_f16",
        FormatKind::Bf16 => "gemv_bf16",
        FormatKind::Q8 => "gemv_q8",
        FormatKind::Q4 => "gemv_q4",
        FormatKind::Lut4 => "gemv_lut4",
    }
}

fn gemm_entry(kind: FormatKind) -> &'static str {
    match kind {
        FormatKind::F32 => "gemm_f32",
        FormatKind::F16 => "gemm_f16",
        FormatKind::Bf16 => "gemm_bf16",
        FormatKind::Q8 => "gemm_q8",
        FormatKind::Q4 => "gemm_q4",
        FormatKind::Lut4 => "gemm_lut4",
    }
}

fn dequantize_entry(kind: FormatKind) -> &'static str {
    match kind {
        FormatKind::F32 => "dequantize_f32",
        FormatKind::F16 => "dequantize_f16",
        FormatKind::Bf16 => "dequantize_bf16",
        FormatKind::Q8 => "dequantize_q8",
        FormatKind::Q4 => "dequantize_q4",
        FormatKind::Lut4 => "dequantize_lut4",
    }
}

/// `aux` of `shaders/matrix.wgsl`: 16 codebook words, f16 scale pairs, u8 zero quads.
fn aux_bytes(m: &QuantizedMatrix) -> Vec<u8> {
    let groups = m.rows() * m.groups_per_row();
    let mut codebook = [0.0f32; 16];
    let mut scales: &[f16] = &[];
    let mut zeros: &[u8] = &[];
    match m.packed() {
        Packed::Q8(q) => scales = &q.scales,
        Packed::Q4(q) => {
            scales = &q.scales;
            zeros = &q.zeros;
        }
        Packed::Lut4(q) => {
            scales = &q.scales;
            codebook = q.codebook;
        }
        Packed::F32(_) | Packed::F16(_) | Packed::Bf16(_) => {}
    }
    let mut out: Vec<u8> = bytemuck::cast_slice(&codebook).to_vec();
    if !scales.is_empty() {
        let mut s: Vec<u8> = bytemuck::cast_slice(scales).to_vec();
        s.resize(groups.div_ceil(2) * 4, 0);
        out.extend_from_slice(&s);
    }
    if !zeros.is_empty() {
        let mut z = zeros.to_vec();
        z.resize(groups.div_ceil(4) * 4, 0);
        out.extend_from_slice(&z);
    }
    out
}

fn dense_bytes(m: &QuantizedMatrix) -> &[u8] {
    match m.packed() {
        Packed::F32(v) => bytemuck::cast_slice(v),
        Packed::F16(v) => bytemuck::cast_slice(v),
        Packed::Bf16(v) => bytemuck::cast_slice(v),
        Packed::Q8(q) => bytemuck::cast_slice(&q.codes),
        Packed::Q4(q) => bytemuck::cast_slice(&q.codes),
        Packed::Lut4(q) => bytemuck::cast_slice(&q.codes),
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BACKEND
    }

    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn upload(&self, m: &QuantizedMatrix) -> Result<MatrixHandle, BackendError> {
        let none = wgpu::BufferUsages::empty();
        let w = self.storage_with("matrix codes", dense_bytes(m), none)?;
        let aux = self.storage_with("matrix scales", &aux_bytes(m), none)?;
        let csr = match m.outliers() {
            Some(o) => {
                let mut words: Vec<u32> = o.row_ptr.clone();
                words.extend_from_slice(&o.col_idx);
                let mut vals: Vec<u8> = bytemuck::cast_slice(&o.values).to_vec();
                vals.resize(o.values.len().div_ceil(2) * 4, 0);
                let mut bytes: Vec<u8> = bytemuck::cast_slice(&words).to_vec();
                bytes.extend_from_slice(&vals);
                Some(self.storage_with("matrix outliers", &bytes, none)?)
            }
            None => None,
        };
        let act = match m.act_scale() {
            Some(a) => Some(self.storage_with("act scale", bytemuck::cast_slice(a), none)?),
            None => None,
        };
        let params = MatmulParams::new(m, 0);
        let bytes = w.size
            + aux.size
            + csr.as_ref().map_or(0, |b| b.size)
            + act.as_ref().map_or(0, |b| b.size);
        let dm = DeviceMatrix {
            params,
            kind: m.kind(),
            w,
            aux,
            csr,
            act,
        };
        let id = self.matrices.insert(dm)?;
        Ok(MatrixHandle::new(id, BACKEND, m, bytes))
    }

    fn dequantize(&self, h: &MatrixHandle) -> Result<Vec<f32>, BackendError> {
        let m = self.get(h)?;
        let n = h.rows() * h.cols();
        let y = self.buffer(
            "dequantized",
            (n * 4) as u64,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )?;
        self.poison(&y);
        let uniform = self.uniform("dequantize params", &m.params)?;
        let d = self.dispatch(
            Family::Dequantize,
            dequantize_entry(m.kind),
            &uniform,
            &self.matrix_bindings(&m, &self.dummy.buf, &y.buf),
            self.groups_1d(m.params.rows),
        )?;
        self.run_dispatches(&[d])?;
        self.read_f32(&y, n)
    }

    fn free(&self, h: MatrixHandle) -> Result<(), BackendError> {
        self.matrices.remove(&h).map(drop)
    }

    fn tensor(
        &self,
        rows: usize,
        cols: usize,
        init: TensorInit<'_>,
    ) -> Result<TensorHandle, BackendError> {
        check_tensor_init(rows, cols, &init)?;
        let poison;
        let values = match init {
            TensorInit::Zeros => None,
            TensorInit::Poison => {
                poison = vec![f32::NAN; rows * cols];
                Some(poison.as_slice())
            }
            TensorInit::Data(d) => Some(d),
        };
        let buf = self.tensor_buffer("tensor", rows, cols, values)?;
        let id = self.tensors.insert(DeviceTensor { buf })?;
        Ok(TensorHandle::new(id, BACKEND, rows, cols))
    }

    fn write_tensor(&self, t: &TensorHandle, data: &[f32]) -> Result<(), BackendError> {
        check_tensor_init(t.rows(), t.cols(), &TensorInit::Data(data))?;
        let d = self.get_tensor(t)?;
        self.write_padded(&d.buf, data, t.cols());
        Ok(())
    }

    fn read(&self, t: &TensorHandle) -> Result<Vec<f32>, BackendError> {
        let d = self.get_tensor(t)?;
        let (rows, cols) = t.shape();
        let xs = x_stride(cols);
        let padded = self.read_f32(&d.buf, rows * xs)?;
        let mut out = Vec::with_capacity(rows * cols);
        for row in padded.chunks(xs.max(1)).take(rows) {
            out.extend_from_slice(&row[..cols]);
        }
        Ok(out)
    }

    fn free_tensor(&self, t: TensorHandle) -> Result<(), BackendError> {
        self.tensors.remove(&t).map(drop)
    }

    fn supports(&self, op: &Op<'_>) -> bool {
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        let fits = op
            .inputs()
            .into_iter()
            .chain([op.output()])
            .all(|t| self.fits_ops(t));
        fits && match *op {
            Op::Linear { x, w, .. } => {
                // The GEMM grid: 64 x 64 output tiles per workgroup.
                x.rows() < GEMM_MIN_BATCH
                    || (w.rows().div_ceil(64) <= max && x.rows().div_ceil(64) <= max)
            }
            Op::Attention { q, seqs, heads, .. } => {
                let s = q.rows() / seqs.max(1);
                let d = q.cols() / heads.max(1);
                s <= ATTENTION_MAX_SEQ
                    && d <= ATTENTION_MAX_HEAD_DIM
                    && heads <= max
                    && seqs <= max
                    && self.limits.max_compute_workgroup_storage_size >= ATTENTION_SHARED_BYTES
            }
            _ => true,
        }
    }

    fn run(&self, ops: &[Op<'_>]) -> Result<(), BackendError> {
        check_ops(self, ops)?;
        let (mut keep, mut held) = (Vec::new(), Vec::new());
        let mut dispatches = Vec::new();
        for op in ops {
            dispatches.extend(self.op_dispatches(op, &mut keep, &mut held)?);
        }
        // One encoder, one compute pass: wgpu orders the dispatches (a
        // barrier wherever one writes what a later one reads).
        self.run_dispatches(&dispatches)
    }

    fn run_timed(&self, ops: &[Op<'_>]) -> Result<OpTimings, BackendError> {
        check_ops(self, ops)?;
        let (mut keep, mut held) = (Vec::new(), Vec::new());
        let mut per_op = Vec::with_capacity(ops.len());
        for op in ops {
            per_op.push(self.op_dispatches(op, &mut keep, &mut held)?);
        }
        if self.caps.timestamps && !ops.is_empty() {
            // One encoder; each op its own compute pass between two timestamps.
            // Query sets hold at most 4096 queries: 2048 ops each.
            const OPS_PER_SET: usize = 2048;
            let mut enc = self.encoder();
            let mut resolves = Vec::new();
            for (c, chunk) in per_op.chunks(OPS_PER_SET).enumerate() {
                let n = (2 * chunk.len()) as u32;
                let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("op timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: n,
                });
                for (i, ds) in chunk.iter().enumerate() {
                    Self::record(&mut enc, ds, Some((&qs, (2 * i) as u32)));
                }
                let resolve = self.buffer(
                    "op timestamps",
                    u64::from(n) * 8,
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                )?;
                enc.resolve_query_set(&qs, 0..n, &resolve.buf, 0);
                resolves.push((c, n, resolve, qs));
            }
            self.submit(enc)?;
            let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
            let mut ticks: Vec<u64> = Vec::with_capacity(2 * ops.len());
            for (_, n, resolve, _) in &resolves {
                let bytes = self.read_back(resolve, u64::from(*n) * 8)?;
                ticks.extend(bytemuck::pod_collect_to_vec::<u8, u64>(&bytes));
            }
            let per_op_s: Vec<f64> = ticks
                .chunks(2)
                .map(|t| t[1].saturating_sub(t[0]) as f64 * period)
                .collect();
            let total_s = ticks[ticks.len() - 1].saturating_sub(ticks[0]) as f64 * period;
            return Ok(OpTimings {
                per_op_s,
                total_s,
                source: TimingSource::DeviceTimestamp,
            });
        }
        // No timestamps: the wall clock around each op's submit and wait.
        self.wait()?;
        let start = Instant::now();
        let mut per_op_s = Vec::with_capacity(ops.len());
        for ds in &per_op {
            let t = Instant::now();
            self.run_dispatches(ds)?;
            self.wait()?;
            per_op_s.push(t.elapsed().as_secs_f64());
        }
        Ok(OpTimings {
            per_op_s,
            total_s: start.elapsed().as_secs_f64(),
            source: TimingSource::WallClock,
        })
    }

    fn memory(&self) -> MemoryReport {
        let report = self.device.generate_allocator_report();
        MemoryReport {
            live_bytes: self.counters.live(),
            peak_bytes: self.counters.peak(),
            reserved_bytes: report.as_ref().map(|r| r.total_reserved_bytes),
            device_used_bytes: report.as_ref().map(|r| r.total_allocated_bytes),
            device_total_bytes: None,
        }
    }

    fn quantize(&self, w: &Matrix, spec: RtnSpec) -> Result<QuantizedMatrix, BackendError> {
        let shape = rtn_shape(BACKEND, w.rows(), w.cols(), spec)?;
        let entry = match spec.kind {
            FormatKind::Q8 => "quantize_q8",
            _ => "quantize_q4",
        };
        let (rows, stride, groups) = (w.rows(), shape.stride_bytes, shape.groups);
        let src = self.storage_with(
            "quantize input",
            bytemuck::cast_slice(w.data()),
            wgpu::BufferUsages::empty(),
        )?;
        let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let codes = self.buffer("quantized codes", (rows * stride) as u64, rw)?;
        let scales = self.buffer("quantized scales", (groups * 4) as u64, rw)?;
        let zeros = self.buffer("quantized zeros", (groups * 4) as u64, rw)?;
        let uniform = self.uniform("quantize params", &shape.params)?;
        let d = self.dispatch(
            Family::Quantize,
            entry,
            &uniform,
            &[&src.buf, &codes.buf, &scales.buf, &zeros.buf],
            self.groups_1d(groups as u32),
        )?;
        self.run_dispatches(&[d])?;
        let code_bytes = self.read_back(&codes, (rows * stride) as u64)?;
        // Scales and zero points are written one per u32 word.
        let scale_bits: Vec<u16> = self
            .read_u32(&scales, groups)?
            .iter()
            .map(|&b| b as u16)
            .collect();
        let zeros: Vec<u8> = if spec.kind == FormatKind::Q4 {
            self.read_u32(&zeros, groups)?
                .iter()
                .map(|&z| z as u8)
                .collect()
        } else {
            Vec::new()
        };
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
        let n = values.rows() * values.cols();
        if n > u32::MAX as usize / 2 {
            return Err(BackendError::Invalid(format!(
                "{n} values are too many for 32-bit indexing"
            )));
        }
        let k = levels.len();
        // 1. Compact the padded rows (the raw values: no outliers, no scale).
        let mut plain = m.params;
        plain.flags &= !(FLAG_OUTLIERS | FLAG_ACT_SCALE | FLAG_INT8_ACT);
        let compact = self.buffer("values", (n * 4) as u64, wgpu::BufferUsages::STORAGE)?;
        let u_plain = self.uniform("dequantize params", &plain)?;
        let d0 = self.dispatch(
            Family::Dequantize,
            "dequantize_f32",
            &u_plain,
            &self.matrix_bindings(&m, &self.dummy.buf, &compact.buf),
            self.groups_1d(plain.rows),
        )?;
        // 2. Assign, 3. per-chunk per-level partials.
        let blocks = n.div_ceil(1024);
        let lv = self.storage_with(
            "levels",
            bytemuck::cast_slice(levels),
            wgpu::BufferUsages::empty(),
        )?;
        let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let codes = self.buffer("codes", (n.div_ceil(4) * 4) as u64, rw)?;
        let sums = self.buffer("level sums", (blocks * k * 4) as u64, rw)?;
        let counts = self.buffer("level counts", (blocks * k * 4) as u64, rw)?;
        let params = AssignParams {
            n: n as u32,
            levels: k as u32,
            want_codes: want_codes as u32,
            _pad0: 0,
        };
        let u = self.uniform("assign params", &params)?;
        let bind = [&compact.buf, &lv.buf, &codes.buf, &sums.buf, &counts.buf];
        let d1 = self.dispatch(
            Family::Assign,
            "assign_levels",
            &u,
            &bind,
            self.groups_1d(n.div_ceil(1024) as u32),
        )?;
        let d2 = self.dispatch(
            Family::Assign,
            "reduce_levels",
            &u,
            &bind,
            self.groups_1d(blocks as u32),
        )?;
        self.run_dispatches(&[d0, d1, d2])?;
        let part_sums = self.read_f32(&sums, blocks * k)?;
        let part_counts = self.read_u32(&counts, blocks * k)?;
        let mut out_sums = vec![0.0f64; k];
        let mut out_counts = vec![0u64; k];
        for b in 0..blocks {
            for j in 0..k {
                out_sums[j] += f64::from(part_sums[b * k + j]);
                out_counts[j] += u64::from(part_counts[b * k + j]);
            }
        }
        let codes = if want_codes {
            let mut c = self.read_back(&codes, n as u64)?;
            c.truncate(n);
            c
        } else {
            Vec::new()
        };
        Ok(LevelAssignment {
            codes,
            sums: out_sums,
            counts: out_counts,
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
        let x: Vec<f32> = (0..batch * h.cols())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        h.check_input(&x, batch)?;
        let xb = self.tensor_buffer("input", batch, h.cols(), Some(&x))?;
        let y = self.tensor_buffer("output", batch, h.rows(), None)?;
        let (dispatches, _keep) = self.matmul_plan(&m, &xb, &y, batch)?;
        self.time_dispatches(&dispatches, runs, true)
    }

    fn measure_bandwidth(&self, bytes: usize) -> Result<Bandwidth, BackendError> {
        let cap = self.limits.max_buffer_size.min(1 << 31);
        let size = (bytes as u64).clamp(1 << 20, cap) / 16 * 16;
        let src = self.buffer("bandwidth source", size, wgpu::BufferUsages::COPY_SRC)?;
        let dst = self.buffer("bandwidth destination", size, wgpu::BufferUsages::COPY_DST)?;
        let runs = 7usize;
        let copy = |enc: &mut wgpu::CommandEncoder| {
            enc.copy_buffer_to_buffer(&src.buf, 0, &dst.buf, 0, size);
        };
        let mut enc = self.encoder();
        copy(&mut enc);
        self.submit(enc)?;
        self.wait()?;
        let (samples, source) = if self.caps.timestamps_in_encoders {
            let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("copy timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: (2 * runs) as u32,
            });
            let resolve = self.buffer(
                "timestamps",
                (16 * runs) as u64,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            )?;
            let mut enc = self.encoder();
            for i in 0..runs {
                enc.write_timestamp(&qs, (2 * i) as u32);
                copy(&mut enc);
                enc.write_timestamp(&qs, (2 * i + 1) as u32);
            }
            enc.resolve_query_set(&qs, 0..(2 * runs) as u32, &resolve.buf, 0);
            self.submit(enc)?;
            let ticks: Vec<u64> =
                bytemuck::pod_collect_to_vec(&self.read_back(&resolve, (16 * runs) as u64)?);
            let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
            (
                ticks
                    .chunks(2)
                    .map(|t| t[1].saturating_sub(t[0]) as f64 * period)
                    .collect::<Vec<_>>(),
                TimingSource::DeviceTimestamp,
            )
        } else {
            let mut s = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                let mut enc = self.encoder();
                copy(&mut enc);
                self.submit(enc)?;
                self.wait()?;
                s.push(t.elapsed().as_secs_f64());
            }
            (s, TimingSource::WallClock)
        };
        let seconds = KernelTiming {
            samples_s: samples,
            source,
        }
        .median_s();
        let moved = 2 * size;
        Ok(Bandwidth {
            bytes_per_s: moved as f64 / seconds,
            bytes_moved: moved,
            seconds,
            source,
            method: if source == TimingSource::DeviceTimestamp {
                "copy_buffer_to_buffer, device timestamps"
            } else {
                "copy_buffer_to_buffer, wall clock (no timestamp-query-inside-encoders)"
            },
        })
    }

    fn measure_flops(&self) -> Result<f64, BackendError> {
        let groups = 1024u32;
        let threads = u64::from(groups) * 256;
        let sink = self.buffer("fma sink", threads * 4, wgpu::BufferUsages::STORAGE)?;
        let mut iters = 16u32;
        loop {
            let u = self.uniform("fma iterations", &[iters, 0u32, 0, 0])?;
            let d = self.dispatch(
                Family::Flops,
                "fma_rate",
                &u,
                &[&sink.buf],
                self.groups_1d(groups),
            )?;
            let t = self.time_dispatches(&[d], 3, false)?.median_s();
            // Long enough to trust (10 ms), or as long as we are willing to wait.
            if t >= 0.01 || iters >= 1 << 16 {
                let flops = threads as f64 * f64::from(iters) * 64.0;
                return Ok(flops / t);
            }
            let grow = ((0.02 / t.max(1e-7)).ceil() as u32).clamp(2, 64);
            iters = iters.saturating_mul(grow).min(1 << 16);
        }
    }
}
