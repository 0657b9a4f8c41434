//! Shared by the model tests: an f64 reference forward pass (plain loops,
//! written from the architecture papers, sharing nothing with the library's
//! forward), and small generated checkpoints in the Hugging Face layout
//! with the real tensor names.
#![allow(dead_code)]

use std::path::Path;

use quantscope::backend::Activation;
use quantscope::model::{Batch, BatchData, Family, Model, Pooling};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use safetensors::tensor::{Dtype, TensorView};

/// Pooled outputs (`n x dim`) and last hidden state (`n x seq x hidden`) in f64.
pub struct Reference {
    pub pooled: Vec<f64>,
    pub last_hidden: Vec<f64>,
    pub dim: usize,
}

fn t(m: &Model, name: &str) -> Vec<f64> {
    m.tensor(name)
        .unwrap_or_else(|| panic!("model lacks {name}"))
        .data()
        .iter()
        .map(|&v| v as f64)
        .collect()
}

/// `y = x · Wᵀ + b` for `rows` rows.
fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, rows: usize, out: usize) -> Vec<f64> {
    let inp = x.len() / rows;
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let mut s = b.map_or(0.0, |b| b[o]);
            for c in 0..inp {
                s += x[r * inp + c] * w[o * inp + c];
            }
            y[r * out + o] = s;
        }
    }
    y
}

fn layer_norm(x: &[f64], g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let h = g.len();
    let mut y = vec![0.0; x.len()];
    for (yr, xr) in y.chunks_mut(h).zip(x.chunks(h)) {
        let mean = xr.iter().sum::<f64>() / h as f64;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / h as f64;
        for j in 0..h {
            yr[j] = (xr[j] - mean) / (var + eps).sqrt() * g[j] + b[j];
        }
    }
    y
}

fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: Option<&[f32]>,
    n: usize,
    s: usize,
    heads: usize,
) -> Vec<f64> {
    let h = q.len() / (n * s);
    let d = h / heads;
    let mut y = vec![0.0; q.len()];
    for b in 0..n {
        for hd in 0..heads {
            for i in 0..s {
                let mut sc = vec![f64::NEG_INFINITY; s];
                for j in 0..s {
                    if mask.is_some_and(|m| m[b * s + j] < 0.5) {
                        continue;
                    }
                    let mut dot = 0.0;
                    for e in 0..d {
                        dot += q[(b * s + i) * h + hd * d + e] * k[(b * s + j) * h + hd * d + e];
                    }
                    sc[j] = dot / (d as f64).sqrt();
                }
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = sc
                    .iter()
                    .map(|&x| {
                        if x == f64::NEG_INFINITY {
                            0.0
                        } else {
                            (x - mx).exp()
                        }
                    })
                    .collect();
                let z: f64 = p.iter().sum();
                for e in 0..d {
                    let mut acc = 0.0;
                    for j in 0..s {
                        acc += p[j] / z * v[(b * s + j) * h + hd * d + e];
                    }
                    y[(b * s + i) * h + hd * d + e] = acc;
                }
            }
        }
    }
    y
}

