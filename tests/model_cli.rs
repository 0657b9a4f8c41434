//! `quantscope forward` end to end on the tiny preset, and the CPU
//! activation choice it shares with `profile`.

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

/// `--cpu-activations`: each choice is reported, `f32` is the weights' own
/// fidelity, `int8` adds a little activation rounding to int8 weights (their
/// GEMVs only: the tiny preset's matmuls are all GEMMs here, so none), and
/// `int8-all` rounds the q8 GEMMs too, so it is further from the reference.
#[test]
fn forward_cpu_activation_choices() {
    let run = |acts: &str| {
        json(
            &bin()
                .args([
                    "forward",
                    "--strategy",
                    "int8",
                    "--json",
                    "--batch",
                    "4",
                    "--cpu-activations",
                    acts,
                ])
                .output()
                .unwrap(),
        )
    };
    let nmse = |v: &serde_json::Value| v["fidelity"]["hidden_nmse"].as_f64().unwrap();
    let (f32a, int8, all) = (run("f32"), run("int8"), run("int8-all"));
    for (v, name) in [(&f32a, "f32"), (&int8, "int8"), (&all, "int8-all")] {
        assert_eq!(v["cpu_activations"], name, "{v}");
        assert!(v["fidelity"]["cosine_min"].as_f64().unwrap() > 0.99, "{v}");
    }
    assert_eq!(nmse(&f32a), nmse(&int8), "int8 weights' GEMMs keep f32");
    assert!(
        nmse(&all) > 1.2 * nmse(&f32a),
        "int8-all rounds the q8 GEMMs: hidden NMSE {} vs {}",
        nmse(&all),
        nmse(&f32a)
    );
    let wgpu = bin()
        .args(["forward", "--backend", "wgpu", "--json"])
        .output()
        .unwrap();
    if wgpu.status.success() {
        let v = json(&wgpu);
        assert!(v["cpu_activations"].is_null(), "{v}");
    }
}

/// `profile --backend cpu` says which rows multiply int8 activations: the
/// GEMV and (with `int8-all`) the q8 GEMM, and names the setting.
#[test]
fn profile_cpu_activation_rows() {
    let run = |acts: Option<&str>| {
        let mut c = bin();
        c.args([
            "profile",
            "--backend",
            "cpu",
            "--format",
            "q8",
            "--shape",
            "40x300",
            "--batch",
            "3,16",
            "--group",
            "32",
            "--runs",
            "2",
            "--copy-mib",
            "1",
            "--json",
        ]);
        if let Some(a) = acts {
            c.args(["--cpu-activations", a]);
        }
        json(&c.output().unwrap())
    };
    for (acts, name, gemm_int8) in [
        (None, "int8", false),
        (Some("int8-all"), "int8-all", true),
        (Some("f32"), "f32", false),
    ] {
        let v = run(acts);
        assert_eq!(v["cpu_activations"], name, "{v}");
        let k = &v["kernels"];
        assert_eq!(k[0]["kernel"], "gemv_q8");
        assert_eq!(k[0]["int8_activations"], name != "f32", "{v}");
        assert_eq!(k[1]["kernel"], "gemm_q8");
        assert_eq!(k[1]["int8_activations"], gemm_int8, "{v}");
    }
}
