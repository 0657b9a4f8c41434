//! `quantscope profile`: time one format's matmul kernel on one backend and
//! set it against the device's measured ceilings (copy bandwidth, FMA rate)
//! and, on CUDA, against cuBLAS's f16 GEMM at the same shape.

use std::sync::Arc;

use anyhow::{bail, Context};
use half::f16;
use quantscope::backend::KernelTiming;
use quantscope::backend::{self, Backend, BackendKind, Bandwidth, TimingSource};
use quantscope::format::{
    pack_lut4, pack_plain, pack_q4, pack_q8, FormatKind, GroupSize, Matrix, Outliers, Packed,
    QuantizedMatrix, NF4_CODEBOOK,
};
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::forward::CpuActivations;
use super::guard::{bad_flag, check_count, check_host_memory, esc, outln, product, show_bytes};

/// Flags of `profile`.
#[derive(clap::Args)]
pub struct Args {
    /// Backend to profile: cpu, wgpu or cuda.
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// Weight format: f32, f16, bf16, q8, q4 or lut4.
    #[arg(long, default_value = "q4")]
    format: String,
    /// Weight matrix shape ROWSxCOLS (output x input features), e.g. 4096x4096.
    #[arg(long, default_value = "4096x4096")]
    shape: String,
    /// Rows of X (1..=7 runs the GEMV kernel, 8 and more the GEMM kernel);
    /// a comma-separated list times each, e.g. `128,512` (one kernel row
    /// per batch, each against the same ceilings).
    #[arg(long, default_value = "1")]
    batch: String,
    /// Group size of q8/q4/lut4: a multiple of 32, or `row`.
    #[arg(long, default_value = "128")]
    group: String,
    /// Fraction of the weights added as sparse f16 outliers (CSR by row), as
    /// EasyQuant keeps them: 0.005 = 0.5 %. 0 (default): none.
    #[arg(long, default_value_t = 0.0)]
    outliers: f64,
    /// Timed runs after warm-up (the median is reported).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Bytes of the buffer copied to measure the device bandwidth, in MiB.
    #[arg(long, default_value_t = 256)]
    copy_mib: usize,
    /// CPU backend only: what the q8 / q4 / lut4 matmuls do with the
    /// activations (default int8). The int8-activation rows are measured
    /// against the int8 dot rate.
    #[arg(long, value_enum)]
    cpu_activations: Option<CpuActivations>,
    /// wgpu adapter: index or name substring (overrides QUANTSCOPE_WGPU_ADAPTER).
    #[arg(long)]
    adapter: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Opens the backend, honouring `--adapter` for wgpu and the activation
/// choice (`acts`, given exactly for the cpu backend) for the CPU.
fn open_backend(
    kind: BackendKind,
    adapter: Option<&str>,
    acts: Option<CpuActivations>,
) -> anyhow::Result<Arc<dyn Backend>> {
    match (kind, adapter, acts) {
        (BackendKind::Cpu, None, Some(a)) => Ok(Arc::new(
            backend::cpu::CpuBackend::with_gemv_activations(a.setting()),
        )),
        (_, None, _) => Ok(backend::open(kind)?),
        #[cfg(feature = "wgpu")]
        (BackendKind::Wgpu, Some(a), _) => {
            use quantscope::backend::wgpu::{WgpuBackend, WgpuOptions};
            let opts = WgpuOptions {
                adapter: Some(a.to_string()),
                ..WgpuOptions::from_env()
            };
            Ok(Arc::new(WgpuBackend::open(&opts)?))
        }
        (other, Some(_), _) => bail!("--adapter applies to the wgpu backend, not {other}"),
    }
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize)> {
    let shown = esc(s);
    let Some((r, c)) = s.split_once(['x', 'X']) else {
        bad_flag!("--shape '{shown}' is not ROWSxCOLS (e.g. 4096x4096)")
    };
    let Ok(r) = r.trim().parse::<usize>() else {
        bad_flag!("--shape '{shown}': rows '{}' is not a whole number", esc(r))
    };
    let Ok(c) = c.trim().parse::<usize>() else {
        bad_flag!(
            "--shape '{shown}': columns '{}' is not a whole number",
            esc(c)
        )
    };
    if r == 0 || c == 0 {
        bad_flag!("--shape '{shown}': rows and columns must be at least 1");
    }
    Ok((r, c))
}

/// Bounds of the count flags.
const MAX_RUNS: usize = 1_000_000;
const MAX_BATCH: usize = 1 << 20;
const MAX_COPY_MIB: usize = 1 << 20;

/// Checks every size the flags give against the machine before anything is
/// allocated: the host memory the run needs (f32 weights, the packed copy
/// and the backend's own, X and Y, the bandwidth probe) and, where the
/// device reports its memory, the device memory.
fn check_sizes(
    args: &Args,
    batch: usize,
    rows: usize,
    cols: usize,
    format: FormatKind,
    dev: &dyn Backend,
) -> anyhow::Result<()> {
    let (r, c, b) = (rows as u128, cols as u128, batch as u128);
    // A packed matrix is at most as large as its f32 form plus scales.
    let packed =
        product(&[r, c, format_bytes_per_weight_x2(format)]).map(|v| v / 2 + r * c / 8 + 64 * r);
    let io = product(&[b, r + c, 4 * 2]);
    let weights = product(&[r.min(PACK_ROWS as u128), c, 4]);
    let matmul = weights
        .zip(packed)
        .zip(io)
        .and_then(|((w, p), x)| w.checked_add(p.checked_mul(2)?)?.checked_add(x));
    check_host_memory(
        &format!("--shape {}x{} --batch {}", rows, cols, batch),
        matmul,
    )?;
    let copy = product(&[args.copy_mib as u128, 1 << 20, 2]);
    check_host_memory(&format!("--copy-mib {}", args.copy_mib), copy)?;
    if let (Some(total), Some(p), Some(x)) = (dev.info().memory_total_bytes, packed, io) {
        if dev.kind() != BackendKind::Cpu && p + x > total as u128 {
            bad_flag!(
                "--shape {rows}x{cols} --batch {}: the packed matrix, X and Y need {}; the device has {}",
                batch,
                show_bytes(p + x),
                show_bytes(total as u128)
            );
        }
    }
    Ok(())
}

/// Rows generated and packed at a time: the f32 form of the whole matrix
/// (16 times a q4 one) never exists on the host.
const PACK_ROWS: usize = 256;

/// The profiled matrix: uniform values in [-1, 1) drawn from `rng`, packed
/// in blocks of [`PACK_ROWS`] rows (the layouts are row-major, so the
/// blocks' parts concatenate into the whole matrix's, bit for bit what
/// packing it at once gives).
fn random_packed(
    rng: &mut rand_xoshiro::Xoshiro256PlusPlus,
    rows: usize,
    cols: usize,
    format: FormatKind,
    group: GroupSize,
) -> anyhow::Result<QuantizedMatrix> {
    let mut whole: Option<Packed> = None;
    for start in (0..rows).step_by(PACK_ROWS) {
        let n = PACK_ROWS.min(rows - start);
        let data = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = Matrix::from_vec(n, cols, data)?;
        let block = match format {
            FormatKind::Q8 => pack_q8(&w, group)?,
            FormatKind::Q4 => pack_q4(&w, group)?,
            FormatKind::Lut4 => pack_lut4(&w, group, NF4_CODEBOOK)?,
            plain => pack_plain(&w, plain)?,
        };
        let part = block.packed().clone();
        whole = Some(match (whole, part) {
            (None, p) => p,
            (Some(Packed::F32(mut a)), Packed::F32(b)) => {
                a.extend(b);
                Packed::F32(a)
            }
            (Some(Packed::F16(mut a)), Packed::F16(b)) => {
                a.extend(b);
                Packed::F16(a)
            }
            (Some(Packed::Bf16(mut a)), Packed::Bf16(b)) => {
                a.extend(b);
                Packed::Bf16(a)
            }
            (Some(Packed::Q8(mut a)), Packed::Q8(b)) => {
                a.codes.extend(b.codes);
                a.scales.extend(b.scales);
                Packed::Q8(a)
            }
            (Some(Packed::Q4(mut a)), Packed::Q4(b)) => {
                a.codes.extend(b.codes);
                a.scales.extend(b.scales);
                a.zeros.extend(b.zeros);
                Packed::Q4(a)
            }
            (Some(Packed::Lut4(mut a)), Packed::Lut4(b)) => {
                a.codes.extend(b.codes);
                a.scales.extend(b.scales);
                Packed::Lut4(a)
            }
            _ => bail!("internal error: packed blocks of different formats"),
        });
    }
    let packed = whole.context("no rows to pack")?;
    let group = if format.is_grouped() {
        group
    } else {
        GroupSize::Row
    };
    Ok(QuantizedMatrix::new(rows, cols, group, packed)?)
}

/// Bytes per weight of a format, times 2 (q4 and lut4 are half a byte).
fn format_bytes_per_weight_x2(f: FormatKind) -> u128 {
    match f {
        FormatKind::F32 => 8,
        FormatKind::F16 | FormatKind::Bf16 => 4,
        FormatKind::Q8 => 2,
        FormatKind::Q4 | FormatKind::Lut4 => 1,
    }
}

fn source_name(s: TimingSource) -> &'static str {
    match s {
        TimingSource::DeviceTimestamp => "device timestamps",
        TimingSource::CudaEvent => "CUDA events",
        TimingSource::WallClock => "wall clock",
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Ok(kind) = args.backend.parse::<BackendKind>() else {
        bad_flag!(
            "unknown --backend '{}' (expected cpu, wgpu or cuda)",
            esc(&args.backend)
        )
    };
    let format: FormatKind = match args.format.parse() {
        Ok(f) => f,
        Err(e) => bad_flag!("--format: {}", esc(&e.to_string())),
    };
    let group = super::quantize::parse_group(&args.group)?;
    let (rows, cols) = parse_shape(&args.shape)?;
    let batches = parse_batches(&args.batch)?;
    check_count("--runs", args.runs, 1, MAX_RUNS, "timed runs")?;
    check_count("--copy-mib", args.copy_mib, 1, MAX_COPY_MIB, "MiB copied")?;
    if !(0.0..=1.0).contains(&args.outliers) {
        bail!("--outliers {} is not a fraction in [0, 1]", args.outliers);
    }
    let acts = match (kind, args.cpu_activations) {
        (BackendKind::Cpu, a) => Some(a.unwrap_or(CpuActivations::Int8)),
        (_, None) => None,
        (other, Some(_)) => bad_flag!("--cpu-activations applies to the cpu backend, not {other}"),
    };
    let dev = open_backend(kind, args.adapter.as_deref(), acts)?;
    let largest = batches.iter().copied().max().unwrap_or(1);
    check_sizes(&args, largest, rows, cols, format, dev.as_ref())?;

    // A random matrix packed in the chosen format, and its exact byte size.
    // The generator continues after the matrix (for anything drawn later).
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
    let m = random_packed(&mut rng, rows, cols, format, group)?;
    let m = if args.outliers > 0.0 {
        m.with_outliers(random_outliers(&mut rng, rows, cols, args.outliers))?
    } else {
        m
    };
    let h = dev.upload(&m)?;
    let mut rows_out = Vec::with_capacity(batches.len());
    for &batch in &batches {
        let timing = dev.time_matmul(&h, batch, args.runs)?;
        rows_out.push(KernelRow {
            batch,
            seconds: timing.median_s(),
            source: timing.source,
            bytes: m.storage_bytes().total() + 4 * batch * (rows + cols),
            flops: 2.0 * (batch * rows * cols) as f64,
            int8: acts
                .is_some_and(|a| backend::cpu::uses_int8_activations(a.setting(), m.kind(), batch)),
        });
    }
    let bw: Option<Bandwidth> = match dev.measure_bandwidth(args.copy_mib << 20) {
        Ok(b) => {
            // Backends keep the probe where it measures DRAM honestly (the
            // CPU reads at least 1 GiB; wgpu at most 2 GiB): say so.
            let asked = (args.copy_mib as u64) << 20;
            if b.bytes_moved != asked && b.bytes_moved != 2 * asked {
                eprintln!(
                    "note: --copy-mib {} asked for {asked} bytes; the {} backend moved {} bytes ({})",
                    args.copy_mib,
                    dev.kind(),
                    b.bytes_moved,
                    b.method
                );
            }
            Some(b)
        }
        Err(e) => {
            eprintln!("note: bandwidth not measured: {e}");
            None
        }
    };
    let peak_flops = match dev.measure_flops() {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("note: FMA rate not measured: {e}");
            None
        }
    };
    let peak_int8 = if rows_out.iter().any(|r| r.int8) {
        backend::cpu::bandwidth::measure_int8_dot_rate()
    } else {
        None
    };
    dev.free(h)?;
    let cublas: Vec<Option<KernelTiming>> = batches
        .iter()
        .map(|&b| cublas_reference(kind, rows, cols, b, args.runs))
        .collect();
    report(
        &args,
        acts,
        dev.as_ref(),
        &m.label(),
        &rows_out,
        bw,
        Peaks {
            fma: peak_flops,
            int8: peak_int8,
        },
        &cublas,
    )
}

