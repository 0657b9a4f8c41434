//! The hardware profile: what this machine has for running quantized
//! models — the CPU (model, cores, SIMD path, RAM), every NVIDIA GPU NVML
//! sees, every wgpu adapter — and which backends open here.
//!
//! `quantscope hardware` prints it, and every analysis embeds it so that a
//! results file says where its numbers were measured.

use serde::{Deserialize, Serialize};

use crate::backend::cpu::KernelPath;
use crate::backend::{backends, BackendKind, DeviceInfo};

/// The host CPU and its memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuProfile {
    /// Brand string, e.g. `AMD EPYC 9R14`.
    pub model: String,
    /// Logical cores.
    pub logical_cores: usize,
    /// Physical cores, where known.
    pub physical_cores: Option<usize>,
    /// The CPU kernel path in use (`avx512`, `avx2`, `neon`, `scalar`).
    pub simd_path: String,
    /// SIMD features the kernels may use.
    pub features: Vec<String>,
    /// Installed RAM in bytes.
    pub ram_total_bytes: u64,
    /// RAM available to new allocations now, in bytes.
    pub ram_available_bytes: u64,
}

/// One NVIDIA GPU as NVML reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NvidiaGpu {
    /// NVML index.
    pub index: u32,
    /// Device name.
    pub name: String,
    /// Total memory in bytes.
    pub memory_total_bytes: Option<u64>,
    /// Free memory in bytes.
    pub memory_free_bytes: Option<u64>,
    /// CUDA compute capability (major, minor).
    pub compute_capability: Option<(u32, u32)>,
    /// Driver version.
    pub driver_version: Option<String>,
}

/// One wgpu adapter and what the WGSL kernels can use on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WgpuAdapter {
    /// Adapter name.
    pub name: String,
    /// Graphics API (`Vulkan`, `Metal`, `Dx12`, `Gl`).
    pub api: String,
    /// `discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `cpu`, `other`.
    pub device_type: String,
    /// Driver and its version.
    pub driver: String,
    /// `shader-f16`.
    pub shader_f16: bool,
    /// Subgroup operations.
    pub subgroups: bool,
    /// WGSL packed 4x8 integer dot products.
    pub packed_int8_dot: bool,
    /// Timestamp queries.
    pub timestamps: bool,
    /// Largest buffer in bytes.
    pub max_buffer_size: u64,
    /// Largest storage binding in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Workgroup shared memory in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
}

/// Whether one backend opens here, and its device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendAvailability {
    /// Which backend.
    pub backend: BackendKind,
    /// Whether it opened.
    pub available: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    /// The device it opened.
    pub device: Option<DeviceInfoRecord>,
}

/// [`DeviceInfo`] as recorded in a profile (plain data).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceInfoRecord {
    /// Device name.
    pub name: String,
    /// Device type.
    pub device_type: String,
    /// Driver / API description.
    pub driver: String,
    /// Total memory in bytes, where known.
    pub memory_total_bytes: Option<u64>,
    /// CUDA compute capability.
    pub compute_capability: Option<(u32, u32)>,
    /// Features.
    pub features: Vec<String>,
}

impl From<DeviceInfo> for DeviceInfoRecord {
    fn from(i: DeviceInfo) -> Self {
        DeviceInfoRecord {
            name: i.name,
            device_type: i.device_type,
            driver: i.driver,
            memory_total_bytes: i.memory_total_bytes,
            compute_capability: i.compute_capability,
            features: i.features,
        }
    }
}

/// Everything [`HardwareProfile::detect`] found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HardwareProfile {
    /// Host name, where known.
    pub host: Option<String>,
    /// Operating system, e.g. `Debian GNU/Linux 13`.
    pub os: Option<String>,
    /// The CPU.
    pub cpu: CpuProfile,
    /// NVIDIA GPUs (empty when NVML is not there: see `nvidia_unavailable`).
    pub nvidia_gpus: Vec<NvidiaGpu>,
    /// Why NVML could not list GPUs, when it could not.
    pub nvidia_unavailable: Option<String>,
    /// wgpu adapters on Vulkan, Metal and DX12.
    pub wgpu_adapters: Vec<WgpuAdapter>,
    /// Why no wgpu adapter was listed, when none was.
    pub wgpu_unavailable: Option<String>,
    /// Every backend and whether it opened.
    pub backends: Vec<BackendAvailability>,
}

impl HardwareProfile {
    /// Looks at this machine (opens each backend once).
    pub fn detect() -> HardwareProfile {
        let (nvidia_gpus, nvidia_unavailable) = nvidia_gpus();
        let (wgpu_adapters, wgpu_unavailable) = wgpu_adapters();
        let backends = backends()
            .into_iter()
            .map(|s| match s.backend {
                Ok(b) => BackendAvailability {
                    backend: s.kind,
                    available: true,
                    reason: None,
                    device: Some(b.info().into()),
                },
                Err(e) => BackendAvailability {
                    backend: s.kind,
                    available: false,
                    reason: Some(e.to_string()),
                    device: None,
                },
            })
            .collect();
        HardwareProfile {
            host: sysinfo::System::host_name(),
            os: sysinfo::System::long_os_version(),
            cpu: cpu_profile(),
            nvidia_gpus,
            nvidia_unavailable,
            wgpu_adapters,
            wgpu_unavailable,
            backends,
        }
    }

