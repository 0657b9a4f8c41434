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
//!
//! [`compile_cubin`] compiles to machine code for one real architecture
//! instead (`nvrtcGetCUBIN`): the backend's fallback when the driver refuses
//! the PTX (an NVRTC newer than the driver: `UNSUPPORTED_PTX_VERSION`), since
//! a CUBIN needs no PTX JIT at all.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{compile_ptx_with_opts, result, sys, CompileError, CompileOptions};

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

/// Entry points of kernel file `stem` (the same stems and names as
/// `shaders/*.wgsl`), in launch-table order: the names are listed once, in
/// [`super::launch::LAUNCHES`], beside each entry's arguments.
pub fn kernel_entries(stem: &str) -> Vec<&'static str> {
    super::launch::LAUNCHES
        .iter()
        .filter(|l| l.stem == stem)
        .flat_map(|l| l.entries.iter().copied())
        .collect()
}

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

/// NVRTC's options for `arch`, which is checked first (it reaches NVRTC as
/// text).
fn nvrtc_options(arch: &str) -> Result<Vec<String>, BackendError> {
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
    Ok(vec![
        format!("--gpu-architecture={arch}"),
        // Exact IEEE semantics where the kernels rely on them (quantize,
        // dequantize); kernels use explicit __fmul_rn / __fadd_rn where FMA
        // contraction would change bits.
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--std=c++17".to_string(),
    ])
}

/// `QUANTSCOPE_CUDA_INCLUDE` when it names a folder.
fn include_paths() -> Vec<String> {
    std::env::var(INCLUDE_ENV)
        .ok()
        .filter(|p| !p.is_empty() && std::path::Path::new(p).is_dir())
        .into_iter()
        .collect()
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
    let opts = CompileOptions {
        name: Some(format!("{name}.cu")),
        include_paths: include_paths(),
        options: nvrtc_options(arch)?,
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

/// Compiles CUDA C `source` to a CUBIN (machine code) for the real
/// architecture `arch` (`sm_90`, ...), with the options of [`compile_ptx`].
/// Errors as [`compile_ptx`]; a `compute_XY` architecture is refused (a
/// CUBIN is for one real GPU).
pub fn compile_cubin(source: &str, name: &str, arch: &str) -> Result<Vec<u8>, BackendError> {
    if !nvrtc_available() {
        return Err(BackendError::Unavailable {
            backend: BackendKind::Cuda,
            reason: nvrtc_missing_reason(),
        });
    }
    if !arch.starts_with("sm_") {
        return Err(BackendError::Invalid(format!(
            "a CUBIN needs a real GPU architecture (sm_XY), not '{arch}'"
        )));
    }
    let mut options = nvrtc_options(arch)?;
    options.extend(
        include_paths()
            .into_iter()
            .map(|p| format!("--include-path={p}")),
    );
    let (Ok(src), Ok(file)) = (CString::new(source), CString::new(format!("{name}.cu"))) else {
        return Err(BackendError::Invalid(
            "kernel source or name contains a NUL byte".into(),
        ));
    };
    let compiled = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u8>, BackendError> {
        let prog = result::create_program(&src, Some(file.as_c_str()))
            .map_err(|e| compile_error(format!("NVRTC cannot create {name}.cu: {e:?}")))?;
        // SAFETY: `prog` was just created and is destroyed once, below; the
        // buffers passed to NVRTC have the sizes it reported.
        unsafe {
            let out = match result::compile_program(prog, &options) {
                Ok(()) => {
                    let mut size = 0usize;
                    sys::nvrtcGetCUBINSize(prog, &mut size)
                        .result()
                        .and_then(|_| {
                            let mut bin = vec![0u8; size];
                            sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast())
                                .result()
                                .map(|_| bin)
                        })
                        .map_err(|e| {
                            compile_error(format!(
                                "NVRTC gave no CUBIN for {name}.cu ({arch}): {e:?}"
                            ))
                        })
                }
                Err(e) => {
                    let log = result::get_program_log(prog)
                        .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                        .unwrap_or_default();
                    Err(compile_error(format!(
                        "NVRTC failed to compile {name}.cu for {arch} ({e:?}):\n{}",
                        log.trim_end()
                    )))
                }
            };
            let _ = result::destroy_program(prog);
            out
        }
    }));
    let bin = compiled
        .map_err(|_| compile_error(format!("NVRTC panicked while compiling {name}.cu")))??;
    if bin.is_empty() {
        return Err(compile_error(format!(
            "NVRTC produced an empty CUBIN for {name}.cu ({arch})"
        )));
    }
    Ok(bin)
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

/// Compiles kernel file `stem` to a CUBIN for `arch`, cached for the process
/// like [`cached_module_ptx`].
pub fn cached_module_cubin(stem: &str, arch: &str) -> Result<Arc<Vec<u8>>, BackendError> {
    type Cache = Mutex<HashMap<(String, String), Arc<Vec<u8>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (stem.to_string(), arch.to_string());
    if let Some(bin) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(bin);
    }
    let bin = Arc::new(compile_cubin(&module_source(stem)?, stem, arch)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, bin.clone());
    }
    Ok(bin)
}
