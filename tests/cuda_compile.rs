//! Compiles every `kernels/*.cu` to PTX with NVRTC for sm_75, sm_80 and sm_90: the
//! CUDA kernels are checked on machines without a GPU.
//!
//! NVRTC comes from the CUDA toolkit or from the PyPI wheels
//! (`eval "$(.ci/install-nvrtc.sh)"`). Without it the tests skip with one
//! line on stderr, unless `QUANTSCOPE_REQUIRE_NVRTC=1` (CI), where they fail.
//! When `QUANTSCOPE_PTXAS` names a `ptxas` binary, the PTX is also assembled,
//! which checks the inline PTX (mma.sync, cvt) that NVRTC passes through;
//! `QUANTSCOPE_PTX_DUMP=dir` writes the PTX there. The kernel folder on
//! disk (checked against the embedded list) is `QUANTSCOPE_KERNELS_DIR`, else
//! the build-time source tree, else `./kernels`: a test binary carried to
//! another machine (the GPU check kit) finds it without the source tree.
#![cfg(feature = "cuda")]

use quantscope::backend::cuda::compile::{
    compile_ptx, module_source, nvrtc_available, nvrtc_missing_reason, KERNEL_ENTRIES, KERNEL_FILES,
};
use quantscope::backend::BackendError;

// sm_75 (T4) also checks the paths below sm_80 (no tensor-core GEMM).
const ARCHS: [&str; 3] = ["sm_75", "sm_80", "sm_90"];

/// Whether NVRTC is here; panics when it must be (CI) and is not.
fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_available() {
        return true;
    }
    if std::env::var("QUANTSCOPE_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!("QUANTSCOPE_REQUIRE_NVRTC=1 but {}", nvrtc_missing_reason());
    }
    // Straight to stderr (not eprintln!, which the test harness captures),
    // so the skip is visible in a normal `cargo test` run.
    // One line for the whole file.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping the CUDA compile tests (first: {test}): {}",
            nvrtc_missing_reason()
        );
    });
    false
}

/// The `kernels/` folder: `QUANTSCOPE_KERNELS_DIR`, the build-time source
/// tree when it still exists, else `kernels` under the working directory.
fn kernels_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("QUANTSCOPE_KERNELS_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    if built.is_dir() {
        built
    } else {
        std::path::PathBuf::from("kernels")
    }
}

/// Assembles `ptx` with ptxas when `QUANTSCOPE_PTXAS` names one.
fn assemble(ptx: &str, stem: &str, arch: &str) {
    let Ok(ptxas) = std::env::var("QUANTSCOPE_PTXAS") else {
        return;
    };
    if ptxas.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join(format!("{stem}.ptx"));
    std::fs::write(&input, ptx).expect("write ptx");
    let out = std::process::Command::new(&ptxas)
        .arg(format!("-arch={arch}"))
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join(format!("{stem}.cubin")))
        .output()
        .expect("run ptxas");
    assert!(
        out.status.success(),
        "ptxas rejected {stem}.cu for {arch}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_kernel_compiles_for_sm75_sm80_and_sm90() {
    if !nvrtc_or_skip("every_kernel_compiles_for_sm75_sm80_and_sm90") {
        return;
    }
    let dir = kernels_dir();
    // Every .cu on disk is embedded (a new file cannot be forgotten).
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read the kernel folder {} ({e}); set QUANTSCOPE_KERNELS_DIR",
                dir.display()
            )
        })
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension().and_then(|x| x.to_str()) == Some("cu"))
                .then(|| p.file_stem()?.to_str().map(str::to_string))
                .flatten()
        })
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = KERNEL_FILES.iter().map(|(s, _)| s.to_string()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded, "kernels/*.cu and KERNEL_FILES differ");

    for (stem, entries) in KERNEL_ENTRIES {
        let src = module_source(stem).expect("embedded source");
        for arch in ARCHS {
            let ptx = match compile_ptx(&src, stem, arch) {
                Ok(p) => p,
                Err(e) => panic!("{e}"),
            };
            for entry in entries {
                assert!(
                    ptx.contains(&format!(".entry {entry}(")),
                    "{stem}.cu ({arch}) has no entry point {entry}"
                );
            }
            assemble(&ptx, stem, arch);
            // QUANTSCOPE_PTX_DUMP=dir keeps the PTX (e.g. for `ptxas -v`).
            if let Ok(dir) = std::env::var("QUANTSCOPE_PTX_DUMP") {
                let path = std::path::Path::new(&dir).join(format!("{stem}.{arch}.ptx"));
                std::fs::write(&path, &ptx).expect("write PTX dump");
            }
        }
    }
}

