//! The cuda backend (in progress: replaced by the real implementation).

pub mod compile;

use super::{BackendError, BackendKind};

/// The cuda backend.
pub struct CudaBackend;

impl CudaBackend {
    /// Opens the default device.
    pub fn from_env() -> Result<super::cpu::CpuBackend, BackendError> {
        Err(BackendError::Unavailable {
            backend: BackendKind::Cuda,
            reason: "not implemented in this build yet".into(),
        })
    }
}
