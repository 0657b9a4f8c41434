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

/// Flags of `vector`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Approaches (reported names): uniform = uniform-fixed (the reference's linspace(-4, 4, 2^bits)) \
and uniform-optimal (offset and step with the least squared error); non-uniform = lloyd-max \
(1-D k-means to convergence) and dp-optimal (the exact optimum, N <= 10,000); easyquant.
The error figure is the reference's ||v - q||_2 / N; RMSE and SQNR are reported too. Latency is \
fit + quantize, both reported.
Files in --save-dir: results.txt (appended, the reference's layout), results.json (every figure, \
appended, written atomically) and PNG plots.")]
pub struct Args {
    /// Vector: `small` (the reference's 10 values), `large` (10,000,000
    /// samples) or a length N >= 1 (underscores allowed: 1_000_000).
    #[arg(long, default_value = "small", value_parser = parse_size, allow_negative_numbers = true)]
    size: VectorSize,

    /// Distribution of generated vectors (large and N): gaussian (N(0,1)),
    /// laplace (b = 1), student-t (3 degrees of freedom) or gaussian+outliers
    /// (N(0,1) with planted outliers, see --outlier-rate and --outlier-scale).
    #[arg(long, default_value = "gaussian", value_parser = parse_distribution)]
    distribution: Distribution,

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

    /// CPU threads (default: every core). 1 = no multiprocessing in the
    /// results header.
    #[arg(long, value_parser = parse_positive)]
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

    /// Cap on the iterations of each iterative fitter.
    #[arg(long, default_value_t = 1000, value_parser = parse_positive)]
    max_iterations: usize,

    /// Run each approach this many times and report the median fit and
    /// quantize latencies (figures do not change: everything is seeded).
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
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
    let spec = |size: VectorSize| VectorSpec {
        size,
        distribution: args.distribution,
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
        c.validate()?;
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

    // Everything is computed: now write.
    let dir = &args.save_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !args.no_plots {
        write_plots(dir, &mut runs, &vectors, args.all_configs)?;
    }
    for r in &runs {
        report::append_results_txt(dir, r)?;
        report::append_results_json(dir, r)?;
    }

    if args.json {
        let out = if runs.len() == 1 {
            serde_json::to_string_pretty(&runs[0])?
        } else {
            serde_json::to_string_pretty(&runs)?
        };
        println!("{out}");
    } else {
        for r in &runs {
            print_run(r);
        }
        println!(
            "results appended to {} and {}",
            dir.join(report::RESULTS_TXT).display(),
            dir.join(report::RESULTS_JSON).display()
        );
    }
    Ok(())
}

fn write_plots(
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
        let (files, warnings) = plot::plot_run(dir, r, values)?;
        r.plots = files.iter().map(|p| p.display().to_string()).collect();
        r.warnings.extend(warnings);
    }
    if summary {
        let p = dir.join("quantization_performance_comparison.png");
        let drawn = plot::plot_summary(&p, runs)?;
        if let Some(last) = runs.last_mut() {
            last.plots.push(p.display().to_string());
            if let plot::Drawn::WithoutText(e) = drawn {
                last.warnings
                    .push(format!("{}: drawn without text ({e})", p.display()));
            }
        }
    }
    for r in runs.iter() {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

fn print_run(r: &StudyRun) {
    let c = &r.config;
    println!(
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
        println!("  {} ({}), {} threads", b.backend, b.device, b.threads);
        println!(
            "    {:<16} {:>12} {:>11} {:>9} {:>10} {:>10} {:>8}",
            "approach", "L2/N", "RMSE", "SQNR dB", "fit s", "quant s", "outliers"
        );
        for a in &b.results {
            println!(
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
            println!("    {:<16} skipped: {why}", a.name());
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
