//! `quantscope devices`: backends, availability and device facts.

use quantscope::backend::{backends, BackendKind};
use serde_json::json;

use super::guard::outln;

/// Flags of `devices`.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for s in backends() {
        let compiled = s.kind.compiled();
        match &s.backend {
            Ok(b) => {
                let info = b.info();
                rows.push(json!({
                    "backend": s.kind.name(),
                    "compiled": compiled,
                    "available": true,
                    "device": info,
                }));
            }
            Err(e) => rows.push(json!({
                "backend": s.kind.name(),
                "compiled": compiled,
                "available": false,
                "reason": e.to_string(),
            })),
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for s in backends() {
        match s.backend {
            Ok(b) => {
                let i = b.info();
                let mem = i
                    .memory_total_bytes
                    .map(|m| format!("{:.1} GiB", m as f64 / (1u64 << 30) as f64))
                    .unwrap_or_else(|| "memory unknown".into());
                let cc = i
                    .compute_capability
                    .map(|(a, b)| format!(", compute capability {a}.{b}"))
                    .unwrap_or_default();
                outln!(
                    "{:<5} available   {} ({}; {}; {}{})",
                    s.kind.name(),
                    i.name,
                    i.device_type,
                    i.driver,
                    mem,
                    cc
                );
                if !i.features.is_empty() {
                    outln!("      features: {}", i.features.join(", "));
                }
            }
            Err(e) => {
                let state = if s.kind.compiled() {
                    "unavailable"
                } else {
                    "not built"
                };
                outln!("{:<5} {state} {e}", s.kind.name());
            }
        }
    }
    let _ = BackendKind::ALL;
    Ok(())
}
