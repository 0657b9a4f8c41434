//! Compiles every `kernels/*.cu` to PTX with NVRTC for sm_80 and sm_90: the
//! CUDA kernels are checked on machines without a GPU.
//!
//! NVRTC comes from the CUDA toolkit or from the PyPI wheels
//! (`eval "$(.ci/install-nvrtc.sh)"`). Without it the tests skip with one
//! line on stderr, unless `QUANTSCOPE_REQUIRE_NVRTC=1` (CI), where they fail.
//! When `QUANTSCOPE_PTXAS` names a `ptxas` binary, the PTX is also assembled,
//! which checks the inline PTX (mma.sync, cvt) that NVRTC passes through.
#![cfg(feature = "cuda")]

use quantscope::backend::cuda::compile::{
    compile_ptx, module_source, nvrtc_available, nvrtc_missing_reason, KERNEL_ENTRIES, KERNEL_FILES,
};
use quantscope::backend::BackendError;

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// Whether NVRTC is here; panics when it must be (CI) and is not.
fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_available() {
        return true;
    }
    if std::env::var("QUANTSCOPE_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!("QUANTSCOPE_REQUIRE_NVRTC=1 but {}", nvrtc_missing_reason());
    }
    eprintln!("skipping {test}: {}", nvrtc_missing_reason());
    false
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
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc_or_skip("every_kernel_compiles_for_sm80_and_sm90") {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    // Every .cu on disk is embedded (a new file cannot be forgotten).
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("kernels/ exists")
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
