//! The forward pass, written once over [`Backend`] ops.
//!
//! Host side: the BERT embedding gather (word + position + token type) or
//! the CLIP patch rows, and the pooling — both tiny. Everything between is
//! one op list submitted with one [`Backend::run`]:
//!
//! ```text
//! BERT  (post-LN)  X = LN(emb)
//!   per block:     q,k,v = X·W + b; c = attn(q,k,v,mask); r1 = c·Wo + bo + X; X1 = LN1(r1)
//!                  g = gelu(X1·W1 + b1); X = LN2(g·W2 + b2 + X1)
//! CLIP  (pre-LN)   X = LN_pre(patches·Wp + (class | pos))
//!   per block:     t = LN1(X); q,k,v = t·W + b; r1 = attn(..)·Wo + bo + X; t2 = LN2(r1)
//!                  X = quick_gelu(t2·W1 + b1)·W2 + b2 + r1
//!   head:          pooled = LN_post(X[class rows]) · Wproj
//! ```
//!
//! Activation tensors are allocated once per `(batch, seq)` shape and kept
//! until the shape changes; X ping-pongs between two tensors from block to
//! block, since an op never writes its own input.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::config::{self, BlockNames, ModelConfig};
use super::quantized::QuantizedModel;
use super::{Batch, BatchData, Family, ModelError, Pooling};
use crate::backend::{
    Backend, BackendError, BackendKind, MatrixHandle, Op, TensorHandle, TensorInit, TimingSource,
};
use crate::format::{pack_plain, FormatKind, Matrix, QuantizedMatrix};

/// What a forward pass returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOutput {
    /// `n x output_dim` pooled outputs, row-major.
    pub pooled: Vec<f32>,
    /// `n x seq x hidden` last hidden state (pads included; for CLIP before
    /// `post_layernorm`, as Hugging Face's `last_hidden_state`).
    pub last_hidden: Vec<f32>,
    /// Inputs.
    pub n: usize,
    /// Tokens per input.
    pub seq: usize,
    /// Width of `pooled`.
    pub dim: usize,
    /// Width of `last_hidden`.
    pub hidden: usize,
}

/// Device time of one forward pass by kind of op.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForwardTiming {
    /// Start of the first op to the end of the last (host gather, upload and
    /// read-back excluded).
    pub total_s: f64,
    /// Linear layers.
    pub linear_s: f64,
    /// Attention (and softmax).
    pub attention_s: f64,
    /// Layer norms, activations, adds, row selection.
    pub other_s: f64,
    /// Where the times came from.
    pub source: TimingSource,
}

struct DLinear {
    w: MatrixHandle,
    b: Option<TensorHandle>,
}

struct DNorm {
    g: TensorHandle,
    b: TensorHandle,
}

/// One block's uploaded weights.
struct DBlock {
    q: DLinear,
    k: DLinear,
    v: DLinear,
    o: DLinear,
    fc1: DLinear,
    fc2: DLinear,
    ln1: DNorm,
    ln2: DNorm,
}

enum DEmbed {
    Bert {
        word: Matrix,
        pos: Matrix,
        ttype: Matrix,
        ln: DNorm,
    },
    Clip {
        patch: DLinear,
        class_pos: TensorHandle,
        pre_ln: DNorm,
        post_ln: DNorm,
        proj: Option<DLinear>,
    },
}

/// Activation tensors for one `(n, seq)` shape.
struct Scratch {
    n: usize,
    seq: usize,
    /// Embeddings (BERT) or patch rows (CLIP), written from the host.
    input: TensorHandle,
    mask: Option<TensorHandle>,
    /// The residual stream, ping-ponged between blocks.
    xa: TensorHandle,
    xb: TensorHandle,
    t1: TensorHandle,
    q: TensorHandle,
    k: TensorHandle,
    v: TensorHandle,
    ctx: TensorHandle,
    ao: TensorHandle,
    r1: TensorHandle,
    t2: TensorHandle,
    h: TensorHandle,
    g: TensorHandle,
    o: TensorHandle,
    r2: TensorHandle,
    /// CLIP: patch projection, + class/position, class rows, post-LN, projection.
    clip: Option<[TensorHandle; 5]>,
}

