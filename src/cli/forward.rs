//! `quantscope forward`: quantize a model's linears with one strategy, run
//! inputs through it on one backend, and report time per input and
//! fidelity to the unquantized model (run on the CPU, f32 activations).

use std::path::PathBuf;

use anyhow::{bail, Context};
use quantscope::backend::{self, cpu::CpuBackend, BackendKind};
use quantscope::format::{FormatKind, GroupSize};
use quantscope::metrics::error_stats;
use quantscope::model::{
    quantize_model, DeviceModel, ForwardOutput, Inputs, Model, ModelError, Preset, QuantPlan,
    QuantizedModel,
};
use quantscope::quant::{QuantConfig, Scheme};
use serde::Serialize;

use super::progress::bar;

/// Flags of `forward`.
#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face checkpoint folder (config.json + model.safetensors,
    /// tokenizer.json, ...) or a folder written by `--save`.
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    model: Option<PathBuf>,

    /// A built-in synthetic model: tiny, minilm-l6, clip-vit-l14.
    #[arg(long, default_value = "tiny")]
    preset: String,

    /// Strategy for every linear: none (f32), f16, bf16, int8, w8a8
    /// (SmoothQuant: int8 weights times int8 activations), int4,
    /// int4-clip, nf4, kmeans4, easyquant4, gptq-int4, awq-int4. A model
    /// loaded from a quantized folder runs as stored.
    #[arg(long, default_value = "int8")]
    strategy: String,

    /// Weights per scale: a positive multiple of 32 or `row`.
    #[arg(long, default_value = "128")]
    group: String,

    /// Backend: cpu, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,

    /// Inputs: one text per line, or one image path per line (relative to
    /// the file). Default: the built-in sentences / generated images.
    #[arg(long, value_name = "FILE")]
    inputs: Option<PathBuf>,

    /// Calibration inputs for gptq-int4 / awq-int4 / w8a8 (same format as
    /// --inputs; keep them apart from the evaluation inputs). Default: a
    /// built-in set disjoint from the default inputs.
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,

    /// Inputs per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,

    /// Pad and truncate every text to exactly this many tokens (benchmarks).
    #[arg(long)]
    seq: Option<usize>,

    /// Timed runs per batch after one warm-up run (the median is reported).
    #[arg(long, default_value_t = 1)]
    repeat: usize,

    /// Also write the pooled outputs (`pooled`, [n, dim]) and the last hidden
    /// state (`last_hidden`, [n, seq, hidden]) here, f32, atomically.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Save the quantized model to this folder (loadable with --model).
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,

    /// CPU backend only: what the q8 / q4 / lut4 matmuls do with the
    /// activations (the fidelity reported includes any rounding).
    #[arg(long, value_enum, default_value = "int8")]
    cpu_activations: CpuActivations,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `--cpu-activations` of `forward` and `profile`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum CpuActivations {
    /// Round to int8 per 32 columns for integer dot products where it
    /// costs little fidelity: the q4 / lut4 GEMMs and every q8 / q4 / lut4
    /// GEMV (batch below 8). The q8 GEMM keeps f32 activations.
    Int8,
    /// As int8, and the q8 GEMM too (W8A8: about 2.2-2.5x faster, but the
    /// rounding doubles int8 weights' error).
    Int8All,
    /// Keep every activation f32 (the weights' own fidelity; slower).
    F32,
}

impl CpuActivations {
    /// The flag's value, as reports show it (`int8-all`).
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .expect("no variant is skipped")
            .get_name()
            .to_string()
    }

    /// The CPU backend's setting.
    pub fn setting(self) -> quantscope::backend::cpu::GemvActivations {
        use quantscope::backend::cpu::GemvActivations as G;
        match self {
            CpuActivations::Int8 => G::Int8,
            CpuActivations::Int8All => G::Int8All,
            CpuActivations::F32 => G::F32,
        }
    }
}

