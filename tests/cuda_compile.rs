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
    compile_ptx, kernel_entries, module_source, nvrtc_available, nvrtc_missing_reason, KERNEL_FILES,
};
use quantscope::backend::cuda::launch::{
    launch_of, ArgKind, Elem, HostParts, ParamBlock, Part, LAUNCHES,
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

    for (stem, _) in KERNEL_FILES {
        let entries = kernel_entries(stem);
        assert!(!entries.is_empty(), "{stem}.cu has no launch description");
        let src = module_source(stem).expect("embedded source");
        for arch in ARCHS {
            let ptx = match compile_ptx(&src, stem, arch) {
                Ok(p) => p,
                Err(e) => panic!("{e}"),
            };
            for entry in &entries {
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

/// One parameter of a kernel signature in a `.cu` file.
#[derive(Debug, Clone, PartialEq)]
struct CuParam {
    /// The type name (`u8`, `float`, `MatmulParams`, ...).
    ty: String,
    pointer: bool,
    constant: bool,
    name: String,
}

/// Removes `//` comments and joins `\`-continued lines.
fn strip_comments(source: &str) -> String {
    source
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `extern "C" __global__ void [__launch_bounds__(..)] NAME(PARAMS)` at the
/// start of `text`: NAME and the parameters.
fn parse_signature(text: &str) -> (String, Vec<CuParam>) {
    let mut rest = text.trim_start();
    if let Some(r) = rest.strip_prefix("__launch_bounds__") {
        let close = r.find(')').expect("__launch_bounds__(...)");
        rest = r[close + 1..].trim_start();
    }
    let open = rest.find('(').expect("a parameter list");
    let name = rest[..open].trim().to_string();
    let close = rest[open..].find(')').expect("a closing parenthesis") + open;
    let params = rest[open + 1..close]
        .split(',')
        .map(|p| {
            let spaced = p.replace('*', " * ");
            let words: Vec<&str> = spaced
                .split_whitespace()
                .filter(|w| *w != "__restrict__")
                .collect();
            let name = words.last().expect("a parameter name").to_string();
            let ty = words
                .iter()
                .take(words.len() - 1)
                .find(|w| **w != "const" && **w != "*")
                .expect("a parameter type")
                .to_string();
            CuParam {
                ty,
                pointer: words.contains(&"*"),
                constant: words.contains(&"const"),
                name,
            }
        })
        .collect();
    (name, params)
}

/// Every `extern "C" __global__` entry of a kernel file with its parameters,
/// including entries written through a macro (`GEMM_ENTRY(gemm_f32, ...)`).
fn cu_signatures(source: &str) -> Vec<(String, Vec<CuParam>)> {
    const KERNEL: &str = "extern \"C\" __global__ void";
    let text = strip_comments(source);
    let mut out = Vec::new();
    // Macros whose body defines an entry: (name, parameters, body).
    let mut macros: Vec<(String, Vec<String>, String)> = Vec::new();
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim();
        if let Some(def) = line.strip_prefix("#define ") {
            if let (Some(open), Some(at)) = (def.find('('), def.find(KERNEL)) {
                let close = def.find(')').expect("macro parameters");
                if open < close && close < at {
                    let params = def[open + 1..close]
                        .split(',')
                        .map(|p| p.trim().to_string())
                        .collect();
                    macros.push((
                        def[..open].to_string(),
                        params,
                        def[at + KERNEL.len()..].to_string(),
                    ));
                }
            }
            continue;
        }
        if line.contains(KERNEL) {
            // A direct definition: the signature may run over several lines.
            let start = line_start + raw.find(KERNEL).expect("found above") + KERNEL.len();
            out.push(parse_signature(&text[start..]));
            continue;
        }
        for (name, params, body) in &macros {
            if let Some(args) = line
                .strip_prefix(name.as_str())
                .and_then(|r| r.strip_prefix('('))
            {
                let args: Vec<&str> = args[..args.rfind(')').expect("macro call")]
                    .split(',')
                    .map(str::trim)
                    .collect();
                let (entry, sig) = parse_signature(body);
                let entry = params
                    .iter()
                    .position(|p| *p == entry)
                    .map_or(entry, |i| args[i].to_string());
                out.push((entry, sig));
            }
        }
    }
    // An entry defined in both branches of an `#if` (gemm.cu: tensor cores
    // or not) must have one signature.
    let mut unique: Vec<(String, Vec<CuParam>)> = Vec::new();
    for (entry, params) in out {
        match unique.iter().find(|(e, _)| *e == entry) {
            Some((_, first)) => assert_eq!(first, &params, "{entry}: two different signatures"),
            None => unique.push((entry, params)),
        }
    }
    unique
}

/// Whether the `.cu` parameter `p` is what the launch description says.
fn matches_kind(p: &CuParam, kind: ArgKind) -> bool {
    match kind {
        ArgKind::Params(block) => !p.pointer && p.ty == block.c_name(),
        ArgKind::Ptr { elem, writes } => p.pointer && p.ty == elem.c_name() && p.constant != writes,
        ArgKind::Scalar(elem) => !p.pointer && p.ty == elem.c_name(),
    }
}

/// The launch descriptions the backend pushes its arguments by
/// (src/backend/cuda/launch.rs) are the kernels' signatures: every entry of
/// every kernel file has one, with the same parameter names, types and
/// constness in the same order. No NVRTC needed.
#[test]
fn launch_descriptions_match_the_kernel_sources() {
    let mut seen = Vec::new();
    for (stem, source) in KERNEL_FILES {
        let sigs = cu_signatures(source);
        assert!(!sigs.is_empty(), "no kernel entry found in {stem}.cu");
        let listed = kernel_entries(stem);
        let mut found: Vec<&str> = sigs.iter().map(|(e, _)| e.as_str()).collect();
        found.sort();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(
            found, listed_sorted,
            "{stem}.cu entries vs the launch table"
        );
        for (entry, params) in &sigs {
            let desc = launch_of(entry)
                .unwrap_or_else(|| panic!("{stem}.cu: {entry} has no launch description"));
            assert_eq!(
                desc.stem, stem,
                "{entry}: described as a kernel of {}.cu",
                desc.stem
            );
            let described: Vec<String> = desc
                .args
                .iter()
                .map(|a| format!("{}: {:?}", a.name, a.kind))
                .collect();
            assert_eq!(
                params.len(),
                desc.args.len(),
                "{entry}: {stem}.cu has {params:?}, the launch description {described:?}"
            );
            for (i, (p, a)) in params.iter().zip(desc.args).enumerate() {
                assert!(
                    p.name == a.name && matches_kind(p, a.kind),
                    "{entry} argument {i}: the launch description says {}: {:?}, {stem}.cu says {p:?}",
                    a.name,
                    a.kind
                );
            }
            seen.push(entry.clone());
        }
    }
    // No description of an entry that no kernel file defines.
    for l in LAUNCHES {
        for e in l.entries {
            assert!(
                seen.iter().any(|s| s == e),
                "{e} is described but in no .cu file"
            );
        }
    }
}

/// The backend passes kernel arguments only through its checked launcher
/// (`Launch` in src/backend/cuda/mod.rs), so what it pushes is what the
/// descriptions say.
#[test]
fn the_backend_launches_only_through_the_descriptions() {
    let backend = include_str!("../src/backend/cuda/mod.rs");
    assert_eq!(
        backend.matches("launch_builder(").count(),
        1,
        "src/backend/cuda/mod.rs builds a kernel launch outside `Launch`"
    );
}

/// Size of the C struct `name` of common.cuh: its fields are 4-byte `u32`
/// or `float` values (no padding), or the test fails.
fn c_struct_size(header: &str, name: &str) -> usize {
    let open = format!("struct {name} {{");
    let start = header
        .find(&open)
        .unwrap_or_else(|| panic!("{open} not found"))
        + open.len();
    let body = &header[start..start + header[start..].find('}').expect("closing brace")];
    body.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| match l.split_whitespace().next() {
            Some("u32") | Some("float") => 4,
            other => panic!("{name}: field type {other:?} is not u32 or float"),
        })
        .sum()
}

/// Every parameter block has the same size in params.rs (what the backend
/// copies) and in common.cuh (what the kernel reads).
#[test]
fn param_blocks_are_the_same_size_on_both_sides() {
    let header = quantscope::backend::cuda::compile::COMMON_HEADER;
    for block in [
        ParamBlock::Matmul,
        ParamBlock::Quantize,
        ParamBlock::Assign,
        ParamBlock::Op,
        ParamBlock::Attention,
    ] {
        assert_eq!(
            block.size(),
            c_struct_size(header, block.c_name()),
            "{}: params.rs vs common.cuh",
            block.c_name()
        );
    }
}

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

/// The compiled kernels take what the launch descriptions say: as many
/// parameters, each a block of the struct's size, a 64-bit pointer or a
/// scalar of the described type.
#[test]
fn launch_descriptions_match_the_ptx() {
    if !nvrtc_or_skip("launch_descriptions_match_the_ptx") {
        return;
    }
    for arch in ["sm_75", "sm_80"] {
        for (stem, _) in KERNEL_FILES {
            let ptx = compile_ptx(&module_source(stem).expect("source"), stem, arch)
                .unwrap_or_else(|e| panic!("{e}"));
            for l in LAUNCHES.iter().filter(|l| l.stem == stem) {
                for entry in l.entries {
                    let params = entry_params(&ptx, entry);
                    assert_eq!(
                        params.len(),
                        l.args.len(),
                        "{entry} ({arch}): PTX params {params:?}"
                    );
                    for (p, a) in params.iter().zip(l.args) {
                        let ok = match a.kind {
                            ArgKind::Params(b) => {
                                p.contains(".b8 ") && p.ends_with(&format!("[{}]", b.size()))
                            }
                            ArgKind::Ptr { .. } => p.contains(".u64 "),
                            ArgKind::Scalar(Elem::U32) => p.contains(".u32 "),
                            ArgKind::Scalar(Elem::F32) => p.contains(".f32 "),
                            ArgKind::Scalar(e) => panic!("{entry}: no PTX check for scalar {e:?}"),
                        };
                        assert!(
                            ok,
                            "{entry} ({arch}) argument {}: described {:?}, PTX {p}",
                            a.name, a.kind
                        );
                    }
                }
            }
        }
    }
}

/// The parts of a packed matrix reach the matrix kernels by parameter name
/// (`MatrixParts::by_name`, the backend's only mapping from a name such as
/// `scales` to a buffer): each is the part of that name, of the type the
/// kernels declare, and only read.
#[test]
fn matrix_parts_are_the_buffers_the_kernels_name() {
    use half::f16;
    use quantscope::format::{
        pack_lut4, pack_plain, pack_q4, pack_q8, FormatKind, GroupSize, Matrix, Outliers, Packed,
        NF4_CODEBOOK,
    };
    let (rows, cols) = (5, 70);
    let w = Matrix::from_vec(
        rows,
        cols,
        (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect(),
    )
    .expect("matrix");
    let outliers = Outliers::from_rows(&[
        vec![(3, f16::from_f32(2.5))],
        vec![],
        vec![(0, f16::from_f32(-1.0)), (69, f16::from_f32(4.0))],
        vec![],
        vec![(10, f16::from_f32(0.5))],
    ]);
    let act: Vec<f32> = (0..cols).map(|c| 0.5 + c as f32 / 64.0).collect();
    let g = GroupSize::Cols(32);
    let matrices = [
        pack_q4(&w, g).expect("q4"),
        pack_q8(&w, g).expect("q8"),
        pack_lut4(&w, g, NF4_CODEBOOK).expect("lut4"),
        pack_plain(&w, FormatKind::F16).expect("f16"),
    ]
    .map(|m| {
        m.with_outliers(outliers.clone())
            .and_then(|m| m.with_act_scale(act.clone()))
            .expect("outliers and act scale")
    });
    let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();
    for m in &matrices {
        let parts = HostParts::of(m);
        // Types and directions: what every matrix kernel declares.
        for l in LAUNCHES {
            for a in l.args {
                let Some(part) = parts.by_name(a.name) else {
                    continue;
                };
                if matches!(l.stem, "assign" | "quantize") {
                    // Their `values` / `w` / `scales` are not a matrix's parts.
                    continue;
                }
                assert_eq!(
                    ArgKind::Ptr {
                        elem: part.elem(),
                        writes: false
                    },
                    a.kind,
                    "{:?} argument {}: the part the backend passes is not what the kernel declares",
                    l.entries,
                    a.name
                );
            }
        }
        // Contents: each name is the part of that name.
        let u8s = |name: &str| match parts.by_name(name) {
            Some(Part::U8(v)) => v.to_vec(),
            other => panic!("{name}: {other:?}"),
        };
        let u16s = |name: &str| match parts.by_name(name) {
            Some(Part::U16(v)) => v.to_vec(),
            other => panic!("{name}: {other:?}"),
        };
        let u32s = |name: &str| match parts.by_name(name) {
            Some(Part::U32(v)) => v.to_vec(),
            other => panic!("{name}: {other:?}"),
        };
        let f32s = |name: &str| match parts.by_name(name) {
            Some(Part::F32(v)) => v.to_vec(),
            other => panic!("{name}: {other:?}"),
        };
        let (codes, scales, zeros, codebook): (Vec<u8>, Vec<u16>, Vec<u8>, Vec<f32>) =
            match m.packed() {
                Packed::Q4(q) => (
                    bytemuck::cast_slice(&q.codes).to_vec(),
                    bits(&q.scales),
                    q.zeros.clone(),
                    vec![],
                ),
                Packed::Q8(q) => (
                    bytemuck::cast_slice(&q.codes).to_vec(),
                    bits(&q.scales),
                    vec![],
                    vec![],
                ),
                Packed::Lut4(q) => (
                    bytemuck::cast_slice(&q.codes).to_vec(),
                    bits(&q.scales),
                    vec![],
                    q.codebook.to_vec(),
                ),
                Packed::F16(v) => (
                    bytemuck::cast_slice(&bits(v)).to_vec(),
                    vec![],
                    vec![],
                    vec![],
                ),
                _ => unreachable!(),
            };
        let what = m.kind();
        assert_eq!(u8s("w"), codes, "{what}: w");
        assert_eq!(u16s("scales"), scales, "{what}: scales");
        assert_eq!(u8s("zeros"), zeros, "{what}: zeros");
        assert_eq!(f32s("codebook"), codebook, "{what}: codebook");
        assert_eq!(u32s("row_ptr"), outliers.row_ptr, "{what}: row_ptr");
        assert_eq!(u32s("col_idx"), outliers.col_idx, "{what}: col_idx");
        assert_eq!(u16s("ovals"), bits(&outliers.values), "{what}: ovals");
        assert_eq!(u16s("values"), bits(&outliers.values), "{what}: values");
        assert_eq!(f32s("act_scale"), act, "{what}: act_scale");
        assert!(parts.by_name("x").is_none() && parts.by_name("y").is_none());
    }
}

/// The C structs of kernels/common.cuh list the fields of src/backend/params.rs
/// in the same order.
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
