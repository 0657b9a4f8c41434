//! Reading weights from safetensors files and writing packed matrices back,
//! atomically (through [`crate::atomic`]: temp file beside the target, then
//! rename). Inputs must be regular files and are memory-mapped
//! ([`crate::input`]).
//!
//! A packed matrix `<name>` is stored as its parts — `<name>.codes`,
//! `<name>.scales`, `<name>.zeros`, `<name>.codebook`,
//! `<name>.outliers.row_ptr` / `.col_idx` / `.values`, `<name>.act_scale` —
//! each in the exact bytes of `docs/FORMATS.md`, plus optionally the effective
//! f32 weights as `<name>.dequantized`. The header metadata key
//! `quantscope.<name>` holds the format, group and shape as JSON (and
//! `"int8_activations": true` for a W8A8 matrix), so
//! [`read_quantized`] can rebuild every matrix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::format::{
    FormatError, FormatKind, GroupSize, Lut4, Matrix, Outliers, Packed, QuantizedMatrix, Q4, Q8,
};

/// Errors reading or writing weight files; every one names the file.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The file could not be read (missing, not a regular file, ...).
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    /// The output could not be written (refused path, OS error); nothing
    /// was left behind.
    #[error(transparent)]
    Atomic(#[from] crate::atomic::AtomicError),
    /// The file is not a valid safetensors file (bad header, truncated, ...).
    #[error("'{path}' is not a valid safetensors file: {reason}")]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A tensor that cannot be used, with why.
    #[error("'{path}': tensor '{name}': {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What is wrong (dtype, shape, values).
        reason: String,
    },
    /// The file holds no tensor that can be used.
    #[error("'{path}' has no 2-D float tensor to quantize{detail}")]
    Nothing {
        /// The file.
        path: PathBuf,
        /// What was skipped.
        detail: String,
    },
    /// Writing failed (nothing was left behind).
    #[error("cannot write '{path}': {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A stored packed matrix breaks its layout.
    #[error("'{path}': tensor '{name}': {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The layout error.
        source: FormatError,
    },
}

/// A tensor's name and values.
pub type NamedMatrix = (String, Matrix);

/// A tensor left out by [`read_matrices`] with `skip_incompatible`.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Tensor name.
    pub name: String,
    /// Why (dtype or shape).
    pub reason: String,
}

/// A tensor carried from input to output byte for byte (1-D tensors such as
/// biases and norms, integer and bool tensors, and with `skip_incompatible`
/// float tensors of 3 or more dimensions), so a quantized checkpoint is
/// complete.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Tensor name.
    pub name: String,
    /// Its dtype, unchanged.
    pub dtype: Dtype,
    /// Its shape, unchanged.
    pub shape: Vec<usize>,
    /// Its bytes, unchanged.
    pub bytes: Vec<u8>,
    /// Why it is not quantized.
    pub reason: String,
}

/// Everything [`read_checkpoint`] found in a file.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// The 2-D float tensors, in name order, as f32.
    pub matrices: Vec<NamedMatrix>,
    /// The tensors carried over unchanged, in name order.
    pub passthrough: Vec<RawTensor>,
}

