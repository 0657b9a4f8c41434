//! NVRTC: `kernels/*.cu` to PTX, at run time and in CI.
//!
//! The kernel sources are embedded in the binary. Each `.cu` file starts with
//! `#include "common.cuh"`; [`module_source`] splices `kernels/common.cuh`
//! in its place, so NVRTC needs no include path (the kernels use no CUDA
//! header either: half conversions are inline PTX). When
//! `QUANTSCOPE_CUDA_INCLUDE` names a folder (the CUDA runtime headers, see
//! `.ci/install-nvrtc.sh`), it is passed as `-I` all the same.
//!
//! libnvrtc is loaded dynamically by cudarc, which panics when the library
//! is missing; [`nvrtc_available`] checks first and every call into cudarc is
//! also guarded by `catch_unwind`.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

use crate::backend::{BackendError, BackendKind};

/// Environment variable naming an extra include folder for NVRTC.
pub const INCLUDE_ENV: &str = "QUANTSCOPE_CUDA_INCLUDE";

/// The shared header every kernel file includes.
pub const COMMON_HEADER: &str = include_str!("../../../kernels/common.cuh");

/// Every kernel file: `(stem, source)`, in the order the backend loads them.
pub const KERNEL_FILES: [(&str, &str); 8] = [
    ("quantize", include_str!("../../../kernels/quantize.cu")),
    ("dequantize", include_str!("../../../kernels/dequantize.cu")),
    ("gemv", include_str!("../../../kernels/gemv.cu")),
    ("gemm", include_str!("../../../kernels/gemm.cu")),
    ("sparse", include_str!("../../../kernels/sparse.cu")),
    ("assign", include_str!("../../../kernels/assign.cu")),
    ("probe", include_str!("../../../kernels/probe.cu")),
    ("ops", include_str!("../../../kernels/ops.cu")),
];

/// Entry points of each kernel file: the same stems and names as
/// `shaders/*.wgsl`.
pub const KERNEL_ENTRIES: [(&str, &[&str]); 8] = [
    ("quantize", &["quantize_q8", "quantize_q4"]),
    (
        "dequantize",
        &[
            "dequantize_f32",
            "dequantize_f16",
            "dequantize_bf16",
            "dequantize_q8",
            "dequantize_q4",
            "dequantize_lut4",
        ],
    ),
    (
        "gemv",
        &[
            "gemv_f32",
            "gemv_f16",
            "gemv_bf16",
            "gemv_q8",
            "gemv_q4",
            "gemv_lut4",
        ],
    ),
    (
        "gemm",
        &[
            "gemm_f32",
            "gemm_f16",
            "gemm_bf16",
            "gemm_q8",
            "gemm_q4",
            "gemm_lut4",
        ],
    ),
    ("sparse", &["scale_input", "outliers_add"]),
    ("assign", &["assign_levels", "reduce_levels"]),
    ("probe", &["fma_rate"]),
    (
        "ops",
        &[
            "layer_norm",
            "gelu",
            "quick_gelu",
            "add",
            "bias_add",
            "softmax",
            "attention",
            "take_rows",
        ],
    ),
];

const INCLUDE_LINE: &str = "#include \"common.cuh\"";

/// The text NVRTC compiles for `source`: the `#include "common.cuh"` line
/// replaced by the header itself.
pub fn expand_source(source: &str) -> String {
    source.replacen(INCLUDE_LINE, COMMON_HEADER, 1)
}

/// The NVRTC input of kernel file `stem` (`gemv`, `quantize`, ...).
pub fn module_source(stem: &str) -> Result<String, BackendError> {
    KERNEL_FILES
        .iter()
        .find(|(s, _)| *s == stem)
        .map(|(_, src)| expand_source(src))
        .ok_or_else(|| BackendError::Invalid(format!("no kernel file kernels/{stem}.cu")))
}

