//! Device facts from NVML (nvml-wrapper): clocks, driver, memory, and this
//! process's own usage. NVML is optional: when the library is missing or a
//! query fails, the facts say so and the backend runs on.

use std::panic::{catch_unwind, AssertUnwindSafe};

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::{Device, Nvml};
use serde::{Deserialize, Serialize};

/// What NVML says about one GPU (every field `None` where NVML could not tell).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NvmlFacts {
    /// Why NVML facts are missing, when they are.
    pub unavailable: Option<String>,
    /// Device name.
    pub name: Option<String>,
    /// CUDA compute capability (major, minor).
    pub compute_capability: Option<(u32, u32)>,
    /// Kernel-mode driver version, e.g. `570.86.15`.
    pub driver_version: Option<String>,
    /// Total device memory in bytes.
    pub memory_total_bytes: Option<u64>,
    /// Device memory in use by every process, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory this process uses, in bytes.
    pub process_memory_bytes: Option<u64>,
    /// Current SM clock in MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Maximum SM clock in MHz.
    pub sm_clock_max_mhz: Option<u32>,
    /// Maximum memory clock in MHz.
    pub memory_clock_max_mhz: Option<u32>,
    /// Memory bus width in bits.
    pub memory_bus_width_bits: Option<u32>,
}

/// An NVML session bound to one device, found by the UUID that the CUDA
/// driver reports (NVML and CUDA may number devices differently).
pub struct NvmlDevice {
    nvml: Result<Nvml, String>,
    uuid: Option<String>,
    index: u32,
}

impl NvmlDevice {
    /// Opens NVML for the device with CUDA UUID bytes `uuid` (falls back to
    /// NVML index `index` when the UUID is unknown).
    pub fn open(uuid: Option<[u8; 16]>, index: u32) -> NvmlDevice {
        let nvml = catch_unwind(Nvml::init)
            .map_err(|_| "NVML panicked while loading".to_string())
            .and_then(|r| r.map_err(|e| format!("NVML not available: {e}")));
        NvmlDevice {
            nvml,
            uuid: uuid.map(format_uuid),
            index,
        }
    }

    fn device<'a>(&self, nvml: &'a Nvml) -> Result<Device<'a>, String> {
        let by_uuid = self.uuid.as_ref().map(|u| nvml.device_by_uuid(u.as_str()));
        match by_uuid {
            Some(Ok(d)) => Ok(d),
            _ => nvml
                .device_by_index(self.index)
                .map_err(|e| format!("NVML has no device {}: {e}", self.index)),
        }
    }

    /// Queries every fact now.
    pub fn facts(&self) -> NvmlFacts {
        let nvml = match &self.nvml {
            Ok(n) => n,
            Err(e) => {
                return NvmlFacts {
                    unavailable: Some(e.clone()),
                    ..Default::default()
                }
            }
        };
        catch_unwind(AssertUnwindSafe(|| self.query(nvml))).unwrap_or_else(|_| NvmlFacts {
            unavailable: Some("NVML panicked during a query".into()),
            ..Default::default()
        })
    }

    fn query(&self, nvml: &Nvml) -> NvmlFacts {
        let d = match self.device(nvml) {
            Ok(d) => d,
            Err(e) => {
                return NvmlFacts {
                    unavailable: Some(e),
                    ..Default::default()
                }
            }
        };
        let mem = d.memory_info().ok();
        let pid = std::process::id();
        let process_memory_bytes = d.running_compute_processes().ok().and_then(|ps| {
            ps.into_iter()
                .find(|p| p.pid == pid)
                .and_then(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                })
        });
        NvmlFacts {
            unavailable: None,
            name: d.name().ok(),
            compute_capability: d
                .cuda_compute_capability()
                .ok()
                .map(|c| (c.major.max(0) as u32, c.minor.max(0) as u32)),
            driver_version: nvml.sys_driver_version().ok(),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            memory_used_bytes: mem.as_ref().map(|m| m.used),
            process_memory_bytes,
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            sm_clock_max_mhz: d.max_clock_info(Clock::SM).ok(),
            memory_clock_max_mhz: d.max_clock_info(Clock::Memory).ok(),
            memory_bus_width_bits: d.memory_bus_width().ok(),
        }
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, NVML's spelling of a UUID.
fn format_uuid(b: [u8; 16]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_spelled_like_nvml() {
        let mut b = [0u8; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8 * 17;
        }
        assert_eq!(format_uuid(b), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn missing_nvml_is_reported_not_fatal() {
        let facts = NvmlDevice::open(None, 0).facts();
        // On a machine with a GPU the facts are there; without one NVML (or
        // its device) is missing and the reason says why.
        assert!(facts.unavailable.is_some() || facts.name.is_some());
    }
}
