//! `quantscope vector`: the vector quantization study.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use quantscope::backend::{self, Backend, BackendKind};
use quantscope::vector::fit::IterOptions;
use quantscope::vector::study::StudyEvent;
use quantscope::vector::{
    generate, plot, report, run_study, Approach, Distribution, StudyConfig, StudyRun, VectorSize,
    VectorSpec,
};

use super::guard::{bad_flag, check_host_memory, esc, outln};
use quantscope::atomic::Transaction;

/// Flags of `vector`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Approaches (reported names): uniform = uniform-fixed (the reference's linspace(-4, 4, 2^bits)) \
and uniform-optimal (offset and step with the least squared error); non-uniform = lloyd-max \
(1-D k-means to convergence) and dp-optimal (the exact optimum, N <= 10,000); easyquant.
The error figure is the reference's ||v - q||_2 / N; RMSE and SQNR are reported too. Latency is \
fit + quantize, both reported.
Files in --save-dir: results.txt (appended, the reference's layout), results.json (every figure, \
appended) and PNG plots. The results are printed first; then every file of the run is written \
atomically, all of them or none (an append is old contents + new, written to a temporary file and \
renamed). A symbolic link in place of a file is written through (the file it points to is \
replaced).")]
pub struct Args {
    /// Vector: `small` (the reference's 10 values), `large` (10,000,000
    /// samples) or a length N >= 1 (underscores allowed: 1_000_000).
    #[arg(long, default_value = "small", value_parser = parse_size, allow_negative_numbers = true)]
    size: VectorSize,

    /// Distribution of generated vectors (large and N): gaussian (N(0,1)),
    /// laplace (b = 1), student-t (3 degrees of freedom) or gaussian+outliers
    /// (N(0,1) with planted outliers, see --outlier-rate and --outlier-scale).
    #[arg(long, value_parser = parse_distribution)]
    distribution: Option<Distribution>,

    /// gaussian+outliers: fraction of values replaced by outliers, in [0, 1].
    #[arg(long, default_value_t = 0.001, allow_negative_numbers = true)]
    outlier_rate: f64,

    /// gaussian+outliers: outliers are ±scale·u with u uniform in [1, 2); > 0.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    outlier_scale: f64,

    /// Bits per value: 2^bits levels (1 to 8).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=8))]
    bits: u32,

    /// EasyQuant: values with |v - mean| > threshold * std are kept exact (> 0).
    #[arg(long, default_value_t = 3.0, value_parser = parse_threshold, allow_negative_numbers = true)]
    threshold: f64,

    /// Levels are fitted on a random sample of this many values (the whole
    /// vector when it is shorter); the whole vector is quantized.
    #[arg(long, default_value_t = 1_000_000, value_parser = parse_positive)]
    sample_size: usize,

    /// uniform, non-uniform, easyquant, all, or one reported name
    /// (uniform-fixed, uniform-optimal, lloyd-max, dp-optimal).
    #[arg(long, default_value = "all", value_parser = parse_approach)]
    approach: ApproachArg,

    /// cpu, wgpu, cuda, or all (every backend that can run here; the others
    /// are reported and skipped). A backend named alone must be available.
    #[arg(long, default_value = "all", value_parser = parse_backend)]
    backend: BackendArg,

    /// CPU threads (default: every core; at most 1024). 1 = no
    /// multiprocessing in the results header.
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,

    /// Seed of the generated vector and of the fitting sample.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Folder for results.txt, results.json and the plots (created if missing).
    #[arg(long, default_value = "results")]
    save_dir: PathBuf,

    /// Run the whole matrix: small and large x every available backend x
    /// threads on (all cores) and off (1), and draw the summary image
    /// quantization_performance_comparison.png. --size and --threads are ignored.
    #[arg(long)]
    all_configs: bool,

    /// Lloyd-Max and the uniform search stop when no level moves by more than
    /// tolerance * std of the sample.
    #[arg(long, default_value_t = 1e-6, value_parser = parse_tolerance, allow_negative_numbers = true)]
    tolerance: f64,

    /// Cap on the iterations of each iterative fitter (at most 10,000,000).
    #[arg(long, default_value_t = 1000, value_parser = parse_max_iterations)]
    max_iterations: usize,

    /// Run each approach this many times and report the median fit and
    /// quantize latencies (figures do not change: everything is seeded; at
    /// most 10,000).
    #[arg(long, default_value_t = 1, value_parser = parse_repeat)]
    repeat: usize,

    /// Print the results as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,

    /// Write no PNG files.
    #[arg(long)]
    no_plots: bool,
}

/// `--approach`: the parsed list.
#[derive(Debug, Clone)]
struct ApproachArg(Vec<Approach>);

/// `--backend`: one kind or all.
#[derive(Debug, Clone, Copy)]
enum BackendArg {
    One(BackendKind),
    All,
}

fn parse_size(s: &str) -> Result<VectorSize, String> {
    s.parse()
        .map_err(|e: quantscope::vector::VectorError| e.to_string())
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    s.parse()
        .map_err(|e: quantscope::vector::VectorError| e.to_string())
}

fn parse_threshold(s: &str) -> Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(t.is_finite() && t > 0.0) {
        return Err(format!(
            "threshold must be a positive number of standard deviations, got {s}"
        ));
    }
    Ok(t)
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(t.is_finite() && t >= 0.0) {
        return Err(format!("tolerance must be >= 0, got {s}"));
    }
    Ok(t)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    let digits: String = s.chars().filter(|c| *c != '_').collect();
    match digits.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number >= 1, got '{s}'")),
    }
}