impl Scratch {
    fn tensors(self) -> Vec<TensorHandle> {
        let mut v = vec![
            self.input, self.xa, self.xb, self.t1, self.q, self.k, self.v, self.ctx, self.ao,
            self.r1, self.t2, self.h, self.g, self.o, self.r2,
        ];
        v.extend(self.mask);
        if let Some(c) = self.clip {
            v.extend(c);
        }
        v
    }
}

/// A model uploaded to one backend.
pub struct DeviceModel<'b> {
    backend: &'b dyn Backend,
    config: ModelConfig,
    pooling: Pooling,
    normalize: bool,
    embed: Option<DEmbed>,
    blocks: Vec<DBlock>,
    scratch: Mutex<Option<Scratch>>,
}

/// The host f32 parameter `name`, or an error naming it (a
/// [`QuantizedModel`] is complete by construction; this guards a bug).
fn param<'m>(params: &'m BTreeMap<String, Matrix>, name: &str) -> Result<&'m Matrix, ModelError> {
    params
        .get(name)
        .ok_or_else(|| ModelError::Input(format!("model has no tensor '{name}'")))
}

impl<'b> DeviceModel<'b> {
    /// Uploads every weight of `q` to `backend`, then checks that the
    /// backend supports every op of the forward pass: a backend that lacks
    /// one answers [`ModelError::Unsupported`] here, before any input runs.
    pub fn upload(
        backend: &'b dyn Backend,
        q: &QuantizedModel,
    ) -> Result<DeviceModel<'b>, ModelError> {
        let spec = q.spec();
        let mut dm = DeviceModel {
            backend,
            config: spec.config.clone(),
            pooling: spec.pooling,
            normalize: spec.normalize,
            embed: None,
            blocks: Vec::new(),
            scratch: Mutex::new(None),
        };
        match dm.upload_all(q) {
            Ok(()) => {}
            Err(e) => {
                let _ = dm.free_all();
                return Err(e);
            }
        }
        if let Err(e) = dm.check_support() {
            let _ = dm.free_all();
            return Err(e);
        }
        Ok(dm)
    }

    fn upload_all(&mut self, q: &QuantizedModel) -> Result<(), ModelError> {
        let params = q.params();
        let be = self.backend;
        let vec_t = |name: &str| -> Result<TensorHandle, ModelError> {
            let m = param(params, name)?;
            Ok(be.tensor(1, m.len(), TensorInit::Data(m.data()))?)
        };
        let norm = |base: &str| -> Result<DNorm, ModelError> {
            let g = vec_t(&format!("{base}.weight"))?;
            match vec_t(&format!("{base}.bias")) {
                Ok(b) => Ok(DNorm { g, b }),
                Err(e) => {
                    let _ = be.free_tensor(g);
                    Err(e)
                }
            }
        };
        let linear_from =
            |m: &QuantizedMatrix, bias: Option<&str>| -> Result<DLinear, ModelError> {
                let w = be.upload(m)?;
                let b = match bias.map(&vec_t).transpose() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = be.free(w);
                        return Err(e);
                    }
                };
                Ok(DLinear { w, b })
            };
        let linear = |name: &str, bias: bool| -> Result<DLinear, ModelError> {
            let m = q.layer_weights(name).ok_or_else(|| {
                ModelError::Input(format!("quantized model has no linear '{name}'"))
            })?;
            let b = format!("{name}.bias");
            linear_from(m, bias.then_some(b.as_str()))
        };
        let cfg = &self.config;
        // Embeddings first: every later piece is freed through `self` on error.
        match cfg.family {
            Family::Bert => {
                let ln = norm(config::BERT_EMB_LN)?;
                self.embed = Some(DEmbed::Bert {
                    word: param(params, config::BERT_WORD)?.clone(),
                    pos: param(params, config::BERT_POS)?.clone(),
                    ttype: param(params, config::BERT_TYPE)?.clone(),
                    ln,
                });
            }
            Family::ClipVision => {
                let patch_w = pack_plain(param(params, config::CLIP_PATCH)?, FormatKind::F32)
                    .map_err(|e| ModelError::Input(e.to_string()))?;
                let patch = linear_from(&patch_w, None)?;
                // Row 0: class embedding + position 0; rows 1..: positions.
                let pos = param(params, config::CLIP_POS)?;
                let class = param(params, config::CLIP_CLASS)?;
                let mut cp = pos.data().to_vec();
                for (o, &c) in cp.iter_mut().zip(class.data()) {
                    *o += c;
                }
                let class_pos = match be.tensor(pos.rows(), pos.cols(), TensorInit::Data(&cp)) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = be.free(patch.w);
                        return Err(e.into());
                    }
                };
                // Partially built pieces are held in the enum at once.
                self.embed = Some(DEmbed::Clip {
                    patch,
                    class_pos,
                    pre_ln: norm(config::CLIP_PRE_LN)?,
                    post_ln: norm(config::CLIP_POST_LN)?,
                    proj: None,
                });
                if cfg.projection_dim.is_some() {
                    let p = linear(config::CLIP_PROJ, false)?;
                    if let Some(DEmbed::Clip { proj, .. }) = &mut self.embed {
                        *proj = Some(p);
                    }
                }
            }
        }
        for l in 0..cfg.layers {
            let n = BlockNames::new(cfg.family, l);
            let block = DBlock {
                q: linear(&n.q, true)?,
                k: linear(&n.k, true)?,
                v: linear(&n.v, true)?,
                o: linear(&n.o, true)?,
                fc1: linear(&n.fc1, true)?,
                fc2: linear(&n.fc2, true)?,
                ln1: norm(&n.ln1)?,
                ln2: norm(&n.ln2)?,
            };
            self.blocks.push(block);
        }
        Ok(())
    }

    /// Builds the op list for a small shape and asks the backend about each.
    fn check_support(&self) -> Result<(), ModelError> {
        let seq = match self.config.family {
            Family::Bert => 2,
            Family::ClipVision => self.config.image_tokens(),
        };
        let guard = self.scratch_for(1, seq)?;
        let s = guard
            .as_ref()
            .ok_or_else(|| ModelError::Input("no scratch".into()))?;
        let ops = self.all_ops(s)?;
        for op in &ops {
            if !self.backend.supports(op) {
                return Err(ModelError::Unsupported {
                    backend: self.backend.kind(),
                    op: format!("the {} op", op.name()),
                });
            }
        }
        Ok(())
    }

    /// Which backend the model lives on.
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The scratch tensors for `(n, seq)`, reallocated when the shape changes.
    fn scratch_for(
        &self,
        n: usize,
        seq: usize,
    ) -> Result<std::sync::MutexGuard<'_, Option<Scratch>>, ModelError> {
        let mut guard = self
            .scratch
            .lock()
            .map_err(|_| ModelError::Input("scratch lock poisoned by an earlier panic".into()))?;
        if guard.as_ref().is_some_and(|s| s.n == n && s.seq == seq) {
            return Ok(guard);
        }
        if let Some(old) = guard.take() {
            for t in old.tensors() {
                self.backend.free_tensor(t)?;
            }
        }
        *guard = Some(self.alloc_scratch(n, seq)?);
        Ok(guard)
    }

    fn alloc_scratch(&self, n: usize, seq: usize) -> Result<Scratch, ModelError> {
        let c = &self.config;
        let rows = n * seq;
        let (h, i) = (c.hidden, c.intermediate);
        let mut made: Vec<TensorHandle> = Vec::new();
        let mut mk = |r: usize, cols: usize| -> Result<usize, ModelError> {
            match self.backend.tensor(r, cols, TensorInit::Poison) {
                Ok(t) => {
                    made.push(t);
                    Ok(made.len() - 1)
                }
                Err(e) => Err(e.into()),
            }
        };
        let result = (|| -> Result<Vec<usize>, ModelError> {
            let in_cols = match c.family {
                Family::Bert => h,
                Family::ClipVision => c.patch_len(),
            };
            let mut ids = vec![mk(rows, in_cols)?];
            for _ in 0..9 {
                ids.push(mk(rows, h)?); // xa xb t1 q k v ctx ao r1
            }
            ids.push(mk(rows, h)?); // t2
            ids.push(mk(rows, i)?); // h
            ids.push(mk(rows, i)?); // g
            ids.push(mk(rows, h)?); // o
            ids.push(mk(rows, h)?); // r2
            match c.family {
                Family::Bert => ids.push(mk(n, seq)?), // mask
                Family::ClipVision => {
                    ids.push(mk(rows, h)?);
                    ids.push(mk(rows, h)?);
                    ids.push(mk(n, h)?);
                    ids.push(mk(n, h)?);
                    ids.push(mk(n, c.output_dim())?);
                }
            }
            Ok(ids)
        })();
        if let Err(e) = result {
            for t in made {
                let _ = self.backend.free_tensor(t);
            }
            return Err(e);
        }
        let mut it = made.into_iter();
        let mut next = || it.next().ok_or_else(|| ModelError::Input("scratch".into()));
        let input = next()?;
        let (xa, xb, t1, q, k, v, ctx, ao, r1) = (
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
        );
        let (t2, hh, g, o, r2) = (next()?, next()?, next()?, next()?, next()?);
        let (mask, clip) = match c.family {
            Family::Bert => (Some(next()?), None),
            Family::ClipVision => (None, Some([next()?, next()?, next()?, next()?, next()?])),
        };
        Ok(Scratch {
            n,
            seq,
            input,
            mask,
            xa,
            xb,
            t1,
            q,
            k,
            v,
            ctx,
            ao,
            r1,
            t2,
            h: hh,
            g,
            o,
            r2,
            clip,
        })
    }

    fn embed(&self) -> Result<&DEmbed, ModelError> {
        self.embed
            .as_ref()
            .ok_or_else(|| ModelError::Input("model was not uploaded".into()))
    }

    /// The embedding stage's ops: writes `xa`.
    fn embed_ops<'a>(&'a self, s: &'a Scratch) -> Result<Vec<Op<'a>>, ModelError> {
        let eps = self.config.eps;
        Ok(match self.embed()? {
            DEmbed::Bert { ln, .. } => vec![Op::LayerNorm {
                x: &s.input,
                gamma: &ln.g,
                beta: &ln.b,
                eps,
                y: &s.xa,
            }],
            DEmbed::Clip {
                patch,
                class_pos,
                pre_ln,
                ..
            } => {
                let c = s
                    .clip
                    .as_ref()
                    .ok_or_else(|| ModelError::Input("scratch".into()))?;
                vec![
                    Op::Linear {
                        x: &s.input,
                        w: &patch.w,
                        bias: None,
                        y: &c[0],
                    },
                    Op::Add {
                        a: &c[0],
                        b: class_pos,
                        y: &c[1],
                    },
                    Op::LayerNorm {
                        x: &c[1],
                        gamma: &pre_ln.g,
                        beta: &pre_ln.b,
                        eps,
                        y: &s.xa,
                    },
                ]
            }
        })
    }

    /// Block `l`'s input and output tensors.
    fn block_io(s: &Scratch, l: usize) -> (&TensorHandle, &TensorHandle) {
        if l.is_multiple_of(2) {
            (&s.xa, &s.xb)
        } else {
            (&s.xb, &s.xa)
        }
    }

    /// Block `l`'s ops.
    fn block_ops<'a>(&'a self, s: &'a Scratch, l: usize) -> Vec<Op<'a>> {
        let c = &self.config;
        let b = &self.blocks[l];
        let (x, y) = Self::block_io(s, l);
        let eps = c.eps;
        let lin = |d: &'a DLinear, x: &'a TensorHandle, y: &'a TensorHandle| Op::Linear {
            x,
            w: &d.w,
            bias: d.b.as_ref(),
            y,
        };
        let ln = |n: &'a DNorm, x: &'a TensorHandle, y: &'a TensorHandle| Op::LayerNorm {
            x,
            gamma: &n.g,
            beta: &n.b,
            eps,
            y,
        };
        let attn = Op::Attention {
            q: &s.q,
            k: &s.k,
            v: &s.v,
            mask: s.mask.as_ref(),
            seqs: s.n,
            heads: c.heads,
            y: &s.ctx,
        };
        let act = |x: &'a TensorHandle, y: &'a TensorHandle| Op::Activation {
            kind: c.activation,
            x,
            y,
        };
        match c.family {
            Family::Bert => vec![
                lin(&b.q, x, &s.q),
                lin(&b.k, x, &s.k),
                lin(&b.v, x, &s.v),
                attn,
                lin(&b.o, &s.ctx, &s.ao),
                Op::Add {
                    a: &s.ao,
                    b: x,
                    y: &s.r1,
                },
                ln(&b.ln1, &s.r1, &s.t2),
                lin(&b.fc1, &s.t2, &s.h),
                act(&s.h, &s.g),
                lin(&b.fc2, &s.g, &s.o),
                Op::Add {
                    a: &s.o,
                    b: &s.t2,
                    y: &s.r2,
                },
                ln(&b.ln2, &s.r2, y),
            ],
            Family::ClipVision => vec![
                ln(&b.ln1, x, &s.t1),
                lin(&b.q, &s.t1, &s.q),
                lin(&b.k, &s.t1, &s.k),
                lin(&b.v, &s.t1, &s.v),
                attn,
                lin(&b.o, &s.ctx, &s.ao),
                Op::Add {
                    a: &s.ao,
                    b: x,
                    y: &s.r1,
                },
                ln(&b.ln2, &s.r1, &s.t2),
                lin(&b.fc1, &s.t2, &s.h),
                act(&s.h, &s.g),
                lin(&b.fc2, &s.g, &s.o),
                Op::Add {
                    a: &s.o,
                    b: &s.r1,
                    y,
                },
            ],
        }
    }

    /// The last block's output.
    fn final_x<'a>(&self, s: &'a Scratch) -> &'a TensorHandle {
        if self.blocks.len().is_multiple_of(2) {
            &s.xa
        } else {
            &s.xb
        }
    }

    /// CLIP's head ops (none for BERT: pooling runs on the host).
    fn head_ops<'a>(&'a self, s: &'a Scratch) -> Result<Vec<Op<'a>>, ModelError> {
        let x = self.final_x(s);
        Ok(match self.embed()? {
            DEmbed::Bert { .. } => Vec::new(),
            DEmbed::Clip { post_ln, proj, .. } => {
                let c = s
                    .clip
                    .as_ref()
                    .ok_or_else(|| ModelError::Input("scratch".into()))?;
                let mut ops = vec![
                    Op::TakeRows {
                        x,
                        offset: 0,
                        step: s.seq,
                        y: &c[2],
                    },
                    Op::LayerNorm {
                        x: &c[2],
                        gamma: &post_ln.g,
                        beta: &post_ln.b,
                        eps: self.config.eps,
                        y: &c[3],
                    },
                ];
                if let Some(p) = proj {
                    ops.push(Op::Linear {
                        x: &c[3],
                        w: &p.w,
                        bias: None,
                        y: &c[4],
                    });
                }
                ops
            }
        })
    }

    fn all_ops<'a>(&'a self, s: &'a Scratch) -> Result<Vec<Op<'a>>, ModelError> {
        let mut ops = self.embed_ops(s)?;
        for l in 0..self.blocks.len() {
            ops.extend(self.block_ops(s, l));
        }
        ops.extend(self.head_ops(s)?);
        Ok(ops)
    }

    /// Writes the batch's host-side values (embeddings or patch rows, mask).
    fn write_inputs(&self, s: &Scratch, batch: &Batch) -> Result<(), ModelError> {
        let c = &self.config;
        let rows = batch.n * batch.seq;
        match (&batch.data, self.embed()?) {
            (
                BatchData::Tokens { ids, mask },
                DEmbed::Bert {
                    word, pos, ttype, ..
                },
            ) => {
                if ids.len() != rows || mask.len() != rows {
                    return Err(ModelError::Input(format!(
                        "batch of {} x {} has {} ids and {} mask values",
                        batch.n,
                        batch.seq,
                        ids.len(),
                        mask.len()
                    )));
                }
                if batch.seq > c.max_positions {
                    return Err(ModelError::Input(format!(
                        "sequence of {} tokens is longer than the model's {} positions",
                        batch.seq, c.max_positions
                    )));
                }
                let h = c.hidden;
                let mut e = vec![0.0f32; rows * h];
                for (r, (row, &id)) in e.chunks_mut(h).zip(ids).enumerate() {
                    if id as usize >= c.vocab {
                        return Err(ModelError::Input(format!(
                            "token id {id} is outside the vocabulary of {}",
                            c.vocab
                        )));
                    }
                    let (w, p, t) = (word.row(id as usize), pos.row(r % batch.seq), ttype.row(0));
                    for j in 0..h {
                        row[j] = w[j] + p[j] + t[j];
                    }
                }
                self.backend.write_tensor(&s.input, &e)?;
                if let Some(m) = &s.mask {
                    self.backend.write_tensor(m, mask)?;
                }
            }
            (BatchData::Patches { rows: p }, DEmbed::Clip { .. }) => {
                if batch.seq != c.image_tokens() || p.len() != rows * c.patch_len() {
                    return Err(ModelError::Input(format!(
                        "image batch of {} x {} tokens with {} values does not fit {} tokens of {}",
                        batch.n,
                        batch.seq,
                        p.len(),
                        c.image_tokens(),
                        c.patch_len()
                    )));
                }
                self.backend.write_tensor(&s.input, p)?;
            }
            _ => {
                return Err(ModelError::Input(
                    "batch kind (tokens / patches) does not match the model".into(),
                ))
            }
        }
        Ok(())
    }

    /// Reads the outputs and pools on the host.
    fn outputs(&self, s: &Scratch, batch: &Batch) -> Result<ForwardOutput, ModelError> {
        let c = &self.config;
        let h = c.hidden;
        let last_hidden = self.backend.read(self.final_x(s))?;
        let (dim, mut pooled) = match (&batch.data, self.pooling) {
            (BatchData::Tokens { mask, .. }, Pooling::Mean) => {
                let mut out = vec![0.0f32; batch.n * h];
                for b in 0..batch.n {
                    let mut acc = vec![0.0f64; h];
                    let mut cnt = 0.0f64;
                    for t in 0..batch.seq {
                        let m = mask[b * batch.seq + t] as f64;
                        if m > 0.5 {
                            cnt += 1.0;
                            let row = &last_hidden[(b * batch.seq + t) * h..][..h];
                            for (a, &v) in acc.iter_mut().zip(row) {
                                *a += v as f64;
                            }
                        }
                    }
                    let inv = 1.0 / cnt.max(1e-9);
                    for (o, a) in out[b * h..][..h].iter_mut().zip(&acc) {
                        *o = (a * inv) as f32;
                    }
                }
                (h, out)
            }
            (_, Pooling::Cls) => {
                let mut out = Vec::with_capacity(batch.n * h);
                for b in 0..batch.n {
                    out.extend_from_slice(&last_hidden[b * batch.seq * h..][..h]);
                }
                (h, out)
            }
            (_, _) => {
                let c5 = s
                    .clip
                    .as_ref()
                    .ok_or_else(|| ModelError::Input("scratch".into()))?;
                let t = if c.projection_dim.is_some() {
                    &c5[4]
                } else {
                    &c5[3]
                };
                (t.cols(), self.backend.read(t)?)
            }
        };
        if self.normalize {
            for row in pooled.chunks_mut(dim.max(1)) {
                let n = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                // sentence-transformers' Normalize: x / max(‖x‖, 1e-12).
                let inv = (1.0 / n.max(1e-12)) as f32;
                for v in row.iter_mut() {
                    *v *= inv;
                }
            }
        }
        Ok(ForwardOutput {
            pooled,
            last_hidden,
            n: batch.n,
            seq: batch.seq,
            dim,
            hidden: h,
        })
    }

    /// Runs one batch: host gather, one [`Backend::run`], read-back, pooling.
    pub fn forward(&self, batch: &Batch) -> Result<ForwardOutput, ModelError> {
        self.forward_inner(batch, false).map(|(o, _)| o)
    }

    /// [`Self::forward`] with the device time of each kind of op
    /// ([`Backend::run_timed`]).
    pub fn forward_timed(
        &self,
        batch: &Batch,
    ) -> Result<(ForwardOutput, ForwardTiming), ModelError> {
        let (o, t) = self.forward_inner(batch, true)?;
        let t = t.ok_or_else(|| ModelError::Input("no timing".into()))?;
        Ok((o, t))
    }

    fn forward_inner(
        &self,
        batch: &Batch,
        timed: bool,
    ) -> Result<(ForwardOutput, Option<ForwardTiming>), ModelError> {
        if batch.n == 0 || batch.seq == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        let guard = self.scratch_for(batch.n, batch.seq)?;
        let s = guard
            .as_ref()
            .ok_or_else(|| ModelError::Input("no scratch".into()))?;
        self.write_inputs(s, batch)?;
        let ops = self.all_ops(s)?;
        let timing = if timed {
            let t = self.backend.run_timed(&ops)?;
            let (mut lin, mut att, mut other) = (0.0, 0.0, 0.0);
            for (op, &dt) in ops.iter().zip(&t.per_op_s) {
                match op {
                    Op::Linear { .. } => lin += dt,
                    Op::Attention { .. } | Op::Softmax { .. } => att += dt,
                    _ => other += dt,
                }
            }
            Some(ForwardTiming {
                total_s: t.total_s,
                linear_s: lin,
                attention_s: att,
                other_s: other,
                source: t.source,
            })
        } else {
            self.backend.run(&ops)?;
            None
        };
        Ok((self.outputs(s, batch)?, timing))
    }

    /// Calibration support: runs the embedding stage for `batch`.
    pub(crate) fn run_embed(&self, batch: &Batch) -> Result<(), ModelError> {
        let guard = self.scratch_for(batch.n, batch.seq)?;
        let s = guard
            .as_ref()
            .ok_or_else(|| ModelError::Input("no scratch".into()))?;
        self.write_inputs(s, batch)?;
        let ops = self.embed_ops(s)?;
        Ok(self.backend.run(&ops)?)
    }

    /// Calibration support: runs block `l` on the current scratch (shape of
    /// the last [`Self::run_embed`]) and returns the inputs its linears saw:
    /// `[q/k/v input, o input, fc1 input, fc2 input]`, each `rows x cols`.
    pub(crate) fn run_block(&self, l: usize) -> Result<[Vec<f32>; 4], ModelError> {
        let guard = self
            .scratch
            .lock()
            .map_err(|_| ModelError::Input("scratch lock poisoned".into()))?;
        let s = guard
            .as_ref()
            .ok_or_else(|| ModelError::Input("run_embed first".into()))?;
        let ops = self.block_ops(s, l);
        self.backend.run(&ops)?;
        let (x, _) = Self::block_io(s, l);
        let qkv_in = match self.config.family {
            Family::Bert => x,
            Family::ClipVision => &s.t1,
        };
        Ok([
            self.backend.read(qkv_in)?,
            self.backend.read(&s.ctx)?,
            self.backend.read(&s.t2)?,
            self.backend.read(&s.g)?,
        ])
    }

    /// Calibration support: the input of CLIP's `visual_projection` after a
    /// full pass of blocks (runs the head without the projection).
    pub(crate) fn run_head_input(&self) -> Result<Vec<f32>, ModelError> {
        let guard = self
            .scratch
            .lock()
            .map_err(|_| ModelError::Input("scratch lock poisoned".into()))?;
        let s = guard
            .as_ref()
            .ok_or_else(|| ModelError::Input("run_embed first".into()))?;
        let mut ops = self.head_ops(s)?;
        ops.truncate(2);
        self.backend.run(&ops)?;
        let c = s
            .clip
            .as_ref()
            .ok_or_else(|| ModelError::Input("scratch".into()))?;
        Ok(self.backend.read(&c[3])?)
    }

    /// Calibration support: replaces the weights of linear `name` of block
    /// `l` (or CLIP's projection when `l` is `None`) with `m`.
    pub(crate) fn replace_linear(
        &mut self,
        l: Option<usize>,
        which: usize,
        m: &QuantizedMatrix,
    ) -> Result<(), ModelError> {
        let w = self.backend.upload(m)?;
        let slot = match l {
            Some(l) => {
                let b = &mut self.blocks[l];
                match which {
                    0 => &mut b.q,
                    1 => &mut b.k,
                    2 => &mut b.v,
                    3 => &mut b.o,
                    4 => &mut b.fc1,
                    _ => &mut b.fc2,
                }
            }
            None => match &mut self.embed {
                Some(DEmbed::Clip { proj: Some(p), .. }) => p,
                _ => {
                    let _ = self.backend.free(w);
                    return Err(ModelError::Input("model has no projection".into()));
                }
            },
        };
        let old = std::mem::replace(&mut slot.w, w);
        self.backend.free(old)?;
        Ok(())
    }

    fn free_all(&mut self) -> Result<(), ModelError> {
        let mut mats: Vec<MatrixHandle> = Vec::new();
        let mut tens: Vec<TensorHandle> = Vec::new();
        let lin = |d: DLinear, mats: &mut Vec<MatrixHandle>, tens: &mut Vec<TensorHandle>| {
            mats.push(d.w);
            tens.extend(d.b);
        };
        if let Ok(mut g) = self.scratch.lock() {
            if let Some(s) = g.take() {
                tens.extend(s.tensors());
            }
        }
        for b in self.blocks.drain(..) {
            for d in [b.q, b.k, b.v, b.o, b.fc1, b.fc2] {
                lin(d, &mut mats, &mut tens);
            }
            tens.extend([b.ln1.g, b.ln1.b, b.ln2.g, b.ln2.b]);
        }
        match self.embed.take() {
            Some(DEmbed::Bert { ln, .. }) => tens.extend([ln.g, ln.b]),
            Some(DEmbed::Clip {
                patch,
                class_pos,
                pre_ln,
                post_ln,
                proj,
            }) => {
                lin(patch, &mut mats, &mut tens);
                tens.extend([class_pos, pre_ln.g, pre_ln.b, post_ln.g, post_ln.b]);
                if let Some(p) = proj {
                    lin(p, &mut mats, &mut tens);
                }
            }
            None => {}
        }
        // Free everything, report the first failure.
        let mut first: Option<BackendError> = None;
        for m in mats {
            if let Err(e) = self.backend.free(m) {
                first.get_or_insert(e);
            }
        }
        for t in tens {
            if let Err(e) = self.backend.free_tensor(t) {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Releases every device buffer of the model.
    pub fn free(mut self) -> Result<(), ModelError> {
        self.free_all()
    }
}

impl Drop for DeviceModel<'_> {
    fn drop(&mut self) {
        // Buffers not released with `free` are released here; errors have
        // no one to go to.
        let _ = self.free_all();
    }
}