#[test]
fn f16_gemm_uses_tensor_cores_on_sm80() {
    if !nvrtc_or_skip("f16_gemm_uses_tensor_cores_on_sm80") {
        return;
    }
    let src = module_source("gemm").expect("embedded source");
    let ptx = compile_ptx(&src, "gemm", "sm_80").expect("gemm compiles");
    assert!(
        ptx.contains("mma.sync.aligned.m16n8k16"),
        "no mma.sync in gemm PTX"
    );
}

/// The CUBIN path (the backend's fallback when the driver refuses PTX):
/// NVRTC assembles the kernels itself, so the result is an ELF image.
#[test]
fn kernels_compile_to_cubins_for_sm90() {
    use quantscope::backend::cuda::compile::compile_cubin;
    if !nvrtc_or_skip("kernels_compile_to_cubins_for_sm90") {
        return;
    }
    for stem in ["gemv", "gemm"] {
        let src = module_source(stem).expect("embedded source");
        let bin = compile_cubin(&src, stem, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            bin.len() > 1024 && bin.starts_with(b"\x7fELF"),
            "{stem}.cu: the CUBIN is not an ELF image ({} bytes)",
            bin.len()
        );
    }
    assert!(matches!(
        compile_cubin("", "empty", "compute_80"),
        Err(BackendError::Invalid(_))
    ));
    match compile_cubin(
        "extern \"C\" __global__ void k() { nope; }",
        "broken",
        "sm_90",
    ) {
        Err(BackendError::Device { message, .. }) => assert!(message.contains("nope"), "{message}"),
        other => panic!("a broken kernel gave {:?}", other.map(|b| b.len())),
    }
}

#[test]
fn a_broken_kernel_fails_with_the_nvrtc_log() {
    if !nvrtc_or_skip("a_broken_kernel_fails_with_the_nvrtc_log") {
        return;
    }
    let broken = "extern \"C\" __global__ void broken(float* y) { y[0] = undefined_name; }";
    match compile_ptx(broken, "broken", "sm_80") {
        Err(BackendError::Device { message, .. }) => {
            assert!(
                message.contains("undefined_name"),
                "the error should carry NVRTC's log, got: {message}"
            );
        }
        Err(other) => panic!("expected a compile error, got: {other}"),
        Ok(_) => panic!("a broken kernel compiled"),
    }
    // A bad architecture is refused before NVRTC runs.
    assert!(matches!(
        compile_ptx("", "empty", "sm80; rm -rf"),
        Err(BackendError::Invalid(_))
    ));
}

/// Number of arguments the backend (src/backend/cuda/mod.rs) pushes for each
/// entry point, and whether the first is a parameter block (`Some(size)`).
/// Checked against the PTX, this catches a kernel signature that drifted from
/// its launch code without a GPU.
const ABI: [(&str, usize, Option<usize>); 33] = [
    ("quantize_q8", 4, Some(32)),
    ("quantize_q4", 5, Some(32)),
    ("dequantize_f32", 10, Some(32)),
    ("dequantize_f16", 10, Some(32)),
    ("dequantize_bf16", 10, Some(32)),
    ("dequantize_q8", 10, Some(32)),
    ("dequantize_q4", 10, Some(32)),
    ("dequantize_lut4", 10, Some(32)),
    ("gemv_f32", 7, Some(32)),
    ("gemv_f16", 7, Some(32)),
    ("gemv_bf16", 7, Some(32)),
    ("gemv_q8", 7, Some(32)),
    ("gemv_q4", 7, Some(32)),
    ("gemv_lut4", 7, Some(32)),
    ("gemm_f32", 7, Some(32)),
    ("gemm_f16", 7, Some(32)),
    ("gemm_bf16", 7, Some(32)),
    ("gemm_q8", 7, Some(32)),
    ("gemm_q4", 7, Some(32)),
    ("gemm_lut4", 7, Some(32)),
    ("scale_input", 4, Some(32)),
    ("outliers_add", 6, Some(32)),
    ("assign_levels", 4, Some(16)),
    ("reduce_levels", 5, Some(16)),
    ("fma_rate", 3, None),
    ("layer_norm", 5, Some(32)),
    ("gelu", 3, Some(32)),
    ("quick_gelu", 3, Some(32)),
    ("add", 4, Some(32)),
    ("bias_add", 3, Some(32)),
    ("softmax", 4, Some(32)),
    ("attention", 6, Some(32)),
    ("take_rows", 3, Some(32)),
];