fn act(kind: Activation, x: f64) -> f64 {
    kind.eval_f64(x)
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// The f64 forward pass of `m` on `batch`.
pub fn reference(m: &Model, batch: &Batch) -> Reference {
    let c = m.config().clone();
    let (n, s, h) = (batch.n, batch.seq, c.hidden);
    let rows = n * s;
    let eps = c.eps as f64;
    let ln = |x: &[f64], base: &str| {
        layer_norm(
            x,
            &t(m, &format!("{base}.weight")),
            &t(m, &format!("{base}.bias")),
            eps,
        )
    };
    let lin = |x: &[f64], base: &str, out: usize, bias: bool| {
        let b = bias.then(|| t(m, &format!("{base}.bias")));
        linear(
            x,
            &t(m, &format!("{base}.weight")),
            b.as_deref(),
            rows_of(x, base, m),
            out,
        )
    };
    fn rows_of(x: &[f64], base: &str, m: &Model) -> usize {
        let cols = m.tensor(&format!("{base}.weight")).unwrap().cols();
        x.len() / cols
    }
    let mut x: Vec<f64>;
    let mask: Option<&[f32]>;
    match (&batch.data, c.family) {
        (BatchData::Tokens { ids, mask: mk }, Family::Bert) => {
            let (w, p, ty) = (
                t(m, "embeddings.word_embeddings.weight"),
                t(m, "embeddings.position_embeddings.weight"),
                t(m, "embeddings.token_type_embeddings.weight"),
            );
            let mut e = vec![0.0; rows * h];
            for r in 0..rows {
                let id = ids[r] as usize;
                for j in 0..h {
                    e[r * h + j] = w[id * h + j] + p[(r % s) * h + j] + ty[j];
                }
            }
            x = ln(&e, "embeddings.LayerNorm");
            mask = Some(mk);
        }
        (BatchData::Patches { rows: pr }, Family::ClipVision) => {
            let pe: Vec<f64> = pr.iter().map(|&v| v as f64).collect();
            let e = linear(
                &pe,
                &t(m, "vision_model.embeddings.patch_embedding.weight"),
                None,
                rows,
                h,
            );
            let pos = t(m, "vision_model.embeddings.position_embedding.weight");
            let cls = t(m, "vision_model.embeddings.class_embedding");
            let mut e2 = e.clone();
            for r in 0..rows {
                for j in 0..h {
                    e2[r * h + j] += pos[(r % s) * h + j] + if r % s == 0 { cls[j] } else { 0.0 };
                }
            }
            x = ln(&e2, "vision_model.pre_layrnorm");
            mask = None;
        }
        _ => panic!("batch kind does not match"),
    }
    for l in 0..c.layers {
        match c.family {
            Family::Bert => {
                let p = format!("encoder.layer.{l}");
                let q = lin(&x, &format!("{p}.attention.self.query"), h, true);
                let k = lin(&x, &format!("{p}.attention.self.key"), h, true);
                let v = lin(&x, &format!("{p}.attention.self.value"), h, true);
                let a = attention(&q, &k, &v, mask, n, s, c.heads);
                let o = lin(&a, &format!("{p}.attention.output.dense"), h, true);
                let x1 = ln(&add(&o, &x), &format!("{p}.attention.output.LayerNorm"));
                let hh = lin(
                    &x1,
                    &format!("{p}.intermediate.dense"),
                    c.intermediate,
                    true,
                );
                let g: Vec<f64> = hh.iter().map(|&v| act(c.activation, v)).collect();
                let o2 = lin(&g, &format!("{p}.output.dense"), h, true);
                x = ln(&add(&o2, &x1), &format!("{p}.output.LayerNorm"));
            }
            Family::ClipVision => {
                let p = format!("vision_model.encoder.layers.{l}");
                let t1 = ln(&x, &format!("{p}.layer_norm1"));
                let q = lin(&t1, &format!("{p}.self_attn.q_proj"), h, true);
                let k = lin(&t1, &format!("{p}.self_attn.k_proj"), h, true);
                let v = lin(&t1, &format!("{p}.self_attn.v_proj"), h, true);
                let a = attention(&q, &k, &v, None, n, s, c.heads);
                let r1 = add(&lin(&a, &format!("{p}.self_attn.out_proj"), h, true), &x);
                let t2 = ln(&r1, &format!("{p}.layer_norm2"));
                let hh = lin(&t2, &format!("{p}.mlp.fc1"), c.intermediate, true);
                let g: Vec<f64> = hh.iter().map(|&v| act(c.activation, v)).collect();
                x = add(&lin(&g, &format!("{p}.mlp.fc2"), h, true), &r1);
            }
        }
    }
    let (pool, normalize) = m.pooling();
    let (dim, mut pooled) = match pool {
        Pooling::Mean => {
            let mk = mask.unwrap();
            let mut out = vec![0.0; n * h];
            for b in 0..n {
                let cnt: f64 = (0..s).map(|t| mk[b * s + t] as f64).sum();
                for t in 0..s {
                    if mk[b * s + t] > 0.5 {
                        for j in 0..h {
                            out[b * h + j] += x[(b * s + t) * h + j] / cnt;
                        }
                    }
                }
            }
            (h, out)
        }
        Pooling::Cls => (
            h,
            (0..n).flat_map(|b| x[b * s * h..][..h].to_vec()).collect(),
        ),
        Pooling::ClipClass => {
            let cls: Vec<f64> = (0..n).flat_map(|b| x[b * s * h..][..h].to_vec()).collect();
            let pl = layer_norm(
                &cls,
                &t(m, "vision_model.post_layernorm.weight"),
                &t(m, "vision_model.post_layernorm.bias"),
                eps,
            );
            match c.projection_dim {
                Some(pd) => (
                    pd,
                    linear(&pl, &t(m, "visual_projection.weight"), None, n, pd),
                ),
                None => (h, pl),
            }
        }
    };
    if normalize {
        for r in pooled.chunks_mut(dim) {
            let nn = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            r.iter_mut().for_each(|v| *v /= nn);
        }
    }
    Reference {
        pooled,
        last_hidden: x,
        dim,
    }
}

/// Cosine of two vectors.
pub fn cosine(a: &[f64], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let y = y as f64;
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// One tensor to write: name, shape, f32 values.
pub type Tensor = (String, Vec<usize>, Vec<f32>);

/// Random tensors for a small checkpoint of `family` with the real names.
pub fn small_tensors(family: Family, seed: u64) -> (serde_json::Value, Vec<Tensor>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut tensors: Vec<Tensor> = Vec::new();
    let mut add =
        |name: String, shape: Vec<usize>, std: f32, mean: f32, rng: &mut Xoshiro256PlusPlus| {
            let n: usize = shape.iter().product();
            let d = Normal::new(mean, std).unwrap();
            tensors.push((name, shape, (0..n).map(|_| d.sample(rng)).collect()));
        };
    let (h, i, layers) = (48usize, 80usize, 2usize);
    match family {
        Family::Bert => {
            let cfg = serde_json::json!({
                "architectures": ["BertModel"], "model_type": "bert", "hidden_size": h,
                "num_hidden_layers": layers, "num_attention_heads": 4, "intermediate_size": i,
                "hidden_act": "gelu", "layer_norm_eps": 1e-12, "vocab_size": 300,
                "max_position_embeddings": 64, "type_vocab_size": 2
            });
            add(
                "embeddings.word_embeddings.weight".into(),
                vec![300, h],
                0.5,
                0.0,
                &mut rng,
            );
            add(
                "embeddings.position_embeddings.weight".into(),
                vec![64, h],
                0.2,
                0.0,
                &mut rng,
            );
            add(
                "embeddings.token_type_embeddings.weight".into(),
                vec![2, h],
                0.2,
                0.0,
                &mut rng,
            );
            add(
                "embeddings.LayerNorm.weight".into(),
                vec![h],
                0.1,
                1.0,
                &mut rng,
            );
            add(
                "embeddings.LayerNorm.bias".into(),
                vec![h],
                0.1,
                0.0,
                &mut rng,
            );
            add(
                "embeddings.position_ids".into(),
                vec![1, 64],
                0.0,
                0.0,
                &mut rng,
            );
            for l in 0..layers {
                let p = format!("encoder.layer.{l}");
                for (n, r, c) in [
                    ("attention.self.query", h, h),
                    ("attention.self.key", h, h),
                    ("attention.self.value", h, h),
                    ("attention.output.dense", h, h),
                    ("intermediate.dense", i, h),
                    ("output.dense", h, i),
                ] {
                    add(
                        format!("{p}.{n}.weight"),
                        vec![r, c],
                        1.0 / (c as f32).sqrt(),
                        0.0,
                        &mut rng,
                    );
                    add(format!("{p}.{n}.bias"), vec![r], 0.1, 0.0, &mut rng);
                }
                for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
                    add(format!("{p}.{n}.weight"), vec![h], 0.1, 1.0, &mut rng);
                    add(format!("{p}.{n}.bias"), vec![h], 0.1, 0.0, &mut rng);
                }
            }
            add("pooler.dense.weight".into(), vec![h, h], 0.1, 0.0, &mut rng);
            (cfg, tensors)
        }
        Family::ClipVision => {
            let (img, patch, proj) = (32usize, 8usize, 24usize);
            let tokens = (img / patch) * (img / patch) + 1;
            let cfg = serde_json::json!({
                "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": proj,
                "vision_config": {"hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
                    "num_attention_heads": 4, "image_size": img, "patch_size": patch,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
            });
            add(
                "vision_model.embeddings.patch_embedding.weight".into(),
                vec![h, 3, patch, patch],
                0.05,
                0.0,
                &mut rng,
            );
            add(
                "vision_model.embeddings.class_embedding".into(),
                vec![h],
                0.5,
                0.0,
                &mut rng,
            );
            add(
                "vision_model.embeddings.position_embedding.weight".into(),
                vec![tokens, h],
                0.2,
                0.0,
                &mut rng,
            );
            add(
                "vision_model.pre_layrnorm.weight".into(),
                vec![h],
                0.1,
                1.0,
                &mut rng,
            );
            add(
                "vision_model.pre_layrnorm.bias".into(),
                vec![h],
                0.1,
                0.0,
                &mut rng,
            );
            for l in 0..layers {
                let p = format!("vision_model.encoder.layers.{l}");
                for (n, r, c) in [
                    ("self_attn.q_proj", h, h),
                    ("self_attn.k_proj", h, h),
                    ("self_attn.v_proj", h, h),
                    ("self_attn.out_proj", h, h),
                    ("mlp.fc1", i, h),
                    ("mlp.fc2", h, i),
                ] {
                    add(
                        format!("{p}.{n}.weight"),
                        vec![r, c],
                        1.0 / (c as f32).sqrt(),
                        0.0,
                        &mut rng,
                    );
                    add(format!("{p}.{n}.bias"), vec![r], 0.1, 0.0, &mut rng);
                }
                for n in ["layer_norm1", "layer_norm2"] {
                    add(format!("{p}.{n}.weight"), vec![h], 0.1, 1.0, &mut rng);
                    add(format!("{p}.{n}.bias"), vec![h], 0.1, 0.0, &mut rng);
                }
            }
            add(
                "vision_model.post_layernorm.weight".into(),
                vec![h],
                0.1,
                1.0,
                &mut rng,
            );
            add(
                "vision_model.post_layernorm.bias".into(),
                vec![h],
                0.1,
                0.0,
                &mut rng,
            );
            add(
                "visual_projection.weight".into(),
                vec![proj, h],
                0.1,
                0.0,
                &mut rng,
            );
            add(
                "text_model.embeddings.token_embedding.weight".into(),
                vec![10, 4],
                0.1,
                0.0,
                &mut rng,
            );
            (cfg, tensors)
        }
    }
}

/// Serializes tensors as safetensors with `dtype` (F32, F16 or BF16).
pub fn safetensors_bytes(tensors: &[Tensor], dtype: Dtype) -> Vec<u8> {
    let bufs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bufs)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Writes `config.json` + `model.safetensors` into `dir`.
pub fn write_checkpoint(dir: &Path, cfg: &serde_json::Value, tensors: &[Tensor], dtype: Dtype) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(tensors, dtype),
    )
    .unwrap();
}
