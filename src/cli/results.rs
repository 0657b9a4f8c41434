//! `quantscope results list|show|compare`: the results files of one or many
//! machines, listed, shown, and compared side by side with deltas.

use std::path::PathBuf;

use anyhow::bail;
use quantscope::io::write_atomic;
use quantscope::report::compare;

/// Flags of `results`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// One line per results file: run, model, host, results.
    List {
        /// Results files or folders.
        paths: Vec<PathBuf>,
        /// A folder of results files.
        #[arg(long)]
        results_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One run: header, recommendation, results.
    Show {
        /// A results file.
        path: PathBuf,
        /// Print the document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs side by side on the same strategy/backend rows, with deltas
    /// against the first.
    Compare {
        /// Results files or folders (at least two runs in all).
        paths: Vec<PathBuf>,
        /// A folder of results files.
        #[arg(long)]
        results_dir: Option<PathBuf>,
        /// Write the merged table as CSV to this file (`-`: standard output).
        #[arg(long, value_name = "OUT.csv")]
        csv: Option<PathBuf>,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
        /// Write the HTML comparison report.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Sub::List {
            paths,
            results_dir,
            json,
        } => {
            let files = compare::collect_paths(results_dir.as_deref(), &paths)?;
            if files.is_empty() {
                bail!("no results files: give paths or --results-dir DIR");
            }
            let listed = compare::list(&files);
            if json {
                let v: Vec<serde_json::Value> = listed
                    .iter()
                    .map(|(p, h)| match h {
                        Ok(h) => serde_json::json!({"path": p, "run": h}),
                        Err(e) => serde_json::json!({"path": p, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for (p, h) in listed {
                match h {
                    Ok(h) => println!(
                        "{}  run {}  model {}  host {}  {} results",
                        p.display(),
                        h.run_id,
                        h.model,
                        h.host.as_deref().unwrap_or("?"),
                        h.results
                    ),
                    Err(e) => println!("{}  unreadable: {e}", p.display()),
                }
            }
        }
        Sub::Show { path, json } => {
            let runs = compare::load_all(std::slice::from_ref(&path))?;
            let (label, run) = &runs[0];
            if json {
                println!("{}", run.to_json()?);
            } else {
                print!("{}", compare::show_text(label, run));
            }
        }
        Sub::Compare {
            paths,
            results_dir,
            csv,
            json,
            html,
        } => {
            let files = compare::collect_paths(results_dir.as_deref(), &paths)?;
            let runs = compare::load_all(&files)?;
            if runs.len() < 2 {
                bail!("compare needs at least two runs, got {}", runs.len());
            }
            let cmp = compare::compare(&runs);
            if let Some(p) = &csv {
                if p.as_os_str() == "-" {
                    print!("{}", cmp.to_csv());
                } else {
                    write_atomic(p, cmp.to_csv().as_bytes())?;
                    eprintln!("wrote {}", p.display());
                }
            }
            if let Some(p) = &html {
                let page = quantscope::report::html::comparison_report(&runs, &cmp)?;
                write_atomic(p, page.as_bytes())?;
                eprintln!("wrote {}", p.display());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&cmp)?);
            } else if csv.as_ref().is_none_or(|p| p.as_os_str() != "-") {
                print!("{}", cmp.to_text());
            }
        }
    }
    Ok(())
}