/// The `.param` declarations of entry `name` in `ptx`.
fn entry_params<'a>(ptx: &'a str, name: &str) -> Vec<&'a str> {
    let Some(start) = ptx.find(&format!(".entry {name}(")) else {
        return Vec::new();
    };
    let rest = &ptx[start..];
    let end = rest.find(')').unwrap_or(rest.len());
    rest[..end]
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| l.starts_with(".param"))
        .collect()
}

#[test]
fn kernel_signatures_match_the_launch_code() {
    use quantscope::backend::params::{AssignParams, AttentionParams, MatmulParams, OpParams};
    assert_eq!(std::mem::size_of::<MatmulParams>(), 32);
    assert_eq!(std::mem::size_of::<AssignParams>(), 16);
    assert_eq!(std::mem::size_of::<OpParams>(), 32);
    assert_eq!(std::mem::size_of::<AttentionParams>(), 32);
    if !nvrtc_or_skip("kernel_signatures_match_the_launch_code") {
        return;
    }
    let ptx: Vec<String> = KERNEL_FILES
        .iter()
        .map(|(stem, _)| {
            compile_ptx(&module_source(stem).expect("source"), stem, "sm_80")
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let all = ptx.join("\n");
    for (entry, arity, block) in ABI {
        let params = entry_params(&all, entry);
        assert_eq!(params.len(), arity, "{entry}: PTX params {params:?}");
        if let Some(size) = block {
            assert!(
                params[0].contains(".b8") && params[0].ends_with(&format!("[{size}]")),
                "{entry}: first parameter should be a {size}-byte block, got {}",
                params[0]
            );
        }
    }
    // Every entry of the contract has a row above.
    let listed: usize = KERNEL_ENTRIES.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(listed, ABI.len());
}

/// The C structs of kernels/common.cuh list the fields of src/backend/params.rs
/// in the same order (the WGSL structs are checked the same way by the wgpu
/// side).
#[test]
fn common_header_structs_match_params_rs() {
    let header = quantscope::backend::cuda::compile::COMMON_HEADER;
    let rust = include_str!("../src/backend/params.rs");
    for name in [
        "MatmulParams",
        "QuantizeParams",
        "AssignParams",
        "OpParams",
        "AttentionParams",
    ] {
        let body = |text: &str, open: &str| -> Vec<String> {
            let start = text
                .find(open)
                .unwrap_or_else(|| panic!("{open} not found"));
            let rest = &text[start + open.len()..];
            let end = rest.find('}').expect("closing brace");
            rest[..end]
                .lines()
                .map(str::trim)
                .filter(|l| !l.starts_with("//") && !l.is_empty())
                .filter_map(|l| {
                    let l = l.trim_start_matches("pub ");
                    let field = if l.contains(':') {
                        l.split(':').next()
                    } else {
                        l.trim_end_matches(';').split_whitespace().nth(1)
                    };
                    field.map(|f| f.trim().to_string())
                })
                .collect()
        };
        let c_fields = body(header, &format!("struct {name} {{"));
        let r_fields = body(rust, &format!("pub struct {name} {{"));
        assert!(!c_fields.is_empty());
        assert_eq!(c_fields, r_fields, "{name}: common.cuh vs params.rs");
    }
}