/// Fidelity of the quantized outputs to the unquantized model's.
#[derive(Serialize)]
struct Fidelity {
    /// Mean over inputs of the pooled outputs' cosine.
    cosine_mean: f64,
    /// Lowest per-input cosine.
    cosine_min: f64,
    /// NMSE of all pooled outputs together.
    pooled_nmse: f64,
    /// NMSE of the last hidden state at real (non-pad) tokens.
    hidden_nmse: f64,
}

/// Device time of the run.
#[derive(Serialize)]
struct Timing {
    /// Seconds per input (sum over batches of the median batch time / n).
    time_per_input_s: f64,
    /// Sequence positions (padding included) per second.
    tokens_per_s: f64,
    /// Linear layers' share of the time, seconds per input.
    linear_s: f64,
    /// Attention's, seconds per input.
    attention_s: f64,
    /// Everything else's, seconds per input.
    other_s: f64,
    /// Where the times came from.
    source: String,
}

#[derive(Serialize)]
struct Report {
    version: u32,
    model: String,
    family: String,
    strategy: String,
    backend: String,
    /// The CPU backend's `--cpu-activations` (null on other backends).
    cpu_activations: Option<String>,
    /// "ok", or "n/a" when the backend lacks an op.
    status: String,
    reason: Option<String>,
    inputs: usize,
    batch: usize,
    max_seq: usize,
    weight_bytes: u64,
    f32_weight_bytes: u64,
    timing: Option<Timing>,
    fidelity: Option<Fidelity>,
    notes: Vec<String>,
}

fn load(args: &Args) -> anyhow::Result<(Model, Option<QuantizedModel>)> {
    match &args.model {
        Some(dir) => {
            if dir.join("quantscope.json").is_file() {
                let q = QuantizedModel::load(dir)?;
                Ok((q.to_model(), Some(q)))
            } else {
                Ok((Model::load(dir)?, None))
            }
        }
        None => {
            let p: Preset = args.preset.parse()?;
            Ok((Model::preset(p)?, None))
        }
    }
}

/// Runs every batch, returning the outputs and (per batch) the timing.
fn run_all(
    dm: &DeviceModel<'_>,
    m: &Model,
    inputs: &Inputs,
    batch: usize,
    repeat: usize,
    pb: &indicatif::ProgressBar,
) -> Result<(Vec<ForwardOutput>, [f64; 4], usize, String), ModelError> {
    let mut outs = Vec::new();
    let mut t = [0.0f64; 4];
    let mut positions = 0usize;
    let mut source = String::new();
    let mut start = 0;
    while start < inputs.len() {
        let end = (start + batch).min(inputs.len());
        let b = m.encode(inputs, start..end)?;
        let out = dm.forward(&b)?; // warm-up, and the outputs
        let mut samples = Vec::new();
        for _ in 0..repeat.max(1) {
            let (_, tm) = dm.forward_timed(&b)?;
            samples.push(tm);
            source = format!("{:?}", tm.source);
        }
        samples.sort_by(|a, b| a.total_s.total_cmp(&b.total_s));
        let med = samples[samples.len() / 2];
        t[0] += med.total_s;
        t[1] += med.linear_s;
        t[2] += med.attention_s;
        t[3] += med.other_s;
        positions += b.n * b.seq;
        outs.push(out);
        pb.inc((end - start) as u64);
        start = end;
    }
    Ok((outs, t, positions, source))
}

fn fidelity(reference: &[ForwardOutput], got: &[ForwardOutput], masks: &[Vec<usize>]) -> Fidelity {
    let (mut cs, mut cmin, mut n) = (0.0, f64::INFINITY, 0usize);
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    let (mut ha, mut hb) = (Vec::new(), Vec::new());
    for ((r, g), lens) in reference.iter().zip(got).zip(masks) {
        for (a, b) in r.pooled.chunks(r.dim).zip(g.pooled.chunks(g.dim)) {
            let c = error_stats(a, b).cosine;
            cs += c;
            cmin = cmin.min(c);
            n += 1;
        }
        pa.extend_from_slice(&r.pooled);
        pb.extend_from_slice(&g.pooled);
        for (i, &len) in lens.iter().enumerate() {
            let off = i * r.seq * r.hidden;
            ha.extend_from_slice(&r.last_hidden[off..off + len * r.hidden]);
            hb.extend_from_slice(&g.last_hidden[off..off + len * g.hidden]);
        }
    }
    Fidelity {
        cosine_mean: cs / n.max(1) as f64,
        cosine_min: cmin,
        pooled_nmse: error_stats(&pa, &pb).nmse,
        hidden_nmse: error_stats(&ha, &hb).nmse,
    }
}

