//! `quantscope hardware`: the hardware profile every analysis embeds.

use quantscope::hardware::HardwareProfile;

/// Flags of `hardware`.
#[derive(clap::Args)]
pub struct Args {
    /// Print the profile as JSON (the same object `analyze` embeds).
    #[arg(long)]
    json: bool,
}

fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let hw = HardwareProfile::detect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hw)?);
        return Ok(());
    }
    let c = &hw.cpu;
    println!(
        "host     {} ({})",
        hw.host.as_deref().unwrap_or("?"),
        hw.os.as_deref().unwrap_or("unknown OS")
    );
    println!(
        "cpu      {}: {} logical cores{}, kernel path {} ({})",
        c.model,
        c.logical_cores,
        c.physical_cores
            .map(|p| format!(" / {p} physical"))
            .unwrap_or_default(),
        c.simd_path,
        c.features.join(", ")
    );
    println!(
        "ram      {} total, {} available",
        gib(c.ram_total_bytes),
        gib(c.ram_available_bytes)
    );
    if hw.nvidia_gpus.is_empty() {
        println!(
            "nvidia   none ({})",
            hw.nvidia_unavailable
                .as_deref()
                .unwrap_or("NVML lists no GPU")
        );
    }
    for g in &hw.nvidia_gpus {
        println!(
            "nvidia   [{}] {}: {} total, {} free, compute capability {}, driver {}",
            g.index,
            g.name,
            g.memory_total_bytes.map(gib).unwrap_or_else(|| "?".into()),
            g.memory_free_bytes.map(gib).unwrap_or_else(|| "?".into()),
            g.compute_capability
                .map(|(a, b)| format!("{a}.{b}"))
                .unwrap_or_else(|| "?".into()),
            g.driver_version.as_deref().unwrap_or("?")
        );
    }
    if hw.wgpu_adapters.is_empty() {
        println!(
            "wgpu     none ({})",
            hw.wgpu_unavailable.as_deref().unwrap_or("no adapter")
        );
    }
    for a in &hw.wgpu_adapters {
        let mut f = Vec::new();
        for (on, name) in [
            (a.shader_f16, "shader-f16"),
            (a.subgroups, "subgroups"),
            (a.packed_int8_dot, "packed-int8-dot"),
            (a.timestamps, "timestamps"),
        ] {
            if on {
                f.push(name);
            }
        }
        println!(
            "wgpu     {} ({}, {}, {}): {}; max buffer {}, max storage binding {}, \
             workgroup memory {} KiB, {} invocations",
            a.name,
            a.api,
            a.device_type,
            a.driver,
            if f.is_empty() {
                "no optional features".to_string()
            } else {
                f.join(", ")
            },
            gib(a.max_buffer_size),
            gib(a.max_storage_buffer_binding_size),
            a.max_compute_workgroup_storage_size / 1024,
            a.max_compute_invocations_per_workgroup
        );
    }
    for b in &hw.backends {
        match (&b.device, &b.reason) {
            (Some(d), _) => println!("backend  {:<5} available: {}", b.backend, d.name),
            (None, Some(r)) => println!("backend  {:<5} {r}", b.backend),
            (None, None) => println!("backend  {:<5} unavailable", b.backend),
        }
    }
    Ok(())
}
