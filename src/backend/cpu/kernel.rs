//! Which SIMD code path the CPU kernels run, chosen once at run time.
//!
//! Every path computes the same thing: the AVX paths are checked against the
//! portable scalar path (and an f64 reference) by `tests/cpu_kernels.rs`. The
//! environment variable [`KERNEL_ENV`] forces a path, e.g. to compare or to
//! rule out a SIMD bug in the field.

use std::sync::OnceLock;

use crate::backend::{BackendError, BackendKind};

/// Environment variable that forces a kernel path: `scalar`, `neon`, `avx2`
/// or `avx512`.
pub const KERNEL_ENV: &str = "QUANTSCOPE_CPU_KERNEL";

/// A CPU kernel implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelPath {
    /// Portable Rust, no intrinsics: the reference every SIMD path is tested against.
    Scalar,
    /// aarch64 NEON with the dot-product extension (`sdot`, Armv8.2+: Apple
    /// M-series, Graviton 2+, Neoverse, Cortex-A76+); 128-bit.
    Neon,
    /// x86-64 AVX2 + FMA + F16C (256-bit).
    Avx2,
    /// x86-64 AVX-512 F/BW + VNNI (512-bit, `vpdpbusd` integer dot products).
    Avx512,
}

impl KernelPath {
    /// Every path, slowest first (a CPU supports the scalar path and those of
    /// its own architecture).
    pub const ALL: [KernelPath; 4] = [
        KernelPath::Scalar,
        KernelPath::Neon,
        KernelPath::Avx2,
        KernelPath::Avx512,
    ];

    /// `scalar`, `neon`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Neon => "neon",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => {
                KernelPath::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            KernelPath::Neon => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The paths this CPU can run, slowest first (always starts with `Scalar`).
    pub fn available() -> Vec<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .filter(|p| p.is_supported())
            .collect()
    }

    /// The fastest path this CPU supports.
    pub fn best() -> KernelPath {
        KernelPath::available()
            .last()
            .copied()
            .unwrap_or(KernelPath::Scalar)
    }

    /// The path the backend uses: [`KERNEL_ENV`] when it names a supported
    /// path, otherwise [`KernelPath::best`] (an unusable value is reported once
    /// on stderr). Decided once per process.
    pub fn selected() -> KernelPath {
        static SELECTED: OnceLock<KernelPath> = OnceLock::new();
        *SELECTED.get_or_init(|| match std::env::var(KERNEL_ENV) {
            Ok(v) if !v.trim().is_empty() => match v.parse::<KernelPath>() {
                Ok(p) if p.is_supported() => p,
                Ok(p) => {
                    eprintln!(
                        "warning: {KERNEL_ENV}={v}: this CPU cannot run the {} path; using {}",
                        p.name(),
                        KernelPath::best().name()
                    );
                    KernelPath::best()
                }
                Err(e) => {
                    eprintln!("warning: {e}; using {}", KernelPath::best().name());
                    KernelPath::best()
                }
            },
            _ => KernelPath::best(),
        })
    }

    /// `Ok(())` when this CPU can run the path, a typed error otherwise.
    pub fn check(self) -> Result<(), BackendError> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(BackendError::Unsupported {
                backend: BackendKind::Cpu,
                what: format!("the {} kernel path on this CPU", self.name()),
            })
        }
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KernelPath {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KernelPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "unknown CPU kernel path '{s}' (expected scalar, neon, avx2 or avx512)"
                ))
            })
    }
}