fn write_output(path: &std::path::Path, outs: &[ForwardOutput]) -> anyhow::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let n: usize = outs.iter().map(|o| o.n).sum();
    let dim = outs.first().map_or(0, |o| o.dim);
    let hidden = outs.first().map_or(0, |o| o.hidden);
    let seq = outs.iter().map(|o| o.seq).max().unwrap_or(0);
    let mut pooled = Vec::with_capacity(n * dim);
    // Batches may have different lengths: pad the hidden state with zeros.
    let mut last = vec![0.0f32; n * seq * hidden];
    let mut row = 0;
    for o in outs {
        pooled.extend_from_slice(&o.pooled);
        for i in 0..o.n {
            for t in 0..o.seq {
                let src = &o.last_hidden[(i * o.seq + t) * hidden..][..hidden];
                last[((row + i) * seq + t) * hidden..][..hidden].copy_from_slice(src);
            }
        }
        row += o.n;
    }
    let pb: &[u8] = bytemuck::cast_slice(&pooled);
    let lb: &[u8] = bytemuck::cast_slice(&last);
    let views = vec![
        (
            "pooled".to_string(),
            TensorView::new(Dtype::F32, vec![n, dim], pb)?,
        ),
        (
            "last_hidden".to_string(),
            TensorView::new(Dtype::F32, vec![n, seq, hidden], lb)?,
        ),
    ];
    let bytes = safetensors::serialize(views, None)?;
    quantscope::io::write_atomic(path, &bytes)?;
    Ok(())
}