fn parse_bounded(s: &str, max: usize) -> Result<usize, String> {
    let n = parse_positive(s)?;
    if n > max {
        return Err(format!("{n} is more than {max}"));
    }
    Ok(n)
}

/// More threads than this only adds scheduling cost (and creating 100,000
/// threads takes minutes).
const MAX_THREADS: usize = 1024;

fn parse_threads(s: &str) -> Result<usize, String> {
    parse_bounded(s, MAX_THREADS)
}

fn parse_max_iterations(s: &str) -> Result<usize, String> {
    parse_bounded(s, 10_000_000)
}

fn parse_repeat(s: &str) -> Result<usize, String> {
    parse_bounded(s, 10_000)
}

fn parse_approach(s: &str) -> Result<ApproachArg, String> {
    Approach::parse_choice(s)
        .map(ApproachArg)
        .map_err(|e| e.to_string())
}

fn parse_backend(s: &str) -> Result<BackendArg, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(BackendArg::All);
    }
    s.parse::<BackendKind>()
        .map(BackendArg::One)
        .map_err(|_| format!("unknown backend '{s}' (expected cpu, wgpu, cuda or all)"))
}

/// Backends that cannot run here, with why.
type Unavailable = Vec<(BackendKind, String)>;

/// Opens the chosen backends: a named one must open; `all` skips (and
/// reports) the ones that cannot run here.
fn open_backends(choice: BackendArg) -> anyhow::Result<(Vec<Arc<dyn Backend>>, Unavailable)> {
    match choice {
        BackendArg::One(kind) => {
            let b = backend::open(kind)
                .with_context(|| format!("backend '{kind}' was asked for and cannot run"))?;
            Ok((vec![b], Vec::new()))
        }
        BackendArg::All => {
            let mut ok = Vec::new();
            let mut skipped = Vec::new();
            for s in backend::backends() {
                match s.backend {
                    Ok(b) => ok.push(b),
                    Err(e) => skipped.push((s.kind, e.to_string())),
                }
            }
            Ok((ok, skipped))
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if args.distribution.is_some() && args.size == VectorSize::Small && !args.all_configs {
        bad_flag!("--distribution applies to generated vectors (--size large or N); --size small is the reference's fixed values");
    }
    let dir = &args.save_dir;
    if let Ok(m) = std::fs::metadata(dir) {
        if !m.is_dir() {
            bad_flag!(
                "--save-dir '{}' is {}, not a folder",
                esc(&dir.display().to_string()),
                quantscope::atomic::kind_of(m.file_type())
            );
        }
    }
    let spec = |size: VectorSize| VectorSpec {
        size,
        distribution: args.distribution.unwrap_or(Distribution::Gaussian),
        outlier_rate: args.outlier_rate,
        outlier_scale: args.outlier_scale,
        seed: args.seed,
    };
    let config = |size: VectorSize, threads: usize| StudyConfig {
        spec: spec(size),
        bits: args.bits,
        threshold: args.threshold,
        sample_size: args.sample_size,
        approaches: args.approach.0.clone(),
        iter: IterOptions {
            tolerance: args.tolerance,
            max_iterations: args.max_iterations,
        },
        threads,
        repeat: args.repeat,
    };
    // Every configuration to run, validated before anything is computed or written.
    let configs: Vec<StudyConfig> = if args.all_configs {
        let on = cores.max(2);
        let mut v = Vec::new();
        for size in [VectorSize::Small, VectorSize::Large] {
            for threads in [on, 1] {
                v.push(config(size, threads));
            }
        }
        v
    } else {
        vec![config(args.size, args.threads.unwrap_or(cores))]
    };
    for c in &configs {
        if let Err(e) = c.validate() {
            bad_flag!("{e}");
        }
        // The vector, its quantized copy, the fitting sample and the
        // backends' buffers: about 16 bytes per value.
        let n = c.spec.size.len() as u128;
        let sample = c.sample_size.min(c.spec.size.len()) as u128;
        check_host_memory(
            &format!("--size {}", c.spec.size.label()),
            n.checked_mul(16).and_then(|b| b.checked_add(sample * 8)),
        )?;
    }
    let (backends, unavailable) = open_backends(args.backend)?;
    if backends.is_empty() {
        bail!("no backend can run here");
    }
    if !args.json {
        for (k, why) in &unavailable {
            eprintln!("skipping {k}: {why}");
        }
    }

    let total: usize = configs.len() * backends.len() * args.approach.0.len();
    let bar = super::progress::bar(total as u64, "vector", args.json);

    let mut runs: Vec<StudyRun> = Vec::new();
    let mut vectors: Vec<(VectorSize, Vec<f32>)> = Vec::new();
    for c in &configs {
        if !vectors.iter().any(|(s, _)| *s == c.spec.size) {
            bar.set_message(format!("generating the {} vector", c.spec.size));
            let v = generate::generate(&c.spec)?;
            vectors.push((c.spec.size, v));
        }
        let values = vectors
            .iter()
            .find(|(s, _)| *s == c.spec.size)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        let label = c.spec.size.label();
        let threads = c.threads;
        let mut on_event = |e: StudyEvent| match e {
            StudyEvent::Start {
                backend, approach, ..
            } => bar.set_message(format!("{label}, {backend}, {threads} threads: {approach}")),
            StudyEvent::Done { .. } => bar.inc(1),
        };
        let backend_runs = run_study(c, values, &backends, &mut on_event)?;
        runs.push(StudyRun {
            timestamp_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            config: c.clone(),
            vector: quantscope::vector::study::VectorFacts::of(values),
            runs: backend_runs,
            unavailable: unavailable.clone(),
            plots: Vec::new(),
            warnings: Vec::new(),
        });
    }
    bar.finish_and_clear();

    // Everything is computed. Stage every file of the run (nothing is
    // visible yet), print the results whatever happens, then commit: all
    // files appear, or none.
    let mut tx = Transaction::new();
    let staged = stage_files(&mut tx, &args, &mut runs, &vectors);
    if args.json {
        let out = if runs.len() == 1 {
            serde_json::to_string_pretty(&runs[0])?
        } else {
            serde_json::to_string_pretty(&runs)?
        };
        outln!("{out}");
    } else {
        for r in &runs {
            print_run(r);
        }
    }
    for r in runs.iter() {
        for w in &r.warnings {
            eprintln!("warning: {}", esc(w));
        }
    }
    staged.context("the results above were not saved (no file of this run was written)")?;
    tx.commit()
        .context("the results above were not saved (no file of this run was written)")?;
    if !args.json {
        outln!(
            "results appended to {} and {}",
            esc(&dir.join(report::RESULTS_TXT).display().to_string()),
            esc(&dir.join(report::RESULTS_JSON).display().to_string())
        );
    }
    Ok(())
}

/// Stages the plots, `results.txt` and `results.json` of the runs in `tx`.
fn stage_files(
    tx: &mut Transaction,
    args: &Args,
    runs: &mut [StudyRun],
    vectors: &[(VectorSize, Vec<f32>)],
) -> anyhow::Result<()> {
    let dir = &args.save_dir;
    quantscope::atomic::create_folder(dir)?;
    if !args.no_plots {
        write_plots(tx, dir, runs, vectors, args.all_configs)?;
    }
    report::stage_results(tx, dir, runs)?;
    Ok(())
}

fn write_plots(
    tx: &mut Transaction,
    dir: &Path,
    runs: &mut [StudyRun],
    vectors: &[(VectorSize, Vec<f32>)],
    summary: bool,
) -> anyhow::Result<()> {
    let mut plotted: Vec<VectorSize> = Vec::new();
    for r in runs.iter_mut() {
        let size = r.config.spec.size;
        if plotted.contains(&size) {
            continue;
        }
        plotted.push(size);
        let Some((_, values)) = vectors.iter().find(|(s, _)| *s == size) else {
            continue;
        };
        let (files, warnings) = plot::plot_run(tx, dir, r, values)?;
        r.plots = files.iter().map(|p| p.display().to_string()).collect();
        r.warnings.extend(warnings);
    }
    if summary {
        let p = dir.join("quantization_performance_comparison.png");
        let drawn = plot::plot_summary(tx, &p, runs)?;
        if let Some(last) = runs.last_mut() {
            last.plots.push(p.display().to_string());
            if let plot::Drawn::WithoutText(e) = drawn {
                last.warnings
                    .push(format!("{}: drawn without text ({e})", p.display()));
            }
        }
    }
    Ok(())
}

fn print_run(r: &StudyRun) {
    let c = &r.config;
    outln!(
        "vector {} (N = {}, {}, mean {:.4}, std {:.4}), {} bits = {} levels, sample {}",
        c.spec.size,
        r.vector.n,
        if c.spec.size == VectorSize::Small {
            "fixed values".to_string()
        } else {
            format!("{}, seed {}", c.spec.distribution, c.spec.seed)
        },
        r.vector.mean,
        r.vector.std,
        c.bits,
        c.levels(),
        c.sample_size.min(r.vector.n as usize)
    );
    for b in &r.runs {
        outln!("  {} ({}), {} threads", b.backend, b.device, b.threads);
        outln!(
            "    {:<16} {:>12} {:>11} {:>9} {:>10} {:>10} {:>8}",
            "approach",
            "L2/N",
            "RMSE",
            "SQNR dB",
            "fit s",
            "quant s",
            "outliers"
        );
        for a in &b.results {
            outln!(
                "    {:<16} {:>12.4e} {:>11.4e} {:>9.3} {:>10} {:>10} {:>8}",
                a.approach.name(),
                a.l2_over_n,
                a.rmse,
                a.sqnr_db,
                seconds(a.fit_s),
                seconds(a.quantize_s),
                a.outliers
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
        for (a, why) in &b.skipped {
            outln!("    {:<16} skipped: {why}", a.name());
        }
    }
}

/// Seconds with 4 decimals, or in scientific notation below 10 ms.
fn seconds(s: f64) -> String {
    if s < 0.01 {
        format!("{s:.2e}")
    } else {
        format!("{s:.4}")
    }
}
