//! The wgpu backend (in progress: replaced by the real implementation).

use super::{BackendError, BackendKind};

/// The wgpu backend.
pub struct WgpuBackend;

impl WgpuBackend {
    /// Opens the default device.
    pub fn from_env() -> Result<super::cpu::CpuBackend, BackendError> {
        Err(BackendError::Unavailable {
            backend: BackendKind::Wgpu,
            reason: "not implemented in this build yet".into(),
        })
    }
}
