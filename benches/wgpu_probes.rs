//! The wgpu device's two ceilings, measured: copy bandwidth
//! (`copy_buffer_to_buffer`) and FMA rate (`shaders/probe.wgsl`). Moved here
//! from tests/wgpu_backend.rs, which checks only their accounting (a rate
//! is a measurement, not a pass/fail fact). `cargo bench --bench
//! wgpu_probes`; `quantscope profile --backend wgpu` prints the same two
//! beside a kernel's time.

use quantscope::backend::wgpu::WgpuBackend;
use quantscope::backend::Backend;

fn main() {
    let b = match WgpuBackend::from_env() {
        Ok(b) => b,
        Err(e) => {
            println!("no wgpu adapter: {e}");
            return;
        }
    };
    println!("{} ({})", b.info().name, b.info().driver);
    for mib in [8usize, 256] {
        match b.measure_bandwidth(mib << 20) {
            Ok(bw) => println!(
                "copy {mib} MiB: {:.2} GB/s ({} bytes read + written, median {:.3} ms, {})",
                bw.bytes_per_s / 1e9,
                bw.bytes_moved,
                bw.seconds * 1e3,
                bw.method
            ),
            Err(e) => println!("copy {mib} MiB: {e}"),
        }
    }
    match b.measure_flops() {
        Ok(f) => println!("FMA rate: {:.1} GFLOP/s", f / 1e9),
        Err(e) => println!("FMA rate: {e}"),
    }
}
