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
    /// List the compiled-in backends, whether each can run here, and its device.
    Devices(cli::devices::Args),
    /// The hardware profile: CPU, RAM, NVIDIA GPUs (NVML), wgpu adapters and
    /// their features, and which backends open here.
    Hardware(cli::hardware::Args),
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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices(a) => cli::devices::run(a),
        Command::Hardware(a) => cli::hardware::run(a),
        Command::Profile(a) => cli::profile::run(a),
        Command::Quantize(a) => cli::quantize::run(a),
        Command::Report(a) => cli::report::run(a),
        Command::Results(a) => cli::results::run(a),
        Command::Vector(a) => cli::vector::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