    /// The availability entry of `kind`.
    pub fn backend(&self, kind: BackendKind) -> Option<&BackendAvailability> {
        self.backends.iter().find(|b| b.backend == kind)
    }

    /// The memory a model on `kind` lives in, in bytes: host RAM for the
    /// CPU backend, the device's memory for a GPU backend where it is known
    /// (a software adapter such as lavapipe uses host RAM).
    pub fn memory_bytes(&self, kind: BackendKind) -> Option<u64> {
        match kind {
            BackendKind::Cpu => Some(self.cpu.ram_total_bytes),
            _ => {
                let dev = self.backend(kind)?.device.as_ref()?;
                if dev.device_type.contains("cpu") {
                    Some(self.cpu.ram_total_bytes)
                } else {
                    dev.memory_total_bytes
                }
            }
        }
    }

    /// The share of [`Self::memory_bytes`] a model may take on `kind`: 80 %
    /// of host RAM (the process and the OS need the rest), 90 % of a GPU's.
    pub fn memory_budget_fraction(&self, kind: BackendKind) -> f64 {
        let host = kind == BackendKind::Cpu
            || self
                .backend(kind)
                .and_then(|b| b.device.as_ref())
                .is_some_and(|d| d.device_type.contains("cpu"));
        if host {
            0.8
        } else {
            0.9
        }
    }
}

fn cpu_profile() -> CpuProfile {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    sys.refresh_cpu_all();
    let model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    CpuProfile {
        model,
        logical_cores: sys.cpus().len().max(1),
        physical_cores: sysinfo::System::physical_core_count(),
        simd_path: KernelPath::selected().to_string(),
        features: crate::backend::cpu::cpu_features()
            .into_iter()
            .filter(|f| !f.contains('='))
            .collect(),
        ram_total_bytes: sys.total_memory(),
        ram_available_bytes: sys.available_memory(),
    }
}

#[cfg(feature = "cuda")]
fn nvidia_gpus() -> (Vec<NvidiaGpu>, Option<String>) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let nvml = match catch_unwind(nvml_wrapper::Nvml::init) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return (Vec::new(), Some(format!("NVML not available: {e}"))),
        Err(_) => return (Vec::new(), Some("NVML panicked while loading".into())),
    };
    let listed = catch_unwind(AssertUnwindSafe(|| {
        let driver = nvml.sys_driver_version().ok();
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| {
                let d = nvml.device_by_index(i).ok()?;
                let mem = d.memory_info().ok();
                Some(NvidiaGpu {
                    index: i,
                    name: d.name().unwrap_or_else(|_| format!("GPU {i}")),
                    memory_total_bytes: mem.as_ref().map(|m| m.total),
                    memory_free_bytes: mem.as_ref().map(|m| m.free),
                    compute_capability: d
                        .cuda_compute_capability()
                        .ok()
                        .map(|c| (c.major.max(0) as u32, c.minor.max(0) as u32)),
                    driver_version: driver.clone(),
                })
            })
            .collect::<Vec<_>>()
    }));
    match listed {
        Ok(g) => (g, None),
        Err(_) => (Vec::new(), Some("NVML panicked while listing GPUs".into())),
    }
}

#[cfg(not(feature = "cuda"))]
fn nvidia_gpus() -> (Vec<NvidiaGpu>, Option<String>) {
    (
        Vec::new(),
        Some("this build has no `cuda` cargo feature (NVML)".into()),
    )
}

#[cfg(feature = "wgpu")]
fn wgpu_adapters() -> (Vec<WgpuAdapter>, Option<String>) {
    let backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = wgpu::InstanceFlags::empty();
    let instance = wgpu::Instance::new(desc);
    let lang = instance.wgsl_language_features();
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let list: Vec<WgpuAdapter> = adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            let f = a.features();
            let l = a.limits();
            WgpuAdapter {
                name: info.name.clone(),
                api: format!("{:?}", info.backend),
                device_type: match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => "discrete-gpu",
                    wgpu::DeviceType::IntegratedGpu => "integrated-gpu",
                    wgpu::DeviceType::VirtualGpu => "virtual-gpu",
                    wgpu::DeviceType::Cpu => "cpu",
                    wgpu::DeviceType::Other => "other",
                }
                .into(),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                shader_f16: f.contains(wgpu::Features::SHADER_F16),
                subgroups: f.contains(wgpu::Features::SUBGROUP),
                packed_int8_dot: lang
                    .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct),
                timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
                max_buffer_size: l.max_buffer_size,
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            }
        })
        .collect();
    let why = list
        .is_empty()
        .then(|| "no wgpu adapter on Vulkan, Metal or DX12".to_string());
    (list, why)
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_adapters() -> (Vec<WgpuAdapter>, Option<String>) {
    (
        Vec::new(),
        Some("this build has no `wgpu` cargo feature".into()),
    )
}