/// The compute ceilings a row's `%flops` is taken against.
#[derive(Clone, Copy)]
struct Peaks {
    /// f32 FMA rate (FLOP/s).
    fma: Option<f64>,
    /// int8 dot-product rate (OP/s), CPU with AVX-512 VNNI only.
    int8: Option<f64>,
}

impl Peaks {
    /// The ceiling of `r` and its name: the int8 dot rate for an
    /// int8-activation kernel where it was measured (elsewhere those
    /// kernels run in f32 and the FMA rate applies), else the FMA rate.
    fn of(&self, r: &KernelRow) -> (Option<f64>, &'static str) {
        match (r.int8, self.int8) {
            (true, Some(p)) => (Some(p), "int8_dot"),
            _ => (self.fma, "fma"),
        }
    }
}

/// `--batch`: one count or a comma-separated list, each in `1..=MAX_BATCH`.
fn parse_batches(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let Ok(b) = part.trim().parse::<usize>() else {
            bad_flag!(
                "--batch '{}' is not a whole number or a comma-separated list of them",
                esc(s)
            )
        };
        check_count("--batch", b, 1, MAX_BATCH, "rows of X")?;
        out.push(b);
    }
    Ok(out)
}

/// One timed batch size.
struct KernelRow {
    batch: usize,
    seconds: f64,
    source: TimingSource,
    /// Packed matrix + X + Y.
    bytes: usize,
    flops: f64,
    /// The kernel multiplies int8-rounded activations with integer dot
    /// products (CPU): its compute ceiling is the int8 dot rate.
    int8: bool,
}