/// Runs `forward`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let kind: BackendKind = args.backend.parse()?;
    let (mut model, stored) = load(&args)?;
    model.set_fixed_length(args.seq);
    let inputs = match &args.inputs {
        Some(p) => model.read_inputs(p)?,
        None => model.default_inputs(),
    };
    let scheme: Scheme = args.strategy.parse()?;
    let mut cfg = QuantConfig::new(scheme);
    cfg.group = args.group.parse::<GroupSize>()?;
    let plan = QuantPlan::uniform(cfg);
    let quiet = args.json;
    let q = match stored {
        Some(q) => q,
        None => {
            let calib = if scheme.needs_calibration() {
                Some(match &args.calib {
                    Some(p) => model.read_inputs(p)?,
                    None => model.calibration_inputs(),
                })
            } else {
                None
            };
            let n = model.linear_layers().len() as u64;
            let pb = bar(n, "quantize", quiet);
            let q = quantize_model(&model, &plan, calib.as_ref(), &|d, _| {
                pb.set_position(d as u64)
            })
            .with_context(|| format!("quantizing {} with {}", model.name(), plan.label()))?;
            pb.finish_and_clear();
            q
        }
    };
    if let Some(dir) = &args.save {
        q.save(dir)?;
    }
    let mut report = Report {
        version: 1,
        model: model.name().to_string(),
        family: format!("{:?}", model.family()),
        strategy: q.strategy().to_string(),
        backend: kind.to_string(),
        cpu_activations: (kind == BackendKind::Cpu).then(|| args.cpu_activations.name()),
        status: "ok".into(),
        reason: None,
        inputs: inputs.len(),
        batch: args.batch,
        max_seq: 0,
        weight_bytes: q.weight_bytes(),
        f32_weight_bytes: model.f32_weight_bytes(),
        timing: None,
        fidelity: None,
        notes: q.notes().to_vec(),
    };
    if args
        .model
        .as_ref()
        .is_some_and(|d| d.join("quantscope.json").is_file())
    {
        report.notes.push(
            "a stored quantized model: fidelity is to its own weights dequantized to f32 \
             (the original f32 weights are not in the folder)"
                .into(),
        );
    }
    let be = if kind == BackendKind::Cpu {
        Ok(std::sync::Arc::new(CpuBackend::with_gemv_activations(
            args.cpu_activations.setting(),
        )) as std::sync::Arc<dyn backend::Backend>)
    } else {
        backend::open(kind)
    };
    let result = be.map_err(ModelError::from).and_then(|be| {
        let pb = bar(inputs.len() as u64, "forward", quiet);
        let r = DeviceModel::upload(be.as_ref(), &q)
            .and_then(|dm| run_all(&dm, &model, &inputs, args.batch, args.repeat, &pb));
        pb.finish_and_clear();
        r
    });
    let (outs, t, positions, source) = match result {
        Ok(r) => r,
        Err(e @ (ModelError::Unsupported { .. } | ModelError::Backend(_))) => {
            report.status = "n/a".into();
            report.reason = Some(e.to_string());
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} {} on {}: n/a ({e})",
                    report.model, report.strategy, kind
                );
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    // The unquantized model on the CPU with f32 activations: the reference.
    let f32_plan = QuantPlan::uniform(QuantConfig::new(Scheme::None(FormatKind::F32)));
    let base = quantize_model(&model, &f32_plan, None, &|_, _| {})?;
    let cpu = CpuBackend::exact();
    let pb = bar(inputs.len() as u64, "reference", quiet);
    let dm = DeviceModel::upload(&cpu, &base)?;
    let (refs, _, _, _) = run_all(&dm, &model, &inputs, args.batch, 0, &pb)?;
    dm.free()?;
    pb.finish_and_clear();
    let mut lens = Vec::new();
    let mut start = 0;
    while start < inputs.len() {
        let end = (start + args.batch).min(inputs.len());
        lens.push(model.encode(&inputs, start..end)?.lengths());
        start = end;
    }
    let n = inputs.len() as f64;
    report.max_seq = outs.iter().map(|o| o.seq).max().unwrap_or(0);
    report.timing = Some(Timing {
        time_per_input_s: t[0] / n,
        tokens_per_s: positions as f64 / t[0].max(1e-12),
        linear_s: t[1] / n,
        attention_s: t[2] / n,
        other_s: t[3] / n,
        source,
    });
    report.fidelity = Some(fidelity(&refs, &outs, &lens));
    if let Some(p) = &args.output {
        write_output(p, &outs)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let tm = report.timing.as_ref().map_or(0.0, |t| t.time_per_input_s);
        let f = report.fidelity.as_ref();
        println!(
            "{} ({}) {} on {}{}: {} inputs, batch {}, seq <= {}",
            report.model,
            report.family,
            report.strategy,
            kind,
            report
                .cpu_activations
                .as_ref()
                .map_or(String::new(), |a| format!(" ({a} activations)")),
            report.inputs,
            report.batch,
            report.max_seq
        );
        println!(
            "  time per input {:.3} ms ({:.0} tokens/s), weights {:.2} MB (f32 {:.2} MB)",
            tm * 1e3,
            report.timing.as_ref().map_or(0.0, |t| t.tokens_per_s),
            report.weight_bytes as f64 / 1e6,
            report.f32_weight_bytes as f64 / 1e6
        );
        if let Some(f) = f {
            println!(
                "  fidelity to f32: cosine mean {:.6}, min {:.6}; pooled NMSE {:.3e}, hidden NMSE {:.3e}",
                f.cosine_mean, f.cosine_min, f.pooled_nmse, f.hidden_nmse
            );
        }
        if let Some(p) = &args.output {
            println!("  wrote {}", p.display());
        }
    }
    Ok(())
}
