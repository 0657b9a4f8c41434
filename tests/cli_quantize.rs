//! The `quantize` and `devices` commands end to end, including bad input.

mod common;

use std::path::Path;
use std::process::Command;

use quantscope::format::Matrix;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quantscope"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_weights(path: &Path) {
    let items = vec![
        ("layer.a".to_string(), common::gaussian(64, 200, 1)),
        ("layer.b".to_string(), common::gaussian(33, 128, 2)),
    ];
    quantscope::io::write_matrices(path, &items).unwrap();
}

/// Bytes of a `rows x cols` matrix in `kind` with groups of `glen` (no
/// outliers), from the table of docs/FORMATS.md.
fn layout_bytes(kind: &str, rows: u64, cols: u64, glen: u64) -> u64 {
    let pad = |b: u64| b.div_ceil(16) * 16;
    let groups = rows * cols.div_ceil(glen);
    match kind {
        "f32" => rows * pad(4 * cols),
        "f16" => rows * pad(2 * cols),
        "q8" => rows * pad(cols) + 2 * groups,
        "q4" => rows * pad(cols.div_ceil(2)) + 3 * groups,
        "lut4" => rows * pad(cols.div_ceil(2)) + 2 * groups + 64,
        k => panic!("{k}"),
    }
}

#[test]
fn quantizes_a_file_with_every_scheme_and_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("w.safetensors");
    write_weights(&input);
    // Each scheme's packed format (label) and storage, from the layout of
    // docs/FORMATS.md: rows padded to 16 bytes, 2-byte scales and 1-byte
    // zeros per group of 64, a 64-byte codebook, CSR outliers (u32 row
    // pointers and columns, f16 values).
    for (scheme, label, kind) in [
        ("none", "f32", "f32"),
        ("f16", "f16", "f16"),
        ("bf16", "bf16", "f16"),
        ("int8", "q8 g64", "q8"),
        ("int4", "q4 g64", "q4"),
        ("int4-clip", "q4 g64", "q4"),
        ("nf4", "lut4 g64", "lut4"),
        ("kmeans4", "lut4 g64", "lut4"),
        ("easyquant4", "q4 g64 +outliers", "q4"),
    ] {
        let out = dir.path().join(format!("{scheme}.safetensors"));
        let (ok, stdout, stderr) = run(&[
            "quantize",
            "--input",
            input.to_str().unwrap(),
            "--scheme",
            scheme,
            "--group",
            "64",
            "--output",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert!(ok, "{scheme}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let tensors = v["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), 2);
        for t in tensors {
            assert!(t["nmse"].as_f64().unwrap() < 0.05, "{scheme}: {t}");
            assert_eq!(t["format"], label, "{scheme}: {t}");
            let (rows, cols) = (t["rows"].as_u64().unwrap(), t["cols"].as_u64().unwrap());
            let nnz = t["outliers"].as_u64().unwrap();
            // EasyQuant keeps the 3-sigma tail of N(0, 1) weights (0.27 %).
            if scheme == "easyquant4" {
                assert!(nnz > 0 && nnz < rows * cols / 100, "{scheme}: {t}");
            } else {
                assert_eq!(nnz, 0, "{scheme}: {t}");
            }
            let bytes = layout_bytes(kind, rows, cols, 64)
                + if nnz > 0 { (rows + 1) * 4 + nnz * 6 } else { 0 };
            assert_eq!(t["bytes"].as_u64().unwrap(), bytes, "{scheme}: {t}");
            let bpw = t["bits_per_weight"].as_f64().unwrap();
            let want = bytes as f64 * 8.0 / (rows * cols) as f64;
            assert!(
                (bpw - want).abs() < 1e-12,
                "{scheme}: {bpw} vs {want} bits per weight"
            );
        }
        let back = quantscope::io::read_quantized(&out).unwrap();
        assert_eq!(back.len(), 2);
        // The stored dequantized tensor equals the packed parts' dequantization.
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let d = st.tensor("layer.a.dequantized").unwrap();
        let d: Vec<f32> = bytemuck::pod_collect_to_vec(d.data());
        let q = back.iter().find(|(n, _)| n == "layer.a").unwrap();
        assert_eq!(d, q.1.dequantize().into_vec());
    }
}

