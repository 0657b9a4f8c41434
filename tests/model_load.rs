//! The checkpoint loader: what it accepts (shards, f16 / bf16, a `bert.`
//! prefix) and, table-driven, what it refuses — each with an error naming
//! the file and the tensor, never a panic.

mod model_util;

use std::path::Path;

use model_util::{safetensors_bytes, small_tensors, write_checkpoint, Tensor};
use quantscope::model::{Family, Model};
use safetensors::tensor::Dtype;

fn write(dir: &Path, family: Family, edit: impl FnOnce(&mut serde_json::Value, &mut Vec<Tensor>)) {
    let (mut cfg, mut tensors) = small_tensors(family, 5);
    edit(&mut cfg, &mut tensors);
    write_checkpoint(dir, &cfg, &tensors, Dtype::F32);
}

#[test]
fn accepts_shards_half_precision_and_prefix() {
    let base = tempfile::tempdir().unwrap();
    let plain = base.path().join("plain");
    write(&plain, Family::Bert, |_, _| {});
    let want = Model::load(&plain).unwrap();
    let name = "encoder.layer.1.output.dense.weight";

    // Two shards and their index.
    let sharded = base.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    let (cfg, tensors) = small_tensors(Family::Bert, 5);
    std::fs::write(sharded.join("config.json"), cfg.to_string()).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        std::fs::write(sharded.join(file), safetensors_bytes(part, Dtype::F32)).unwrap();
        for (n, _, _) in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let got = Model::load(&sharded).unwrap();
    assert_eq!(got.tensor(name), want.tensor(name));

    // bf16 / f16 with a `bert.` prefix: values within their rounding.
    for dtype in [Dtype::F16, Dtype::BF16] {
        let d = base.path().join(format!("{dtype:?}"));
        let (cfg, tensors) = small_tensors(Family::Bert, 5);
        let prefixed: Vec<Tensor> = tensors
            .into_iter()
            .map(|(n, s, v)| (format!("bert.{n}"), s, v))
            .collect();
        write_checkpoint(&d, &cfg, &prefixed, dtype);
        let got = Model::load(&d).unwrap();
        let (x, y) = (
            got.tensor(name).unwrap().data(),
            want.tensor(name).unwrap().data(),
        );
        let tol = if dtype == Dtype::F16 { 1e-3 } else { 8e-3 };
        for (a, b) in x.iter().zip(y) {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1e-2),
                "{dtype:?}: {a} vs {b}"
            );
        }
    }
}

type Edit = fn(&Path);

#[test]
fn refuses_bad_checkpoints_with_a_clear_error() {
    let truncate: Edit = |d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    };
    let corrupt: Edit = |d| {
        let p = d.join("model.safetensors");
        let mut bytes = std::fs::read(&p).unwrap();
        for b in &mut bytes[8..40] {
            *b = b'#';
        }
        std::fs::write(&p, bytes).unwrap();
    };
    let tiny: Edit = |d| std::fs::write(d.join("model.safetensors"), b"abc").unwrap();
    let size_mismatch: Edit = |d| {
        write(d, Family::Bert, |cfg, _| {
            cfg["intermediate_size"] = 96.into()
        });
    };
    let missing: Edit = |d| {
        write(d, Family::Bert, |_, t| {
            t.retain(|(n, _, _)| n != "encoder.layer.1.attention.self.key.weight")
        });
    };
    let nan: Edit = |d| {
        write(d, Family::Bert, |_, t| {
            let e = t
                .iter_mut()
                .find(|(n, _, _)| n == "encoder.layer.0.intermediate.dense.weight")
                .unwrap();
            e.2[17] = f32::NAN;
        });
    };
    let clip_missing: Edit = |d| {
        write(d, Family::ClipVision, |_, t| {
            t.retain(|(n, _, _)| !n.contains("post_layernorm"))
        });
    };
    let unknown_arch: Edit = |d| {
        write(d, Family::Bert, |cfg, _| {
            cfg["model_type"] = "llama".into();
            cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        });
    };
    let wrong_layout: Edit = |d| {
        write(d, Family::Bert, |_, t| {
            for e in t.iter_mut() {
                e.0 = e.0.replace("encoder.layer.", "transformer.h.");
            }
        });
    };
    let no_weights: Edit = |d| std::fs::remove_file(d.join("model.safetensors")).unwrap();
    // (case, edit, substrings the error must contain)
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "truncated",
            truncate,
            vec!["model.safetensors", "not a valid safetensors"],
        ),
        (
            "corrupt header",
            corrupt,
            vec!["model.safetensors", "not a valid safetensors"],
        ),
        (
            "3-byte file",
            tiny,
            vec!["model.safetensors", "shorter than a header"],
        ),
        (
            "config/tensor size mismatch",
            size_mismatch,
            vec![
                "model.safetensors",
                "encoder.layer.0.intermediate.dense.weight",
                "shape",
            ],
        ),
        (
            "missing tensor",
            missing,
            vec!["encoder.layer.1.attention.self.key.weight", "missing 1"],
        ),
        (
            "NaN weight",
            nan,
            vec![
                "model.safetensors",
                "encoder.layer.0.intermediate.dense.weight",
                "not finite",
                "17",
            ],
        ),
        (
            "CLIP missing post_layernorm",
            clip_missing,
            vec!["vision_model.post_layernorm.weight", "missing 2"],
        ),
        (
            "unknown architecture",
            unknown_arch,
            vec!["config.json", "llama", "BERT family"],
        ),
        (
            "unknown layout",
            wrong_layout,
            vec!["missing", "unexpected", "transformer.h.0", "supported"],
        ),
        ("no weights file", no_weights, vec!["no model.safetensors"]),
    ];
    for (case, edit, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), Family::Bert, |_, _| {});
        edit(dir.path());
        let err = match Model::load(dir.path()) {
            Ok(_) => panic!("{case}: loaded"),
            Err(e) => e.to_string(),
        };
        for w in want {
            assert!(err.contains(w), "{case}: error lacks '{w}': {err}");
        }
    }
}
