//! `quantscope report RUN.json [MORE.json ...]`: the chart data (`--data`),
//! the charts (`--charts DIR`, PNG and/or SVG) and the self-contained HTML
//! report (`--html`) of one run; with several runs, the HTML comparison.

use std::path::PathBuf;

use anyhow::{bail, Context};
use quantscope::io::write_atomic;
use quantscope::report::{charts, compare, data::VisualizationData, html};

/// Flags of `report`.
#[derive(clap::Args)]
pub struct Args {
    /// Results files written by `analyze` (several: a comparison report).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Write the data behind every chart as JSON (one run only).
    #[arg(long, value_name = "OUT.json")]
    data: Option<PathBuf>,
    /// Write the HTML report (one run) or the comparison report (several).
    #[arg(long, value_name = "OUT.html")]
    html: Option<PathBuf>,
    /// Write every chart into this folder (one run only).
    #[arg(long, value_name = "DIR")]
    charts: Option<PathBuf>,
    /// Chart file format for `--charts`.
    #[arg(long, value_enum, default_value = "png")]
    format: ChartFormat,
}

/// Chart files to write.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ChartFormat {
    /// PNG only.
    Png,
    /// SVG only.
    Svg,
    /// Both.
    Both,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.data.is_none() && args.html.is_none() && args.charts.is_none() {
        bail!("nothing to write: give --data OUT.json, --html OUT.html and/or --charts DIR");
    }
    let runs = compare::load_all(&args.runs)?;
    if runs.len() > 1 {
        if args.data.is_some() || args.charts.is_some() {
            bail!("--data and --charts take one run; with several runs only --html (the comparison) applies");
        }
        let cmp = compare::compare(&runs);
        for f in &cmp.flags {
            eprintln!("warning: {f}");
        }
        if let Some(p) = &args.html {
            let page = html::comparison_report(&runs, &cmp)?;
            write_atomic(p, page.as_bytes())?;
            println!("wrote {}", p.display());
        }
        return Ok(());
    }
    let (_, run) = &runs[0];
    let d = VisualizationData::from_run(run);
    if let Some(p) = &args.data {
        write_atomic(p, d.to_json().as_bytes())?;
        println!("wrote {}", p.display());
    }
    if let Some(dir) = &args.charts {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for kind in charts::ChartKind::ALL {
            if matches!(args.format, ChartFormat::Png | ChartFormat::Both) {
                let p = dir.join(format!("{}.png", kind.name()));
                write_atomic(&p, &charts::render_png(kind, &d)?)?;
                println!("wrote {}", p.display());
            }
            if matches!(args.format, ChartFormat::Svg | ChartFormat::Both) {
                let p = dir.join(format!("{}.svg", kind.name()));
                write_atomic(&p, charts::render_svg(kind, &d)?.as_bytes())?;
                println!("wrote {}", p.display());
            }
        }
    }
    if let Some(p) = &args.html {
        html::write_run_report(run, p)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
