//! Reading a Hugging Face checkpoint's tensors: `model.safetensors`, or the
//! shards a `model.safetensors.index.json` lists, memory-mapped and parsed
//! by the `safetensors` crate (which checks the header and every offset
//! against the file's length, so a truncated file is refused up front).
//! Weights may be f32, f16 or bf16 (f64 too); they become host f32.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use super::config::{expected_tensors, ModelConfig, SUPPORTED};
use super::{Family, ModelError};
use crate::format::Matrix;

/// The checkpoint's files, mapped.
pub(crate) struct TensorFiles {
    files: Vec<(PathBuf, Mmap)>,
}

impl TensorFiles {
    /// Maps `dir/model.safetensors` or the shards of its index.
    pub fn open(dir: &Path) -> Result<TensorFiles, ModelError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Read {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Config {
                    path: index.clone(),
                    reason: format!("not JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    path: index.clone(),
                    reason: "no weight_map object".into(),
                })?;
            let mut shards = BTreeSet::new();
            for (name, file) in map {
                let f = file.as_str().ok_or_else(|| ModelError::Config {
                    path: index.clone(),
                    reason: format!("weight_map entry '{name}' is not a file name"),
                })?;
                // Shard names are plain file names beside the index.
                if f.contains('/') || f.contains('\\') || f == ".." {
                    return Err(ModelError::Config {
                        path: index.clone(),
                        reason: format!("weight_map entry '{name}' names '{f}' outside the folder"),
                    });
                }
                shards.insert(dir.join(f));
            }
            shards.into_iter().collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(ModelError::Config {
                path: dir.to_path_buf(),
                reason: "no model.safetensors or model.safetensors.index.json in this folder"
                    .into(),
            });
        };
        let mut files = Vec::new();
        for p in paths {
            let f = std::fs::File::open(&p).map_err(|source| ModelError::Read {
                path: p.clone(),
                source,
            })?;
            let len = f
                .metadata()
                .map_err(|source| ModelError::Read {
                    path: p.clone(),
                    source,
                })?
                .len();
            if len < 8 {
                return Err(ModelError::NotSafetensors {
                    path: p,
                    reason: format!("the file is {len} bytes, shorter than a header"),
                });
            }
            // SAFETY: the map is read-only; a file changed underneath while
            // mapped could change the values read, never memory safety of
            // this process beyond that (the usual memmap caveat, accepted by
            // every safetensors loader).
            let map = unsafe { Mmap::map(&f) }.map_err(|source| ModelError::Read {
                path: p.clone(),
                source,
            })?;
            files.push((p, map));
        }
        Ok(TensorFiles { files })
    }

    /// Parses every file's header.
    pub fn parse(&self) -> Result<TensorSet<'_>, ModelError> {
        let mut parsed = Vec::new();
        let mut index = HashMap::new();
        for (fi, (p, map)) in self.files.iter().enumerate() {
            let st = SafeTensors::deserialize(map).map_err(|e| ModelError::NotSafetensors {
                path: p.clone(),
                reason: e.to_string(),
            })?;
            for name in st.names() {
                index.insert(canonical(name), (fi, name.to_string()));
            }
            parsed.push((p.as_path(), st));
        }
        Ok(TensorSet {
            files: parsed,
            index,
        })
    }
}

/// The name without a `bert.` prefix, and old `gamma` / `beta` layer-norm
/// names as `weight` / `bias`.
fn canonical(name: &str) -> String {
    let n = name.strip_prefix("bert.").unwrap_or(name);
    if let Some(base) = n.strip_suffix(".gamma") {
        format!("{base}.weight")
    } else if let Some(base) = n.strip_suffix(".beta") {
        format!("{base}.bias")
    } else {
        n.to_string()
    }
}

/// Parsed headers of every file, tensors found by canonical name.
pub(crate) struct TensorSet<'a> {
    files: Vec<(&'a Path, SafeTensors<'a>)>,
    index: HashMap<String, (usize, String)>,
}

impl TensorSet<'_> {
    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// One tensor as f32 with `shape` checked, flattened to a matrix of
    /// `shape[0]` rows (1 row for a 1-D tensor). NaN / infinite values are
    /// an error naming file, tensor and position.
    pub fn get(&self, name: &str, shape: &[usize], cfg_note: &str) -> Result<Matrix, ModelError> {
        let (fi, stored) = self.index.get(name).ok_or_else(|| ModelError::Layout {
            path: self.dir(),
            missing: vec![name.to_string()],
            unexpected: Vec::new(),
        })?;
        let (path, st) = &self.files[*fi];
        let terr = |reason: String| ModelError::Tensor {
            path: path.to_path_buf(),
            name: stored.clone(),
            reason,
        };
        let view = st.tensor(stored).map_err(|e| terr(e.to_string()))?;
        if view.shape() != shape {
            return Err(terr(format!(
                "shape {:?}, but config.json ({cfg_note}) needs {shape:?}",
                view.shape()
            )));
        }
        let d = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(d),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(d)
                .into_iter()
                .map(f16::to_f32)
                .collect(),
            Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(d)
                .into_iter()
                .map(bf16::to_f32)
                .collect(),
            Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(d)
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            other => return Err(terr(format!("dtype {other:?}, expected F32, F16 or BF16"))),
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(terr(format!(
                "value {} at flat index {i} is not finite",
                values[i]
            )));
        }
        let rows = if shape.len() == 1 { 1 } else { shape[0] };
        let cols = values.len() / rows.max(1);
        Matrix::from_vec(rows, cols, values).map_err(|e| terr(e.to_string()))
    }

    fn dir(&self) -> PathBuf {
        self.files
            .first()
            .and_then(|(p, _)| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Tensor names a loader may ignore: heads, text towers, buffers.
    fn ignorable(name: &str) -> bool {
        name.ends_with("position_ids")
            || name.starts_with("pooler.")
            || name.starts_with("cls.")
            || name.starts_with("text_model.")
            || name.starts_with("text_projection")
            || name == "logit_scale"
    }

    /// Every tensor the config asks for, or one error listing all missing
    /// (and the unexpected ones, a hint at which layout the file has).
    pub fn load_all(&self, cfg: &ModelConfig) -> Result<BTreeMap<String, Matrix>, ModelError> {
        let expected = expected_tensors(cfg);
        let missing: Vec<String> = expected
            .iter()
            .filter(|(n, _)| !self.has(n))
            .map(|(n, _)| n.clone())
            .collect();
        if !missing.is_empty() {
            let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
            let mut unexpected: Vec<String> = self
                .index
                .iter()
                .filter(|(c, _)| !known.contains(c.as_str()) && !Self::ignorable(c))
                .map(|(_, (_, stored))| stored.clone())
                .collect();
            unexpected.sort();
            return Err(ModelError::Layout {
                path: self.dir(),
                missing,
                unexpected,
            });
        }
        let note = match cfg.family {
            Family::Bert => format!(
                "hidden_size {}, intermediate_size {}, vocab_size {}, max_position_embeddings {}",
                cfg.hidden, cfg.intermediate, cfg.vocab, cfg.max_positions
            ),
            Family::ClipVision => format!(
                "hidden_size {}, intermediate_size {}, image_size {}, patch_size {}",
                cfg.hidden, cfg.intermediate, cfg.image_size, cfg.patch_size
            ),
        };
        let mut out = BTreeMap::new();
        for (name, shape) in expected {
            let m = self.get(&name, &shape, &note)?;
            out.insert(name, m);
        }
        Ok(out)
    }
}

/// The message tail of a layout error: what is supported.
pub(crate) fn supported_note() -> &'static str {
    SUPPORTED
}