/// `density · cols` distinct random columns per row (at least one), values
/// in ±[0.5, 4): the sparse part of an outlier-aware format.
fn random_outliers(
    rng: &mut rand_xoshiro::Xoshiro256PlusPlus,
    rows: usize,
    cols: usize,
    density: f64,
) -> Outliers {
    let per_row = ((density * cols as f64).round() as usize).clamp(1, cols);
    let rows: Vec<Vec<(u32, f16)>> = (0..rows)
        .map(|_| {
            let mut picked: Vec<u32> = rand::seq::index::sample(rng, cols, per_row)
                .into_iter()
                .map(|c| c as u32)
                .collect();
            picked.sort_unstable();
            picked
                .into_iter()
                .map(|c| {
                    let v: f32 = rng.random_range(0.5..4.0);
                    let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                    (c, f16::from_f32(sign * v))
                })
                .collect()
        })
        .collect();
    Outliers::from_rows(&rows)
}

/// cuBLAS's f16 GEMM at the same shape when profiling CUDA: the speed of an
/// unquantized layer from the vendor library. `None` on other backends;
/// a failure is one note on stderr (the kernel's own figures still print).
fn cublas_reference(
    kind: BackendKind,
    rows: usize,
    cols: usize,
    batch: usize,
    runs: usize,
) -> Option<KernelTiming> {
    if kind != BackendKind::Cuda {
        return None;
    }
    match time_cublas(rows, cols, batch, runs) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("note: cuBLAS f16 GEMM not timed: {e}");
            None
        }
    }
}

