//! The `quantscope` command line: parse, call the library, print or write files.

mod cli;

use clap::{Parser, Subcommand};

/// Which quantization should I use for this model on this hardware, and what
/// does it cost in accuracy, speed and memory?
#[derive(Parser)]
#[command(name = "quantscope", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which quantization should I use? Every strategy on every available
    /// backend through a real forward pass: accuracy retention, speed,
    /// memory, per-layer sensitivity, a mixed-precision suggestion and a
    /// recommendation for a priority under limits.
    Analyze(cli::analyze::Args),
    /// List the compiled-in backends, whether each can run here, and its device.
    Devices(cli::devices::Args),
    /// The hardware profile: CPU, RAM, NVIDIA GPUs (NVML), wgpu adapters and
    /// their features, and which backends open here.
    Hardware(cli::hardware::Args),
    /// Quantize a transformer encoder (preset or Hugging Face folder) with one
    /// strategy, run inputs on a backend, and report time per input and
    /// fidelity to the unquantized model.
    Forward(cli::forward::Args),
    /// Time one format's matmul kernel on a backend against the device's
    /// measured bandwidth and FMA rate.
    Profile(cli::profile::Args),
    /// Quantize every 2-D float tensor of a safetensors file (or the built-in
    /// sample model) and report bits/weight, bytes and error per tensor.
    Quantize(cli::quantize::Args),
    /// Chart data, charts and the self-contained HTML report of a results
    /// file; with several files, the HTML comparison.
    Report(cli::report::Args),
    /// List, show and compare results files (one or many machines).
    Results(cli::results::Args),
    /// Quantize a vector to 2^bits levels with uniform, non-uniform (Lloyd-Max,
    /// exact DP) and outlier-aware (EasyQuant) approaches on every backend, and
    /// report error, latency and plots.
    Vector(cli::vector::Args),
}

fn main() -> std::process::ExitCode {
    // Temporary files are removed on SIGINT/SIGTERM/SIGHUP; a closed stdout
    // ends the output quietly (see src/atomic.rs and src/cli/guard.rs).
    if let Err(e) = quantscope::atomic::install_signal_cleanup() {
        eprintln!(
            "warning: no signal handler, an interrupted write may leave a temporary file: {e}"
        );
    }
    cli::guard::install_pipe_guard();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version: clap prints them and exits 0.
        Err(e) if !e.use_stderr() => e.exit(),
        // A bad flag: clap's message, with control characters in the values
        // the user typed escaped, and clap's status 2.
        Err(e) => {
            eprint!("{}", cli::guard::esc_keep_lines(&e.render().to_string()));
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Analyze(a) => cli::analyze::run(a),
        Command::Devices(a) => cli::devices::run(a),
        Command::Hardware(a) => cli::hardware::run(a),
        Command::Forward(a) => cli::forward::run(a),
        Command::Profile(a) => cli::profile::run(a),
        Command::Quantize(a) => cli::quantize::run(a),
        Command::Report(a) => cli::report::run(a),
        Command::Results(a) => cli::results::run(a),
        Command::Vector(a) => cli::vector::run(a),
    };
    let result = result.and_then(|()| {
        if cli::guard::stdout_failed() {
            anyhow::bail!("cannot write to standard output");
        }
        Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            // A bad flag value exits 2 in every command, like clap's own errors.
            std::process::ExitCode::from(if cli::guard::is_bad_flag(&e) { 2 } else { 1 })
        }
    }
}

/// The error and its causes, each said once (a cause already quoted in the
/// message above it is not repeated), control characters escaped.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    cli::guard::esc(&text)
}
