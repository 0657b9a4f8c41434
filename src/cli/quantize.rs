//! `quantscope quantize`: quantize every 2-D float tensor of a safetensors file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
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

use super::guard::{
    bad_flag, check_count, check_host_memory, esc, outln, product as guard_product,
};

/// Flags of `quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// Input safetensors file. Without it, the built-in sample model (one small
    /// transformer block with heavy-tailed weights) is quantized.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,

    /// Output safetensors file: per tensor `<name>.codes`, `.scales`, `.zeros`,
    /// `.codebook`, `.outliers.*`, `.act_scale` as the format has them, and the
    /// dequantized f32 weights as `<name>.dequantized`; tensors that are not
    /// quantized (1-D, integer, bool) are carried over unchanged, so the
    /// output is a complete checkpoint. Written atomically (a temporary file
    /// beside it, then a rename; nothing is left behind on error or Ctrl-C).
    /// An existing file keeps its permissions; if FILE is a symbolic link, the
    /// file it points to is replaced and the link kept. An output that is the
    /// input or the --calib file, or that is not a regular file (a directory,
    /// device or FIFO), is refused.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "results/quantized.safetensors"
    )]
    output: PathBuf,

    /// Strategy: none (f32), f16, bf16, int8, int4, int4-clip, nf4, kmeans4,
    /// easyquant4, gptq-int4, awq-int4, w8a8 (SmoothQuant: q8 weights
    /// marked for int8 activations); or `uniform` (any --bits, unpacked
    /// codes, for studies).
    #[arg(long, default_value = "int4")]
    scheme: String,

    /// Weights per scale: a positive multiple of 32 (32, 64, 128, ...) or `row`.
    #[arg(long, default_value = "128")]
    group: String,

    /// Bit width for `--scheme uniform` (2..=8).
    #[arg(long, value_parser = clap::value_parser!(u8).range(2..=8), allow_negative_numbers = true)]
    bits: Option<u8>,

    /// Symmetric (absmax) instead of asymmetric (min/max) for `--scheme uniform`.
    #[arg(long)]
    symmetric: bool,

    /// Outlier threshold in standard deviations of the row (easyquant4; default 3).
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,

    /// Seed of randomized steps (k-means++ initialization).
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Calibration activations for gptq-int4 / awq-int4 / w8a8 (and, for any scheme,
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

    /// Rows of built-in calibration activations per layer (without --calib; 1..=1048576).
    #[arg(long, default_value_t = 1024)]
    calib_rows: usize,

    /// Rows of built-in held-out evaluation activations per layer (without --calib; 1..=1048576).
    #[arg(long, default_value_t = 256)]
    eval_rows: usize,

    /// Carry float tensors of 3 or more dimensions (convolutions) over
    /// unchanged, and list them, instead of failing.
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
    match s.parse::<GroupSize>() {
        Ok(g) => Ok(g),
        Err(e) => bad_flag!("--group {}: {e}", esc(s)),
    }
}

