//! `quantscope quantize`: quantize every 2-D float tensor of a safetensors file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use quantscope::format::{GroupSize, QuantizedMatrix};
use quantscope::metrics::error_stats;
use quantscope::quant::calib::{load_safetensors, CalibSource, CalibrationSet};
use quantscope::quant::rtn::{quantize_uniform, Granularity, Symmetry, UniformSpec};
use quantscope::quant::{
    check_finite, output_nmse, quantize, quantize_calibrated, QuantConfig, Scheme,
};
use quantscope::{io, sample};
use serde::Serialize;

use super::progress::bar;

/// Flags of `quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// Input safetensors file. Without it, the built-in sample model (one small
    /// transformer block with heavy-tailed weights) is quantized.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,

    /// Output safetensors file: per tensor `<name>.codes`, `.scales`, `.zeros`,
    /// `.codebook`, `.outliers.*`, `.act_scale` as the format has them, and the
    /// dequantized f32 weights as `<name>.dequantized`. Written atomically.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "results/quantized.safetensors"
    )]
    output: PathBuf,

    /// Strategy: none (f32), f16, bf16, int8, int4, int4-clip, nf4, kmeans4,
    /// easyquant4, gptq-int4, awq-int4; or `uniform` (any --bits, unpacked
    /// codes, for studies).
    #[arg(long, default_value = "int4")]
    scheme: String,

    /// Weights per scale: a positive multiple of 32 (32, 64, 128, ...) or `row`.
    #[arg(long, default_value = "128")]
    group: String,

    /// Bit width for `--scheme uniform` (2..=8).
    #[arg(long)]
    bits: Option<u8>,

    /// Symmetric (absmax) instead of asymmetric (min/max) for `--scheme uniform`.
    #[arg(long)]
    symmetric: bool,

    /// Outlier threshold in standard deviations of the row (easyquant4).
    #[arg(long, default_value_t = 3.0)]
    threshold: f32,

    /// Seed of randomized steps (k-means++ initialization).
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Calibration activations for gptq-int4 / awq-int4 (and, for any scheme,
    /// the output error on held-out inputs): a safetensors file with, per
    /// weight `<name>`, a float tensor `<name>` of shape `[n, cols]` (leading
    /// dimensions are flattened). A quarter of the rows is held out for
    /// evaluation. Without it, calibrated schemes use the built-in generator of
    /// transformer-like activations (and say so).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,

    /// Also report every tensor's output NMSE on held-out activations (from
    /// --calib, else built-in), for comparing data-free schemes with GPTQ/AWQ.
    #[arg(long)]
    output_error: bool,

    /// Rows of built-in calibration activations per layer (without --calib).
    #[arg(long, default_value_t = 1024)]
    calib_rows: usize,

    /// Rows of built-in held-out evaluation activations per layer (without --calib).
    #[arg(long, default_value_t = 256)]
    eval_rows: usize,

    /// Leave out (and list) tensors that are not 2-D float instead of failing.
    #[arg(long)]
    skip_incompatible: bool,

    /// Do not write the `<name>.dequantized` f32 tensors.
    #[arg(long)]
    no_dequantized: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One tensor's outcome.
#[derive(Serialize)]
struct Row {
    name: String,
    rows: usize,
    cols: usize,
    format: String,
    bits_per_weight: f64,
    bytes: usize,
    nmse: f64,
    sqnr_db: f64,
    cosine: f64,
    max_abs: f64,
    outliers: usize,
    /// Output NMSE on held-out activations, when calibration data was used.
    output_nmse: Option<f64>,
    seconds: f64,
}

/// Parses and checks a group size flag.
pub fn parse_group(s: &str) -> anyhow::Result<GroupSize> {
    s.parse::<GroupSize>()
        .with_context(|| format!("--group {s}"))
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let group = parse_group(&args.group)?;
    if !(args.threshold > 0.0 && args.threshold.is_finite()) {
        bail!(
            "--threshold must be a positive number of standard deviations, got {}",
            args.threshold
        );
    }
    let uniform = args.scheme.eq_ignore_ascii_case("uniform");
    let scheme = if uniform {
        None
    } else {
        let s: Scheme = args.scheme.parse().context("--scheme")?;
        if args.bits.is_some() {
            bail!(
                "--bits applies to --scheme uniform only ({} has a fixed width)",
                s
            );
        }
        Some(s)
    };
    let uniform_spec = if uniform {
        let bits = args.bits.context("--scheme uniform needs --bits (2..=8)")?;
        let spec = UniformSpec {
            bits,
            symmetry: if args.symmetric {
                Symmetry::Symmetric
            } else {
                Symmetry::Asymmetric
            },
            granularity: match group {
                GroupSize::Row => Granularity::Row,
                GroupSize::Cols(n) => Granularity::Group(n),
            },
        };
        spec.validate().context("--bits")?;
        Some(spec)
    } else {
        None
    };

    let (tensors, skipped, source) = match &args.input {
        Some(p) => {
            let (t, s) = io::read_matrices(p, args.skip_incompatible)?;
            (t, s, p.display().to_string())
        }
        None => (
            sample::sample_weights(args.seed),
            Vec::new(),
            "built-in sample model".to_string(),
        ),
    };
    if args.calib_rows == 0 || args.eval_rows == 0 {
        bail!("--calib-rows and --eval-rows must be positive");
    }
    let calibrated =
        args.calib.is_some() || args.output_error || scheme.is_some_and(|s| s.needs_calibration());
    let mut calib_source = None;
    let mut notes = Vec::new();

    let pb = bar(tensors.len() as u64, "quantizing", args.json);
    let mut rows = Vec::new();
    let mut packed: Vec<(String, QuantizedMatrix)> = Vec::new();
    let mut unpacked = Vec::new();
    for (name, w) in &tensors {
        pb.set_message(name.clone());
        let mut last_output_nmse = None;
        let t = Instant::now();
        check_finite(w).with_context(|| format!("tensor '{name}'"))?;
        let (deq, format, bpw, bytes, nout) = if let Some(spec) = uniform_spec {
            let q = quantize_uniform(w, spec).with_context(|| format!("tensor '{name}'"))?;
            let deq = q.dequantize();
            let bpw = q.bits_per_weight();
            let bytes = (bpw * w.len() as f64 / 8.0).ceil() as usize;
            unpacked.push((name.clone(), q));
            (
                deq,
                format!(
                    "uniform{} {}",
                    spec.bits,
                    if args.symmetric { "sym" } else { "asym" }
                ),
                bpw,
                bytes,
                0,
            )
        } else {
            let mut cfg = QuantConfig::new(scheme.unwrap_or(Scheme::Int4));
            cfg.group = group;
            cfg.seed = args.seed;
            cfg.outlier_threshold = args.threshold;
            let (q, out_nmse) = if calibrated {
                let set = calibration(&args, name, w.cols())
                    .with_context(|| format!("tensor '{name}'"))?;
                calib_source.get_or_insert_with(|| set.source.to_string());
                let (q, n) = quantize_calibrated(w, &cfg, &set.calib, &mut |done, total| {
                    pb.set_message(format!("{name} {done}/{total}"))
                })
                .with_context(|| format!("tensor '{name}'"))?;
                notes.extend(n.notes.into_iter().map(|t| format!("{name}: {t}")));
                let e = output_nmse(w, &q, &set.eval)?;
                (q, Some(e))
            } else {
                (
                    quantize(w, &cfg).with_context(|| format!("tensor '{name}'"))?,
                    None,
                )
            };
            last_output_nmse = out_nmse;
            let deq = q.dequantize();
            let info = (
                q.label(),
                q.bits_per_weight(),
                q.storage_bytes().total(),
                q.outliers().map_or(0, |o| o.nnz()),
            );
            packed.push((name.clone(), q));
            (deq, info.0, info.1, info.2, info.3)
        };
        let e = error_stats(w.data(), deq.data());
        rows.push(Row {
            name: name.clone(),
            rows: w.rows(),
            cols: w.cols(),
            format,
            bits_per_weight: bpw,
            bytes,
            nmse: e.nmse,
            sqnr_db: e.sqnr_db,
            cosine: e.cosine,
            max_abs: e.max_abs,
            outliers: nout,
            output_nmse: last_output_nmse,
            seconds: t.elapsed().as_secs_f64(),
        });
        pb.inc(1);
    }
    pb.finish_and_clear();

    if uniform_spec.is_some() {
        io::write_uniform(&args.output, &unpacked, !args.no_dequantized)?;
    } else {
        io::write_quantized(&args.output, &packed, !args.no_dequantized)?;
    }

    let total_w: usize = rows.iter().map(|r| r.rows * r.cols).sum();
    let total_b: usize = rows.iter().map(|r| r.bytes).sum();
    if args.json {
        let out = serde_json::json!({
            "source": source,
            "output": args.output,
            "scheme": args.scheme,
            "group": group.label(),
            "tensors": rows,
            "skipped": skipped,
            "calibration": calib_source,
            "notes": notes,
            "total_bytes": total_b,
            "total_bits_per_weight": total_b as f64 * 8.0 / total_w as f64,
            "f32_bytes": total_w * 4,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} -> {} ({} g{})",
        source,
        args.output.display(),
        args.scheme,
        group.label()
    );
    println!(
        "{:<28} {:>11} {:<18} {:>8} {:>12} {:>10} {:>8} {:>8}",
        "tensor", "shape", "format", "bits/w", "bytes", "NMSE", "SQNR dB", "outliers"
    );
    for r in &rows {
        println!(
            "{:<28} {:>11} {:<18} {:>8.3} {:>12} {:>10.3e} {:>8.2} {:>8}",
            r.name,
            format!("{}x{}", r.rows, r.cols),
            r.format,
            r.bits_per_weight,
            r.bytes,
            r.nmse,
            r.sqnr_db,
            r.outliers
        );
    }
    if let Some(src) = &calib_source {
        println!("calibration: {src}; output NMSE on held-out activations:");
        for r in &rows {
            if let Some(e) = r.output_nmse {
                println!("  {:<28} {:.3e}", r.name, e);
            }
        }
    }
    for n in &notes {
        println!("note: {n}");
    }
    for s in &skipped {
        println!("skipped {}: {}", s.name, s.reason);
    }
    println!(
        "total: {} bytes ({:.3} bits/weight), {:.2}x smaller than f32",
        total_b,
        total_b as f64 * 8.0 / total_w as f64,
        (total_w * 4) as f64 / total_b as f64
    );
    Ok(())
}

/// Calibration and held-out activations for the layer `name` with `cols` inputs.
fn calibration(args: &Args, name: &str, cols: usize) -> anyhow::Result<CalibrationSet> {
    Ok(match &args.calib {
        Some(path) => {
            let all = load_safetensors(path, name, cols)?;
            let source = CalibSource::File {
                path: path.display().to_string(),
                tensor: name.to_string(),
            };
            CalibrationSet::split(all, 0.25, source)?
        }
        None => CalibrationSet::synthetic(cols, args.calib_rows, args.eval_rows, args.seed)?,
    })
}