#[cfg(feature = "cuda")]
fn time_cublas(
    rows: usize,
    cols: usize,
    batch: usize,
    runs: usize,
) -> Result<KernelTiming, quantscope::backend::BackendError> {
    // A second handle on the same primary context: cuBLAS is an inherent
    // method of the CUDA backend, not a `Backend` verb.
    quantscope::backend::cuda::CudaBackend::from_env()?
        .time_cublas_f16_gemm(rows, cols, batch, runs)
}

#[cfg(not(feature = "cuda"))]
fn time_cublas(
    _rows: usize,
    _cols: usize,
    _batch: usize,
    _runs: usize,
) -> Result<KernelTiming, String> {
    Err("this build has no cuda feature".into())
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    acts: Option<CpuActivations>,
    dev: &dyn Backend,
    label: &str,
    rows: &[KernelRow],
    bw: Option<Bandwidth>,
    peaks: Peaks,
    cublas: &[Option<KernelTiming>],
) -> anyhow::Result<()> {
    let peak_flops = peaks.fma;
    let kernel = |batch: usize| {
        format!(
            "{}_{}",
            if batch < 8 { "gemv" } else { "gemm" },
            args.format.to_ascii_lowercase()
        )
    };
    let info = dev.info();
    let cublas_s: Vec<Option<f64>> = cublas
        .iter()
        .map(|c| c.as_ref().map(KernelTiming::median_s))
        .collect();
    if args.json {
        let kernels: Vec<_> = rows
            .iter()
            .zip(&cublas_s)
            .map(|(r, c)| {
                json!({
                    "kernel": kernel(r.batch),
                    "matrix": label,
                    "shape": [r.batch, args.shape],
                    "median_s": r.seconds,
                    "runs": args.runs,
                    "timing": source_name(r.source),
                    "int8_activations": r.int8,
                    "bytes": r.bytes,
                    "gb_per_s": r.bytes as f64 / r.seconds / 1e9,
                    "gflop_per_s": r.flops / r.seconds / 1e9,
                    "fraction_of_bandwidth": bw.map(|b| r.bytes as f64 / r.seconds / b.bytes_per_s),
                    "fraction_of_flops": peaks.of(r).0.map(|p| r.flops / r.seconds / p),
                    "compute_ceiling": peaks.of(r).1,
                    "cublas_f16_gemm": c.map(|c| json!({
                        "median_s": c,
                        "speedup_of_kernel": c / r.seconds,
                        "timing": "CUDA events",
                    })),
                })
            })
            .collect();
        // The first batch's cuBLAS figure also at the top level, where
        // readers of a single-batch report look for it.
        let first = cublas_s.first().copied().flatten().zip(rows.first());
        let out = json!({
            "backend": dev.kind().name(),
            "device": info.name,
            "cpu_activations": acts.map(CpuActivations::name),
            "kernels": kernels,
            "bandwidth": bw.map(|b| json!({
                "gb_per_s": b.bytes_per_s / 1e9,
                "bytes_moved": b.bytes_moved,
                "method": b.method,
                "timing": source_name(b.source),
            })),
            "fma_gflop_per_s": peak_flops.map(|p| p / 1e9),
            "int8_dot_gop_per_s": peaks.int8.map(|p| p / 1e9),
            "cublas_f16_gemm": first.map(|(c, r)| json!({
                "median_s": c,
                "speedup_of_kernel": c / r.seconds,
                "timing": "CUDA events",
            })),
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match acts {
        Some(a) => outln!(
            "{} on {} ({}, {} activations)",
            label,
            info.name,
            dev.kind(),
            a.name()
        ),
        None => outln!("{} on {} ({})", label, info.name, dev.kind()),
    }
    outln!(
        "{:<10} {:>6} {:>12} {:>10} {:>11} {:>8} {:>8}  timing",
        "kernel",
        "batch",
        "median",
        "GB/s",
        "GFLOP/s",
        "%bw",
        "%flops"
    );
    let pct = |f: Option<f64>| f.map_or("-".to_string(), |f| format!("{:.1}", 100.0 * f));
    for r in rows {
        let bw_frac = bw.map(|b| r.bytes as f64 / r.seconds / b.bytes_per_s);
        let flops_frac = peaks.of(r).0.map(|p| r.flops / r.seconds / p);
        outln!(
            "{:<10} {:>6} {:>9.3} ms {:>10.2} {:>11.2} {:>8} {:>8}  {}",
            kernel(r.batch),
            r.batch,
            r.seconds * 1e3,
            r.bytes as f64 / r.seconds / 1e9,
            r.flops / r.seconds / 1e9,
            pct(bw_frac),
            pct(flops_frac),
            source_name(r.source)
        );
    }
    outln!(
        "x {}, bytes moved per run = packed matrix + X + Y, median of {} runs",
        args.shape,
        args.runs
    );
    match bw {
        Some(b) => outln!(
            "device bandwidth: {:.2} GB/s ({}, {} bytes read + written)",
            b.bytes_per_s / 1e9,
            b.method,
            b.bytes_moved
        ),
        None => outln!("device bandwidth: not measured"),
    }
    match peak_flops {
        Some(p) => outln!("device FMA rate: {:.2} GFLOP/s (fma-only kernel)", p / 1e9),
        None => outln!("device FMA rate: not measured on this backend"),
    }
    if let Some(p) = peaks.int8 {
        outln!(
            "device int8 dot rate: {:.2} GOP/s (vpdpbusd-only kernel; the %flops ceiling of \
             the int8-activation rows: {})",
            p / 1e9,
            rows.iter()
                .filter(|r| r.int8)
                .map(|r| format!("{} batch {}", kernel(r.batch), r.batch))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (r, c) in rows.iter().zip(&cublas_s) {
        if let Some(c) = c {
            println!(
                "cuBLAS f16 GEMM, batch {}: {:.3} ms ({:.2}x the kernel's time; > 1 = kernel faster)",
                r.batch,
                c * 1e3,
                c / r.seconds
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_in_blocks_is_packing_at_once() {
        // 600 rows: two full blocks and a short one; 70 columns: short groups.
        let (rows, cols) = (2 * PACK_ROWS + 88, 70);
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
        let data = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let w = Matrix::from_vec(rows, cols, data).unwrap();
        let g = GroupSize::Cols(32);
        for format in FormatKind::ALL {
            let at_once = match format {
                FormatKind::Q8 => pack_q8(&w, g),
                FormatKind::Q4 => pack_q4(&w, g),
                FormatKind::Lut4 => pack_lut4(&w, g, NF4_CODEBOOK),
                plain => pack_plain(&w, plain),
            }
            .unwrap();
            let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
            let blocks = random_packed(&mut rng, rows, cols, format, g).unwrap();
            assert_eq!(blocks, at_once, "{format}");
        }
    }
}