/// Whether libnvrtc can be loaded here (checked once per process).
pub fn nvrtc_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        catch_unwind(|| {
            // SAFETY: only tries to dlopen the library by its usual names.
            unsafe { cudarc::nvrtc::sys::is_culib_present() }
        })
        .unwrap_or(false)
    })
}

/// Why NVRTC is missing, with the fix.
pub fn nvrtc_missing_reason() -> String {
    "libnvrtc not found (install the CUDA toolkit, or run `eval \"$(.ci/install-nvrtc.sh)\"` to \
     get it from the nvidia-cuda-nvrtc-cu12 wheel, and make sure LD_LIBRARY_PATH names its folder)"
        .into()
}

fn compile_error(message: String) -> BackendError {
    BackendError::Device {
        backend: BackendKind::Cuda,
        message,
    }
}

/// Compiles CUDA C `source` to PTX for `arch` (`sm_80`, `sm_90`, `compute_80`,
/// ...). `name` labels the program in NVRTC's messages. A compile error
/// returns [`BackendError::Device`] carrying NVRTC's log; a machine without
/// libnvrtc gets [`BackendError::Unavailable`].
pub fn compile_ptx(source: &str, name: &str, arch: &str) -> Result<String, BackendError> {
    if !nvrtc_available() {
        return Err(BackendError::Unavailable {
            backend: BackendKind::Cuda,
            reason: nvrtc_missing_reason(),
        });
    }
    if source.contains('\0') || name.contains('\0') {
        return Err(BackendError::Invalid(
            "kernel source or name contains a NUL byte".into(),
        ));
    }
    let valid_arch = (arch.starts_with("sm_") || arch.starts_with("compute_"))
        && arch
            .split('_')
            .nth(1)
            .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()));
    if !valid_arch {
        return Err(BackendError::Invalid(format!(
            "invalid GPU architecture '{arch}' (expected sm_XY or compute_XY)"
        )));
    }
    let options = vec![
        format!("--gpu-architecture={arch}"),
        // Exact IEEE semantics where the kernels rely on them (quantize,
        // dequantize); kernels use explicit __fmul_rn / __fadd_rn where FMA
        // contraction would change bits.
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--std=c++17".to_string(),
    ];
    let include_paths = std::env::var(INCLUDE_ENV)
        .ok()
        .filter(|p| !p.is_empty() && std::path::Path::new(p).is_dir())
        .into_iter()
        .collect();
    let opts = CompileOptions {
        name: Some(format!("{name}.cu")),
        include_paths,
        options,
        ..Default::default()
    };
    let result = catch_unwind(AssertUnwindSafe(|| compile_ptx_with_opts(source, opts)))
        .map_err(|_| compile_error(format!("NVRTC panicked while compiling {name}.cu")))?;
    match result {
        Ok(ptx) => {
            let bytes = ptx.as_bytes().unwrap_or_default();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
            if text.trim().is_empty() {
                return Err(compile_error(format!(
                    "NVRTC produced no PTX for {name}.cu ({arch})"
                )));
            }
            Ok(text)
        }
        Err(CompileError::CompileError { nvrtc, log, .. }) => Err(compile_error(format!(
            "NVRTC failed to compile {name}.cu for {arch} ({nvrtc:?}):\n{}",
            log.to_string_lossy().trim_end()
        ))),
        Err(e) => Err(compile_error(format!(
            "NVRTC failed on {name}.cu for {arch}: {e}"
        ))),
    }
}

/// Compiles kernel file `stem` for `arch`, caching the PTX for the process:
/// every backend opened on a device of the same architecture reuses it.
pub fn cached_module_ptx(stem: &str, arch: &str) -> Result<Arc<String>, BackendError> {
    type Cache = Mutex<HashMap<(String, String), Arc<String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (stem.to_string(), arch.to_string());
    if let Some(ptx) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(ptx);
    }
    let ptx = Arc::new(compile_ptx(&module_source(stem)?, stem, arch)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, ptx.clone());
    }
    Ok(ptx)
}