/// Largest row count of built-in activations (`--calib-rows`, `--eval-rows`).
const MAX_ACTIVATION_ROWS: usize = 1 << 20;

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let group = parse_group(&args.group)?;
    let uniform = args.scheme.eq_ignore_ascii_case("uniform");
    let scheme = if uniform {
        None
    } else {
        let s: Scheme = match args.scheme.parse() {
            Ok(s) => s,
            Err(_) => {
                let names: Vec<_> = Scheme::ALL.iter().map(|k| k.name()).collect();
                bad_flag!(
                    "unknown --scheme '{}' (expected one of: {}, uniform)",
                    esc(&args.scheme),
                    names.join(", ")
                )
            }
        };
        if args.bits.is_some() {
            bad_flag!("--bits applies to --scheme uniform only ({s} has a fixed width)");
        }
        if args.symmetric {
            bad_flag!("--symmetric applies to --scheme uniform only ({s} fixes its own rounding)");
        }
        Some(s)
    };
    if let Some(t) = args.threshold {
        if scheme != Some(Scheme::EasyQuant4) {
            bad_flag!("--threshold applies to --scheme easyquant4 only");
        }
        if !(t > 0.0 && t.is_finite()) {
            bad_flag!("--threshold must be a positive number of standard deviations, got {t}");
        }
    }
    let threshold = args.threshold.unwrap_or(3.0);
    check_count(
        "--calib-rows",
        args.calib_rows,
        1,
        MAX_ACTIVATION_ROWS,
        "rows of built-in activations",
    )?;
    check_count(
        "--eval-rows",
        args.eval_rows,
        1,
        MAX_ACTIVATION_ROWS,
        "rows of built-in activations",
    )?;
    // The output is checked before any work: never an input, never a device,
    // folder or FIFO (see --help of --output).
    quantscope::atomic::resolve_output(&args.output)?;
    let inputs: Vec<&std::path::Path> = args
        .input
        .iter()
        .chain(&args.calib)
        .map(|p| p.as_path())
        .collect();
    quantscope::atomic::refuse_same_file(&args.output, &inputs)?;
    let uniform_spec = if uniform {
        let Some(bits) = args.bits else {
            bad_flag!("--scheme uniform needs --bits (2..=8)")
        };
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
        if let Err(e) = spec.validate() {
            bad_flag!("--bits {bits}: {e}");
        }
        Some(spec)
    } else {
        None
    };

    let (tensors, passthrough, source) = match &args.input {
        Some(p) => {
            // The weights as f32, their dequantized copy and the packed
            // output: about 9 bytes per weight, checked before reading.
            let n = io::checkpoint_matrix_elements(p)?;
            check_host_memory(
                &format!("quantizing '{}'", esc(&p.display().to_string())),
                n.checked_mul(9),
            )?;
            let c = io::read_checkpoint(p, args.skip_incompatible)?;
            (c.matrices, c.passthrough, p.display().to_string())
        }
        None => (
            sample::sample_weights(args.seed),
            Vec::new(),
            "built-in sample model".to_string(),
        ),
    };
    let calibrated =
        args.calib.is_some() || args.output_error || scheme.is_some_and(|s| s.needs_calibration());
    let mut calib_source = None;
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    if calibrated && args.calib.is_none() {
        // Built-in activations are generated per layer: bound them first.
        let widest = tensors.iter().map(|(_, w)| w.cols()).max().unwrap_or(0);
        let rows = (args.calib_rows + args.eval_rows) as u128;
        check_host_memory(
            "--calib-rows + --eval-rows of built-in activations",
            guard_product(&[rows, widest as u128, 4]),
        )?;
    }

    let pb = bar(tensors.len() as u64, "quantizing", args.json);
    let mut rows = Vec::new();
    let mut packed: Vec<(String, QuantizedMatrix)> = Vec::new();
    let mut unpacked = Vec::new();
    for (name, w) in &tensors {
        pb.set_message(esc(name));
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
            cfg.outlier_threshold = threshold;
            let (q, out_nmse) = if calibrated {
                let set = calibration(&args, name, w.cols())
                    .with_context(|| format!("tensor '{name}'"))?;
                calib_source.get_or_insert_with(|| set.source.to_string());
                let (q, n) = quantize_calibrated(w, &cfg, &set.calib, &mut |done, total| {
                    pb.set_message(format!("{} {done}/{total}", esc(name)))
                })
                .with_context(|| format!("tensor '{name}'"))?;
                notes.extend(n.notes.into_iter().map(|t| format!("{name}: {t}")));
                // An all-zero layer has a zero reference output: its output
                // error is undefined (0/0), said as such rather than as 0.
                let e = if w.data().iter().all(|&v| v == 0.0) {
                    notes.push(format!(
                        "{name}: every weight is zero, so the output NMSE is undefined (not reported)"
                    ));
                    None
                } else {
                    Some(
                        output_nmse(w, &q, &set.eval)
                            .with_context(|| format!("tensor '{name}'"))?,
                    )
                };
                (q, e)
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
        if quantscope::format::limits::all_rounded_to_zero(w, &deq) {
            let largest = w.data().iter().fold(0.0f32, |a, v| a.max(v.abs()));
            warnings.push(format!(
                "{}: every weight rounds to zero in {format} (largest |w| is {largest:e}, below the \
                 smallest f16 scale's reach): the quantized tensor is all zeros",
                esc(name)
            ));
        }
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

    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if uniform_spec.is_some() {
        io::write_uniform(&args.output, &unpacked, &passthrough, !args.no_dequantized)?;
    } else {
        io::write_checkpoint(&args.output, &packed, &passthrough, !args.no_dequantized)?;
    }
    let carried: Vec<_> = passthrough
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "shape": t.shape, "reason": t.reason}))
        .collect();

    let total_w: usize = rows.iter().map(|r| r.rows * r.cols).sum();
    let total_b: usize = rows.iter().map(|r| r.bytes).sum();
    if args.json {
        let out = serde_json::json!({
            "source": source,
            "output": args.output,
            "scheme": args.scheme,
            "group": group.label(),
            "tensors": rows,
            "passed_through": carried,
            "warnings": warnings,
            "calibration": calib_source,
            "notes": notes,
            "total_bytes": total_b,
            "total_bits_per_weight": total_b as f64 * 8.0 / total_w as f64,
            "f32_bytes": total_w * 4,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!(
        "{} -> {} ({}, {})",
        esc(&source),
        esc(&args.output.display().to_string()),
        args.scheme,
        match group {
            GroupSize::Row => "one group per row".to_string(),
            GroupSize::Cols(n) => format!("groups of {n}"),
        }
    );
    outln!(
        "{:<28} {:>11} {:<18} {:>8} {:>12} {:>10} {:>8} {:>8}",
        "tensor",
        "shape",
        "format",
        "bits/w",
        "bytes",
        "NMSE",
        "SQNR dB",
        "outliers"
    );
    for r in &rows {
        outln!(
            "{:<28} {:>11} {:<18} {:>8.3} {:>12} {:>10.3e} {:>8.2} {:>8}",
            esc(&r.name),
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
        outln!("calibration: {src}; output NMSE on held-out activations:");
        for r in &rows {
            if let Some(e) = r.output_nmse {
                outln!("  {:<28} {:.3e}", esc(&r.name), e);
            }
        }
    }
    for n in &notes {
        outln!("note: {}", esc(n));
    }
    for t in &passthrough {
        outln!(
            "carried over unchanged: {} {:?} {:?} ({})",
            esc(&t.name),
            t.dtype,
            t.shape,
            t.reason
        );
    }
    let ratio = (total_w * 4) as f64 / total_b as f64;
    outln!(
        "total: {} bytes ({:.3} bits/weight), {}",
        total_b,
        total_b as f64 * 8.0 / total_w as f64,
        if ratio >= 1.0 {
            format!("{ratio:.2}x smaller than f32")
        } else {
            format!(
                "{:.2}x larger than f32 (at this size scales and row padding outweigh the codes)",
                1.0 / ratio
            )
        }
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