#[test]
fn default_run_uses_the_built_in_sample() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.safetensors");
    let (ok, stdout, stderr) = run(&["quantize", "--output", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("built-in sample model"));
    assert!(stdout.contains("block0.mlp.up"));
    assert!(out.exists());
}

#[test]
fn uniform_scheme_takes_any_width() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("w.safetensors");
    write_weights(&input);
    let out = dir.path().join("u.safetensors");
    for (bits, sym) in [(2u64, false), (3, true), (8, false)] {
        let b = bits.to_string();
        let mut args = vec![
            "quantize",
            "--input",
            input.to_str().unwrap(),
            "--scheme",
            "uniform",
            "--bits",
            &b,
            "--output",
            out.to_str().unwrap(),
            "--json",
        ];
        if sym {
            args.push("--symmetric");
        }
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for t in v["tensors"].as_array().unwrap() {
            let want = format!("uniform{bits} {}", if sym { "sym" } else { "asym" });
            assert_eq!(t["format"], want.as_str(), "{t}");
            // Tightly packed codes plus an f16 scale (and a u8 zero point
            // when asymmetric) per group of 128 (the default group).
            let (rows, cols) = (t["rows"].as_u64().unwrap(), t["cols"].as_u64().unwrap());
            let groups = rows * cols.div_ceil(128);
            let per_group = if sym { 16.0 } else { 24.0 };
            let bpw = bits as f64 + groups as f64 * per_group / (rows * cols) as f64;
            assert!(
                (t["bits_per_weight"].as_f64().unwrap() - bpw).abs() < 1e-12,
                "{t}"
            );
        }
    }
}

fn assert_fails(args: &[&str], needle: &str, out: &Path) {
    let (ok, _, stderr) = run(args);
    assert!(!ok, "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected '{needle}' in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "nothing may be written on failure");
    let stray: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(stray.is_empty());
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("w.safetensors");
    write_weights(&good);
    let out = dir.path().join("out.safetensors");
    let o = out.to_str().unwrap();
    let g = good.to_str().unwrap();

    assert_fails(
        &[
            "quantize",
            "--input",
            "/nonexistent/w.safetensors",
            "--output",
            o,
        ],
        "cannot read '/nonexistent/w.safetensors'",
        &out,
    );

    let text = dir.path().join("text.safetensors");
    std::fs::write(&text, b"this is not a tensor file").unwrap();
    assert_fails(
        &["quantize", "--input", text.to_str().unwrap(), "--output", o],
        "not a valid safetensors file",
        &out,
    );

    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("trunc.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    assert_fails(
        &[
            "quantize",
            "--input",
            truncated.to_str().unwrap(),
            "--output",
            o,
        ],
        "not a valid safetensors file",
        &out,
    );

    // A 1-D tensor and an integer tensor.
    let mixed = dir.path().join("mixed.safetensors");
    let bias = vec![1.0f32; 8];
    let ints = vec![1i32; 16];
    let views = vec![
        (
            "bias".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![8],
                bytemuck::cast_slice(&bias),
            )
            .unwrap(),
        ),
        (
            "ids".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I32,
                vec![4, 4],
                bytemuck::cast_slice(&ints),
            )
            .unwrap(),
        ),
    ];
    std::fs::write(&mixed, safetensors::serialize(views, None).unwrap()).unwrap();
    assert_fails(
        &[
            "quantize",
            "--input",
            mixed.to_str().unwrap(),
            "--output",
            o,
        ],
        "has no 2-D float tensor to quantize; it holds: bias",
        &out,
    );
    assert_fails(
        &[
            "quantize",
            "--input",
            mixed.to_str().unwrap(),
            "--output",
            o,
            "--skip-incompatible",
        ],
        "no 2-D float tensor",
        &out,
    );

    let nan = dir.path().join("nan.safetensors");
    let mut v = common::gaussian(4, 8, 1).into_vec();
    v[13] = f32::INFINITY;
    quantscope::io::write_matrices(&nan, &[("w".into(), Matrix::from_vec(4, 8, v).unwrap())])
        .unwrap();
    assert_fails(
        &["quantize", "--input", nan.to_str().unwrap(), "--output", o],
        "tensor 'w': weight at row 1, column 5 is inf",
        &out,
    );

    assert_fails(
        &["quantize", "--input", g, "--output", o, "--group", "0"],
        "invalid group size 0",
        &out,
    );
    assert_fails(
        &["quantize", "--input", g, "--output", o, "--group", "48"],
        "invalid group size 48",
        &out,
    );
    assert_fails(
        &["quantize", "--input", g, "--output", o, "--scheme", "int3"],
        "unknown --scheme 'int3'",
        &out,
    );
    assert_fails(
        &[
            "quantize", "--input", g, "--output", o, "--scheme", "uniform", "--bits", "9",
        ],
        "9 is not in 2..=8",
        &out,
    );
    assert_fails(
        &[
            "quantize", "--input", g, "--output", o, "--scheme", "uniform", "--bits", "1",
        ],
        "1 is not in 2..=8",
        &out,
    );
    assert_fails(
        &[
            "quantize",
            "--input",
            g,
            "--output",
            o,
            "--scheme",
            "easyquant4",
            "--threshold",
            "0",
        ],
        "--threshold must be a positive",
        &out,
    );
}

