//! `quantscope forward` end to end on the tiny preset.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quantscope"));
    c.env("XDG_RUNTIME_DIR", "/tmp");
    c
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn forward_reports_time_and_fidelity_and_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.safetensors");
    let saved = dir.path().join("tiny-int4");
    let out = bin()
        .args([
            "forward",
            "--preset",
            "tiny",
            "--strategy",
            "int4",
            "--json",
            "--output",
        ])
        .arg(&out_path)
        .arg("--save")
        .arg(&saved)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["inputs"], 32);
    let f = &v["fidelity"];
    let cmin = f["cosine_min"].as_f64().unwrap();
    assert!(cmin > 0.9 && cmin < 1.0, "int4 cosine {cmin}");
    assert!(v["timing"]["time_per_input_s"].as_f64().unwrap() > 0.0);
    assert!(v["weight_bytes"].as_u64().unwrap() < v["f32_weight_bytes"].as_u64().unwrap());
    let bytes = std::fs::read(&out_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("pooled").unwrap().shape(), &[32, 256]);
    let lh = st.tensor("last_hidden").unwrap();
    assert_eq!((lh.shape()[0], lh.shape()[2]), (32, 256));

    // The saved folder runs as stored; the reference is then its own
    // weights dequantized, with f32 activations: what is left is the CPU
    // q4 GEMM's int8 activation rounding (last hidden NMSE ~2e-4 on tiny).
    let again = json(
        &bin()
            .args(["forward", "--json", "--model"])
            .arg(&saved)
            .output()
            .unwrap(),
    );
    assert_eq!(again["strategy"], "int4");
    let c = again["fidelity"]["cosine_min"].as_f64().unwrap();
    assert!(c > 0.999, "stored int4 cosine {c}");
    // With f32 activations the stored model reproduces its own reference.
    let exact = json(
        &bin()
            .args(["forward", "--json", "--cpu-activations", "f32", "--model"])
            .arg(&saved)
            .output()
            .unwrap(),
    );
    let c = exact["fidelity"]["cosine_min"].as_f64().unwrap();
    assert!(c > 0.99999, "stored int4, f32 activations: cosine {c}");
    assert!(again["notes"]
        .to_string()
        .contains("stored quantized model"));
}

#[test]
fn forward_inputs_file_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.txt");
    std::fs::write(&inputs, "first sentence\n\nsecond one here\nthird\n").unwrap();
    let v = json(
        &bin()
            .args([
                "forward",
                "--strategy",
                "none",
                "--json",
                "--batch",
                "2",
                "--inputs",
            ])
            .arg(&inputs)
            .output()
            .unwrap(),
    );
    assert_eq!(v["inputs"], 3);
    assert!(v["fidelity"]["cosine_min"].as_f64().unwrap() > 0.99999);
    // Unknown strategy / preset: a message, exit 1, no panic.
    for args in [["--strategy", "int3"], ["--preset", "huge"]] {
        let out = bin().arg("forward").args(args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
    }
    // A backend without the ops reports n/a cleanly.
    let out = bin()
        .args(["forward", "--backend", "wgpu", "--json"])
        .output()
        .unwrap();
    let v = json(&out);
    assert!(v["status"] == "ok" || v["status"] == "n/a", "{v}");
}