fn read_file(path: &Path) -> Result<crate::input::InputBytes, IoError> {
    Ok(crate::input::map_regular(path)?)
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, IoError> {
    SafeTensors::deserialize(bytes).map_err(|e| IoError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Converts a float tensor view to f32 values.
fn to_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let d = view.data();
    Some(match view.dtype() {
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
        _ => return None,
    })
}

/// Reads every 2-D float tensor (f32, f16, bf16, f64) of a safetensors file,
/// in name order. Any other tensor is an error, or with `skip_incompatible`
/// is left out and listed. Non-finite weights are always an error naming the
/// tensor and position.
pub fn read_matrices(
    path: &Path,
    skip_incompatible: bool,
) -> Result<(Vec<NamedMatrix>, Vec<Skipped>), IoError> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    let mut names = st.names();
    names.sort();
    let mut skipped = Vec::new();
    for name in names {
        let view = st.tensor(name).map_err(|e| IoError::Tensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        if let Some(reason) = not_a_matrix(&view) {
            if !skip_incompatible {
                return Err(IoError::Tensor {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    reason: format!(
                        "{reason} (only 2-D float tensors can be quantized; --skip-incompatible leaves such tensors out)"
                    ),
                });
            }
            skipped.push(Skipped {
                name: name.to_string(),
                reason,
            });
        }
    }
    let c = read_checkpoint(path, true)?;
    Ok((c.matrices, skipped))
}

/// Why a tensor is not a quantizable matrix, or `None` when it is one.
fn not_a_matrix(view: &TensorView<'_>) -> Option<String> {
    if view.shape().len() != 2 {
        Some(format!("shape {:?} is not 2-D", view.shape()))
    } else if !is_float(view.dtype()) {
        Some(format!("dtype {:?} is not a float type", view.dtype()))
    } else if view.shape().contains(&0) {
        Some(format!("shape {:?} is empty", view.shape()))
    } else {
        None
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Elements of the 2-D float tensors of a checkpoint, from its header alone
/// (nothing is converted): what reading it with [`read_checkpoint`] costs,
/// 4 bytes each, before anything is allocated.
pub fn checkpoint_matrix_elements(path: &Path) -> Result<u128, IoError> {
    let bytes = read_file(path)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| IoError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(header
        .tensors()
        .values()
        .filter(|t| t.shape.len() == 2 && is_float(t.dtype))
        .map(|t| t.shape.iter().map(|&d| d as u128).product::<u128>())
        .sum())
}

/// Reads a safetensors checkpoint for quantization: every 2-D float tensor
/// as an f32 matrix, and every other tensor carried over unchanged (1-D,
/// scalars, empty, integer and bool tensors). A float tensor of 3 or more
/// dimensions is an error unless `skip_incompatible`, which carries it over
/// unchanged too. Non-finite weights in a matrix are an error naming the
/// tensor and position.
pub fn read_checkpoint(path: &Path, skip_incompatible: bool) -> Result<Checkpoint, IoError> {
    let bytes = read_file(path)?;
    read_checkpoint_bytes(&bytes, path, skip_incompatible)
}

/// [`read_checkpoint`] on the bytes of a file; `path` names it in errors.
pub fn read_checkpoint_bytes(
    bytes: &[u8],
    path: &Path,
    skip_incompatible: bool,
) -> Result<Checkpoint, IoError> {
    let st = parse(path, bytes)?;
    let mut names = st.names();
    names.sort();
    let mut out = Checkpoint::default();
    for name in names {
        let view = st.tensor(name).map_err(|e| IoError::Tensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let bad = |reason: String| IoError::Tensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason,
        };
        if let Some(reason) = not_a_matrix(&view) {
            if view.shape().len() > 2 && is_float(view.dtype()) && !skip_incompatible {
                return Err(bad(format!(
                    "{reason} (only 2-D float tensors can be quantized; --skip-incompatible carries such tensors over unchanged)"
                )));
            }
            out.passthrough.push(RawTensor {
                name: name.to_string(),
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
                reason,
            });
            continue;
        }
        let (rows, cols) = (view.shape()[0], view.shape()[1]);
        let data = to_f32(&view).ok_or_else(|| bad("unreadable float data".into()))?;
        let m = Matrix::from_vec(rows, cols, data).map_err(|e| bad(e.to_string()))?;
        if let Some((r, c, v)) = m.first_non_finite() {
            return Err(bad(format!(
                "weight at row {r}, column {c} is {v}{}: weights must be finite",
                if view.dtype() == Dtype::F64 {
                    " (as f32)"
                } else {
                    ""
                }
            )));
        }
        out.matrices.push((name.to_string(), m));
    }
    if out.matrices.is_empty() {
        let detail = if out.passthrough.is_empty() {
            String::new()
        } else {
            let s: Vec<_> = out
                .passthrough
                .iter()
                .map(|s| format!("{} ({})", s.name, s.reason))
                .collect();
            format!("; it holds: {}", s.join(", "))
        };
        return Err(IoError::Nothing {
            path: path.to_path_buf(),
            detail,
        });
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically ([`crate::atomic::write_atomic`]).
/// On error nothing is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    Ok(crate::atomic::write_atomic(path, |w| w.write_all(bytes))?)
}

/// Header metadata describing one stored packed matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMeta {
    format: FormatKind,
    group: GroupSize,
    rows: usize,
    cols: usize,
    outliers: bool,
    act_scale: bool,
    /// W8A8 (absent in files written before it existed: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    int8_activations: bool,
}

/// One tensor to serialize: dtype, shape, bytes.
struct Part {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn part<T: bytemuck::Pod>(dtype: Dtype, shape: Vec<usize>, v: &[T]) -> Part {
    Part {
        dtype,
        shape,
        bytes: bytemuck::cast_slice(v).to_vec(),
    }
}

/// Writes packed matrices (and, with `dequantized`, their effective f32
/// weights) to a safetensors file, atomically.
pub fn write_quantized(
    path: &Path,
    items: &[(String, QuantizedMatrix)],
    dequantized: bool,
) -> Result<(), IoError> {
    write_checkpoint(path, items, &[], dequantized)
}

/// [`write_quantized`] plus tensors carried over unchanged (see
/// [`read_checkpoint`]), so the output is a complete checkpoint. A carried
/// tensor whose name collides with a part of a packed matrix is an error.
pub fn write_checkpoint(
    path: &Path,
    items: &[(String, QuantizedMatrix)],
    passthrough: &[RawTensor],
    dequantized: bool,
) -> Result<(), IoError> {
    let mut parts: BTreeMap<String, Part> = BTreeMap::new();
    let mut meta = HashMap::new();
    meta.insert(
        "quantscope.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    for (name, q) in items {
        let (rows, gpr) = (q.rows(), q.groups_per_row());
        let stride = q.row_stride_bytes();
        let codes = format!("{name}.codes");
        match q.packed() {
            Packed::F32(v) => {
                parts.insert(codes, part(Dtype::F32, vec![rows, stride / 4], v));
            }
            Packed::F16(v) => {
                parts.insert(codes, part(Dtype::F16, vec![rows, stride / 2], v));
            }
            Packed::Bf16(v) => {
                parts.insert(codes, part(Dtype::BF16, vec![rows, stride / 2], v));
            }
            Packed::Q8(p) => {
                parts.insert(codes, part(Dtype::I8, vec![rows, stride], &p.codes));
                let s = part(Dtype::F16, vec![rows, gpr], &p.scales);
                parts.insert(format!("{name}.scales"), s);
            }
            Packed::Q4(p) => {
                parts.insert(codes, part(Dtype::U32, vec![rows, stride / 4], &p.codes));
                let s = part(Dtype::F16, vec![rows, gpr], &p.scales);
                parts.insert(format!("{name}.scales"), s);
                let z = part(Dtype::U8, vec![rows, gpr], &p.zeros);
                parts.insert(format!("{name}.zeros"), z);
            }
            Packed::Lut4(p) => {
                parts.insert(codes, part(Dtype::U32, vec![rows, stride / 4], &p.codes));
                let s = part(Dtype::F16, vec![rows, gpr], &p.scales);
                parts.insert(format!("{name}.scales"), s);
                let cb = part(Dtype::F32, vec![16], &p.codebook);
                parts.insert(format!("{name}.codebook"), cb);
            }
        }
        if let Some(o) = q.outliers() {
            let rp = part(Dtype::U32, vec![o.row_ptr.len()], &o.row_ptr);
            parts.insert(format!("{name}.outliers.row_ptr"), rp);
            let ci = part(Dtype::U32, vec![o.col_idx.len()], &o.col_idx);
            parts.insert(format!("{name}.outliers.col_idx"), ci);
            let vals = part(Dtype::F16, vec![o.values.len()], &o.values);
            parts.insert(format!("{name}.outliers.values"), vals);
        }
        if let Some(a) = q.act_scale() {
            parts.insert(
                format!("{name}.act_scale"),
                part(Dtype::F32, vec![a.len()], a),
            );
        }
        if dequantized {
            let d = q.dequantize();
            let p = part(Dtype::F32, vec![q.rows(), q.cols()], d.data());
            parts.insert(format!("{name}.dequantized"), p);
        }
        let m = StoredMeta {
            format: q.kind(),
            group: q.group(),
            rows: q.rows(),
            cols: q.cols(),
            outliers: q.outliers().is_some(),
            act_scale: q.act_scale().is_some(),
            int8_activations: q.int8_activations(),
        };
        let json = serde_json::to_string(&m).map_err(|e| IoError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        meta.insert(format!("quantscope.{name}"), json);
    }
    add_passthrough(path, &mut parts, passthrough)?;
    write_parts(path, &parts, Some(meta))
}

fn add_passthrough(
    path: &Path,
    parts: &mut BTreeMap<String, Part>,
    passthrough: &[RawTensor],
) -> Result<(), IoError> {
    for t in passthrough {
        if parts.contains_key(&t.name) {
            return Err(IoError::Write {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor '{}' (carried over unchanged) has the name of a part of a quantized tensor",
                    t.name
                ),
            });
        }
        parts.insert(
            t.name.clone(),
            Part {
                dtype: t.dtype,
                shape: t.shape.clone(),
                bytes: t.bytes.clone(),
            },
        );
    }
    Ok(())
}

fn write_parts(
    path: &Path,
    parts: &BTreeMap<String, Part>,
    meta: Option<HashMap<String, String>>,
) -> Result<(), IoError> {
    let werr = |reason: String| IoError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let mut views = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let v = TensorView::new(p.dtype, p.shape.clone(), &p.bytes)
            .map_err(|e| werr(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), v));
    }
    let bytes = safetensors::serialize(views, meta).map_err(|e| werr(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes plain f32 matrices to a safetensors file, atomically.
pub fn write_matrices(path: &Path, items: &[(String, Matrix)]) -> Result<(), IoError> {
    let parts = items
        .iter()
        .map(|(n, m)| {
            (
                n.clone(),
                part(Dtype::F32, vec![m.rows(), m.cols()], m.data()),
            )
        })
        .collect();
    write_parts(path, &parts, None)
}

/// Reads back every packed matrix written by [`write_quantized`].
pub fn read_quantized(path: &Path) -> Result<Vec<(String, QuantizedMatrix)>, IoError> {
    let bytes = read_file(path)?;
    read_quantized_bytes(&bytes, path)
}

/// [`read_quantized`] on the bytes of a file; `path` names it in errors.
pub fn read_quantized_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<(String, QuantizedMatrix)>, IoError> {
    let st = parse(path, bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| IoError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut names: Vec<&String> = meta
        .keys()
        .filter(|k| k.starts_with("quantscope.") && *k != "quantscope.version")
        .collect();
    names.sort();
    let mut out = Vec::new();
    for key in names {
        let name = &key["quantscope.".len()..];
        let terr = |reason: String| IoError::Tensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason,
        };
        let m: StoredMeta =
            serde_json::from_str(&meta[key]).map_err(|e| terr(format!("bad metadata: {e}")))?;
        let get = |suffix: &str| -> Result<Vec<u8>, IoError> {
            st.tensor(&format!("{name}.{suffix}"))
                .map(|t| t.data().to_vec())
                .map_err(|e| terr(format!("missing part '{suffix}': {e}")))
        };
        let codes = get("codes")?;
        let packed = match m.format {
            FormatKind::F32 => Packed::F32(bytemuck::pod_collect_to_vec(&codes)),
            FormatKind::F16 => Packed::F16(bytemuck::pod_collect_to_vec(&codes)),
            FormatKind::Bf16 => Packed::Bf16(bytemuck::pod_collect_to_vec(&codes)),
            FormatKind::Q8 => Packed::Q8(Q8 {
                codes: bytemuck::pod_collect_to_vec(&codes),
                scales: bytemuck::pod_collect_to_vec(&get("scales")?),
            }),
            FormatKind::Q4 => Packed::Q4(Q4 {
                codes: bytemuck::pod_collect_to_vec(&codes),
                scales: bytemuck::pod_collect_to_vec(&get("scales")?),
                zeros: get("zeros")?,
            }),
            FormatKind::Lut4 => {
                let cb: Vec<f32> = bytemuck::pod_collect_to_vec(&get("codebook")?);
                let codebook: [f32; 16] = cb
                    .try_into()
                    .map_err(|_| terr("codebook must have 16 entries".into()))?;
                Packed::Lut4(Lut4 {
                    codes: bytemuck::pod_collect_to_vec(&codes),
                    scales: bytemuck::pod_collect_to_vec(&get("scales")?),
                    codebook,
                })
            }
        };
        let ferr = |source| IoError::Format {
            path: path.to_path_buf(),
            name: name.to_string(),
            source,
        };
        let mut q = QuantizedMatrix::new(m.rows, m.cols, m.group, packed).map_err(ferr)?;
        if m.outliers {
            let o = Outliers {
                row_ptr: bytemuck::pod_collect_to_vec(&get("outliers.row_ptr")?),
                col_idx: bytemuck::pod_collect_to_vec(&get("outliers.col_idx")?),
                values: bytemuck::pod_collect_to_vec(&get("outliers.values")?),
            };
            q = q.with_outliers(o).map_err(ferr)?;
        }
        if m.act_scale {
            q = q
                .with_act_scale(bytemuck::pod_collect_to_vec(&get("act_scale")?))
                .map_err(ferr)?;
        }
        if m.int8_activations {
            q = q.with_int8_activations().map_err(ferr)?;
        }
        out.push((name.to_string(), q));
    }
    Ok(out)
}

/// Writes unpacked uniform quantizations (one u8 code per weight, f32 scales,
/// u8 zero points, optionally the dequantized weights), atomically.
pub fn write_uniform(
    path: &Path,
    items: &[(String, crate::quant::rtn::UniformQuantized)],
    passthrough: &[RawTensor],
    dequantized: bool,
) -> Result<(), IoError> {
    let mut parts = BTreeMap::new();
    for (name, q) in items {
        parts.insert(
            format!("{name}.codes"),
            part(Dtype::U8, vec![q.rows, q.cols], &q.codes),
        );
        parts.insert(
            format!("{name}.scales"),
            part(Dtype::F32, vec![q.scales.len()], &q.scales),
        );
        parts.insert(
            format!("{name}.zeros"),
            part(Dtype::U8, vec![q.zeros.len()], &q.zeros),
        );
        if dequantized {
            let d = q.dequantize();
            parts.insert(
                format!("{name}.dequantized"),
                part(Dtype::F32, vec![q.rows, q.cols], d.data()),
            );
        }
    }
    add_passthrough(path, &mut parts, passthrough)?;
    write_parts(path, &parts, None)
}