#[test]
fn devices_lists_every_backend() {
    let (ok, stdout, stderr) = run(&["devices", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backend"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["cpu", "wgpu", "cuda"]);
    assert_eq!(v[0]["available"], true);
    for b in v.as_array().unwrap() {
        if b["available"] == false {
            assert!(!b["reason"].as_str().unwrap().is_empty());
        }
    }
}

#[test]
fn gptq_and_awq_run_from_the_cli_with_built_in_or_file_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("w.safetensors");
    write_weights(&input);
    let out = dir.path().join("g.safetensors");
    let o = out.to_str().unwrap();
    let i = input.to_str().unwrap();
    for scheme in ["gptq-int4", "awq-int4", "w8a8"] {
        let (ok, stdout, stderr) = run(&[
            "quantize",
            "--input",
            i,
            "--scheme",
            scheme,
            "--group",
            "64",
            "--output",
            o,
            "--json",
            "--calib-rows",
            "256",
            "--eval-rows",
            "64",
        ]);
        assert!(ok, "{scheme}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(v["calibration"].as_str().unwrap().contains("built-in"));
        for t in v["tensors"].as_array().unwrap() {
            assert!(t["output_nmse"].as_f64().unwrap() < 0.05, "{t}");
        }
        let back = quantscope::io::read_quantized(&out).unwrap();
        assert_eq!(back.len(), 2);
        // W8A8 is q8 marked for int8 activations; the others are not marked.
        for (name, m) in &back {
            assert_eq!(m.int8_activations(), scheme == "w8a8", "{scheme} {name}");
        }
    }
    // A calibration file: one tensor per weight name; widths must match.
    let calib = dir.path().join("calib.safetensors");
    let items = vec![
        ("layer.a".to_string(), common::gaussian(40, 200, 8)),
        ("layer.b".to_string(), common::gaussian(40, 128, 9)),
    ];
    quantscope::io::write_matrices(&calib, &items).unwrap();
    let c = calib.to_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "quantize",
        "--input",
        i,
        "--scheme",
        "gptq-int4",
        "--calib",
        c,
        "--output",
        o,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("tensor 'layer.a' of"), "{stdout}");
    let bad = dir.path().join("bad.safetensors");
    let items = vec![
        ("layer.a".to_string(), common::gaussian(40, 199, 8)),
        ("layer.b".to_string(), common::gaussian(40, 128, 9)),
    ];
    quantscope::io::write_matrices(&bad, &items).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_fails(
        &[
            "quantize",
            "--input",
            i,
            "--scheme",
            "awq-int4",
            "--calib",
            bad.to_str().unwrap(),
            "--output",
            o,
        ],
        "199",
        &out,
    );
}
