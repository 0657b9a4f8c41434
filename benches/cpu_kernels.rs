//! CPU kernel benches: GEMV (batch 1) and GEMM (batch 32; batch 512 for the
//! issue's 4096x14336 targets) for f32, f16, q8, q4 and lut4.
//!
//! Each bench rotates among enough matrices that the working set is at least
//! 4x the last-level cache, so GEMV figures are DRAM figures. Next to
//! criterion's output every case prints its median time, GB/s of weight bytes
//! read (or GFLOP/s) and the fraction of this machine's measured floor, and a
//! Markdown table is printed at the end (the source of `docs/PERFORMANCE.md`).
//!
//! `QUANTSCOPE_BENCH_FULL=0` skips the batch-512 GEMMs (about a minute);
//! `QUANTSCOPE_BENCH_ONLY=<text>` runs only the cases whose name contains it
//! (e.g. `gemv q4`); `QUANTSCOPE_BENCH_HOT=1` times one cache-resident
//! 512x14336 matrix (L3) instead (the kernels' compute rate;
//! `QUANTSCOPE_BENCH_HOT_SHAPE=64x4096` picks another shape, e.g. one that
//! fits L2). The outlier overhead is measured last, from
//! `QUANTSCOPE_BENCH_PAIRS` (default 200) paired runs. `q8+a8` is a W8A8
//! matrix (q8 with an activation scale, marked for int8 activations: what
//! the w8a8 strategy stores); its GEMM is measured against the int8
//! dot-product probe where the CPU has one (GOP/s), the FMA probe
//! otherwise.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use half::{bf16, f16};
use quantscope::backend::cpu::bandwidth::{
    llc_bytes, measure_fma_rate, measure_int8_dot_rate, probe_bytes, Floor, ReadProbe,
};
use quantscope::backend::cpu::{matmul_into, matmul_outliers_into, KernelPath};
use quantscope::format::{
    FormatKind, GroupSize, Lut4, Outliers, Packed, QuantizedMatrix, NF4_CODEBOOK, Q4, Q8,
};

/// A fast deterministic generator (random matrices of hundreds of MB).
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A random packed matrix built directly from random codes (no quantizer run).
/// With `outlier_frac > 0`, that share of the weights (spread uniformly, at
/// least one per row) also get a sparse f16 outlier.
fn random_matrix(
    kind: FormatKind,
    rows: usize,
    cols: usize,
    seed: u64,
    outlier_frac: f64,
) -> QuantizedMatrix {
    let mut g = SplitMix(seed);
    let group = GroupSize::Cols(32);
    let stride = kind.row_stride_bytes(cols);
    let groups = rows * group.groups_per_row(cols);
    let scales = |g: &mut SplitMix| -> Vec<f16> {
        (0..groups)
            .map(|_| f16::from_f32(0.01 + 0.01 * g.unit().abs()))
            .collect()
    };
    let packed = match kind {
        FormatKind::F32 => Packed::F32((0..rows * stride / 4).map(|_| g.unit()).collect()),
        FormatKind::F16 => Packed::F16(
            (0..rows * stride / 2)
                .map(|_| f16::from_f32(g.unit()))
                .collect(),
        ),
        FormatKind::Bf16 => Packed::Bf16(
            (0..rows * stride / 2)
                .map(|_| bf16::from_f32(g.unit()))
                .collect(),
        ),
        FormatKind::Q8 => Packed::Q8(Q8 {
            codes: (0..rows * stride)
                .map(|_| (g.next() % 255) as i16 as i8)
                .map(|c| c.max(-127))
                .collect(),
            scales: scales(&mut g),
        }),
        FormatKind::Q4 => Packed::Q4(Q4 {
            codes: (0..rows * stride / 4).map(|_| g.next() as u32).collect(),
            zeros: (0..groups).map(|_| (g.next() % 16) as u8).collect(),
            scales: scales(&mut g),
        }),
        FormatKind::Lut4 => Packed::Lut4(Lut4 {
            codes: (0..rows * stride / 4).map(|_| g.next() as u32).collect(),
            codebook: NF4_CODEBOOK,
            scales: scales(&mut g),
        }),
    };
    let group = if kind.is_grouped() {
        group
    } else {
        GroupSize::Row
    };
    let m = match QuantizedMatrix::new(rows, cols, group, packed) {
        Ok(m) => m,
        Err(e) => panic!("bench matrix: {e}"),
    };
    if outlier_frac <= 0.0 {
        return m;
    }
    let per_row = ((cols as f64 * outlier_frac).round() as usize).clamp(1, cols);
    let gap = cols / per_row;
    let lists: Vec<Vec<(u32, f16)>> = (0..rows)
        .map(|_| {
            (0..per_row)
                .map(|i| {
                    let c = i * gap + (g.next() as usize % gap);
                    (c as u32, f16::from_f32(4.0 * g.unit()))
                })
                .collect()
        })
        .collect();
    match m.with_outliers(Outliers::from_rows(&lists)) {
        Ok(m) => m,
        Err(e) => panic!("bench matrix outliers: {e}"),
    }
}

/// One printed result.
struct Row {
    case: String,
    median_s: f64,
    rate: String,
    fraction: f64,
    floor: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// What a case adds to the dense format.
#[derive(Clone, Copy, PartialEq)]
enum Extra {
    None,
    /// This share of the weights as sparse f16 outliers.
    Outliers(f64),
    /// W8A8 (q8 only): an activation scale and int8 activations.
    W8A8,
}

/// The case's matrix number `seed`.
fn case_matrix(
    kind: FormatKind,
    rows: usize,
    cols: usize,
    seed: u64,
    extra: Extra,
) -> QuantizedMatrix {
    match extra {
        Extra::None => random_matrix(kind, rows, cols, seed, 0.0),
        Extra::Outliers(f) => random_matrix(kind, rows, cols, seed, f),
        Extra::W8A8 => {
            let mut g = SplitMix(seed ^ 0xA8);
            random_matrix(FormatKind::Q8, rows, cols, seed, 0.0)
                .with_act_scale((0..cols).map(|_| 1.25 + 0.75 * g.unit()).collect())
                .and_then(|m| m.with_int8_activations())
                .expect("a W8A8 matrix")
        }
    }
}

fn bench_case(
    c: &mut Criterion,
    probe_buf: &ReadProbe,
    results: &mut Vec<Row>,
    kind: FormatKind,
    (rows, cols): (usize, usize),
    batch: usize,
    extra: Extra,
) {
    let label = match extra {
        Extra::Outliers(f) => format!("{kind}+{}% outliers", f * 100.0),
        Extra::W8A8 => format!("{kind}+a8"),
        Extra::None => kind.to_string(),
    };
    let case = if batch == 1 {
        format!("gemv {label} {rows}x{cols}")
    } else {
        format!("gemm {label} {rows}x{cols} b{batch}")
    };
    if let Ok(only) = std::env::var("QUANTSCOPE_BENCH_ONLY") {
        if !case.contains(only.as_str()) {
            return;
        }
    }
    let probe = case_matrix(kind, rows, cols, 1, extra);
    let bytes = probe.storage_bytes().total();
    // Working set >= 4x LLC (GEMM reuses the weights, so two are enough there).
    let llc = llc_bytes().unwrap_or(32 << 20);
    let count = if hot() {
        1
    } else if batch == 1 {
        (4 * llc).div_ceil(bytes).max(2)
    } else {
        2
    };
    let mut mats = vec![probe];
    mats.extend((1..count).map(|i| case_matrix(kind, rows, cols, 1 + i as u64, extra)));
    let mut g = SplitMix(99);
    let x: Vec<f32> = (0..batch * cols).map(|_| g.unit()).collect();
    let mut y = vec![0.0f32; batch * rows];
    let flops = 2.0 * (batch * rows * cols) as f64;
    let times = RefCell::new(Vec::new());
    let mut group = c.benchmark_group(if batch == 1 { "gemv" } else { "gemm" });
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(if batch >= 512 { 500 } else { 1500 }))
        .sampling_mode(SamplingMode::Flat);
    if batch == 1 {
        group.throughput(Throughput::Bytes(bytes as u64));
    } else {
        group.throughput(Throughput::Elements(flops as u64));
    }
    let mut next = 0usize;
    group.bench_function(&case, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let m = &mats[next % mats.len()];
                next += 1;
                let t = Instant::now();
                if let Err(e) = matmul_into(m, &x, batch, &mut y) {
                    panic!("{case}: {e}");
                }
                let dt = t.elapsed();
                times.borrow_mut().push(dt.as_secs_f64());
                total += dt;
            }
            total
        })
    });
    group.finish();
    let med = median(times.into_inner());
    // The floor right after the case: on a shared machine it moves. A W8A8
    // GEMM is bound by the integer dot products where they exist.
    let int8 = (batch > 1 && extra == Extra::W8A8)
        .then(measure_int8_dot_rate)
        .flatten();
    let (unit, probe_name) = if int8.is_some() {
        ("GOP/s", "int8 dot")
    } else {
        ("GFLOP/s", "FMA")
    };
    let floor = if batch == 1 {
        Floor {
            read_bytes_per_s: probe_buf.measure(5).bytes_per_s,
            flops: f64::NAN,
        }
    } else {
        Floor {
            read_bytes_per_s: f64::NAN,
            flops: int8.unwrap_or_else(measure_fma_rate),
        }
    };
    let row = if batch == 1 {
        Row {
            case,
            median_s: med,
            rate: format!("{:.1} GB/s", bytes as f64 / med / 1e9),
            fraction: floor.bandwidth_fraction(bytes as f64, med),
            floor: format!("read {:.1} GB/s", floor.read_bytes_per_s / 1e9),
        }
    } else {
        Row {
            case,
            median_s: med,
            rate: format!("{:.1} {unit}", flops / med / 1e9),
            fraction: floor.compute_fraction(flops, med),
            floor: format!("{probe_name} {:.0} {unit}", floor.flops / 1e9),
        }
    };
    println!(
        "{}: median {:.3} ms, {}, {:.2} of floor ({})",
        row.case,
        row.median_s * 1e3,
        row.rate,
        row.fraction,
        row.floor
    );
    results.push(row);
}

/// `QUANTSCOPE_BENCH_HOT=1`: one 512x14336 matrix (no rotation), so
/// GEMV runs from L3 and shows the kernels' compute rate (with
/// `RAYON_NUM_THREADS=1`, per core).
fn hot() -> bool {
    std::env::var("QUANTSCOPE_BENCH_HOT").is_ok_and(|v| v == "1")
}

fn cpu_kernels(c: &mut Criterion) {
    let probe_buf = ReadProbe::new(probe_bytes());
    let floor = Floor {
        read_bytes_per_s: probe_buf.measure(7).bytes_per_s,
        flops: measure_fma_rate(),
    };
    println!(
        "kernel path {}, {} threads; floor: read {:.1} GB/s, FMA {:.1} GFLOP/s",
        KernelPath::selected(),
        rayon::current_num_threads(),
        floor.read_bytes_per_s / 1e9,
        floor.flops / 1e9
    );
    let kinds = [
        FormatKind::F32,
        FormatKind::F16,
        FormatKind::Q8,
        FormatKind::Q4,
        FormatKind::Lut4,
    ];
    let mut results = Vec::new();
    let hot_shape = std::env::var("QUANTSCOPE_BENCH_HOT_SHAPE")
        .ok()
        .and_then(|v| {
            let (r, c) = v.trim().split_once('x')?;
            Some((r.parse::<usize>().ok()?, c.parse::<usize>().ok()?))
        })
        .filter(|&(r, c)| r > 0 && c > 0)
        .unwrap_or((512, 14336));
    let hot_shapes = [hot_shape];
    let shapes: &[(usize, usize)] = if hot() {
        &hot_shapes
    } else {
        &[(4096, 4096), (4096, 14336)]
    };
    for &shape in shapes {
        // EasyQuant-style outliers (0.5 % of the weights, CSR f16): the
        // sparse pass should cost no more than their share of the bytes.
        // And the W8A8 matrix w8a8 stores.
        let extras = [
            (FormatKind::Q4, Extra::Outliers(0.005)),
            (FormatKind::Q8, Extra::W8A8),
        ];
        for batch in [1, 32] {
            for kind in kinds {
                bench_case(c, &probe_buf, &mut results, kind, shape, batch, Extra::None);
            }
            for (kind, extra) in extras {
                bench_case(c, &probe_buf, &mut results, kind, shape, batch, extra);
            }
        }
    }
    if std::env::var("QUANTSCOPE_BENCH_FULL").map_or(true, |v| v != "0") {
        for kind in [FormatKind::F32, FormatKind::Q8, FormatKind::Q4] {
            bench_case(
                c,
                &probe_buf,
                &mut results,
                kind,
                (4096, 14336),
                512,
                Extra::None,
            );
        }
        bench_case(
            c,
            &probe_buf,
            &mut results,
            FormatKind::Q8,
            (4096, 14336),
            512,
            Extra::W8A8,
        );
    }
    println!();
    println!("| case | median | rate | floor measured right after | fraction of floor |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &results {
        println!(
            "| {} | {:.3} ms | {} | {} | {:.2} |",
            r.case,
            r.median_s * 1e3,
            r.rate,
            r.floor,
            r.fraction
        );
    }
    // What the outliers cost next to their share of the bytes: paired runs
    // (the same matrices with and without outliers, alternately), because
    // two separate cases a second apart differ by more than the effect.
    let only = std::env::var("QUANTSCOPE_BENCH_ONLY").unwrap_or_default();
    for &shape in shapes {
        let case = format!("gemv q4+0.5% outliers {}x{}", shape.0, shape.1);
        if case.contains(only.as_str()) {
            outlier_overhead(shape, 0.005);
        }
    }
}

/// Times `pairs` alternating GEMVs of q4 matrices without and with
/// `frac` outliers (the same dense parts, rotated through 4x the LLC) and
/// prints the median of the paired time ratios next to the bytes ratio.
fn outlier_overhead((rows, cols): (usize, usize), frac: f64) {
    let llc = llc_bytes().unwrap_or(32 << 20);
    let probe = random_matrix(FormatKind::Q4, rows, cols, 1, frac);
    let count = if hot() {
        1
    } else {
        (4 * llc).div_ceil(probe.storage_bytes().total()).max(2)
    };
    let with: Vec<QuantizedMatrix> = (0..count)
        .map(|i| random_matrix(FormatKind::Q4, rows, cols, 1 + i as u64, frac))
        .collect();
    let without: Vec<QuantizedMatrix> = (0..count)
        .map(|i| random_matrix(FormatKind::Q4, rows, cols, 1 + i as u64, 0.0))
        .collect();
    let mut g = SplitMix(7);
    let x: Vec<f32> = (0..cols).map(|_| g.unit()).collect();
    let mut y = vec![0.0f32; rows];
    let path = KernelPath::selected();
    let mut run = |m: &QuantizedMatrix, sparse_only: bool| -> f64 {
        let t = Instant::now();
        let r = if sparse_only {
            matmul_outliers_into(path, m, &x, 1, &mut y)
        } else {
            matmul_into(m, &x, 1, &mut y)
        };
        if let Err(e) = r {
            panic!("outlier overhead: {e}");
        }
        t.elapsed().as_secs_f64()
    };
    // `QUANTSCOPE_BENCH_PAIRS` (default 200): the median moves by a few
    // points between rounds of 60 on a shared machine.
    let pairs = std::env::var("QUANTSCOPE_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 4)
        .unwrap_or(200);
    let mut ratios = Vec::with_capacity(pairs);
    // The sparse pass alone (its own parallel pass over the rows) against
    // the dense GEMV it was paired with: what the outliers cost when
    // nothing overlaps them.
    let mut alone = Vec::with_capacity(pairs);
    for i in 0..pairs + 4 {
        let k = i % count;
        // Alternate which one goes first so neither always follows the other.
        let (a, b) = if i % 2 == 0 {
            (run(&without[k], false), run(&with[k], false))
        } else {
            let b = run(&with[k], false);
            (run(&without[k], false), b)
        };
        let s = run(&with[(k + 1) % count], true);
        if i >= 4 {
            ratios.push(b / a);
            alone.push((s / a, s));
        }
    }
    let nnz = with[0].outliers().map_or(0, |o| o.nnz()) as f64;
    let sparse_frac = median(alone.iter().map(|p| p.0).collect());
    let sparse_s = median(alone.iter().map(|p| p.1).collect());
    let bytes_with = with[0].storage_bytes().total() as f64;
    let bytes_without = without[0].storage_bytes().total() as f64;
    ratios.sort_by(f64::total_cmp);
    let mid = 100.0 * (median(ratios.clone()) - 1.0);
    let quartile = |q: usize| 100.0 * (ratios[(ratios.len() - 1) * q / 4] - 1.0);
    println!(
        "gemv q4 {rows}x{cols} with {:.1} % outliers: {:+.1} % time (median of {pairs} paired runs; quartiles {:+.1} / {:+.1} %) for {:+.1} % bytes",
        frac * 100.0,
        mid,
        quartile(1),
        quartile(3),
        100.0 * (bytes_with / bytes_without - 1.0),
    );
    println!(
        "  the sparse part alone: {:.1} % of the dense GEMV's time ({:.0} us, {:.2} ns per outlier on {} threads)",
        100.0 * sparse_frac,
        sparse_s * 1e6,
        sparse_s * 1e9 / nnz,
        rayon::current_num_threads(),
    );
    // The sparse part alone at batch 32 (a GEMM's outlier pass).
    let batch = 32;
    let xb: Vec<f32> = (0..batch * cols).map(|_| g.unit()).collect();
    let mut yb = vec![0.0f32; batch * rows];
    let times: Vec<f64> = (0..24)
        .map(|i| {
            let t = Instant::now();
            if let Err(e) = matmul_outliers_into(path, &with[i % count], &xb, batch, &mut yb) {
                panic!("outlier overhead: {e}");
            }
            t.elapsed().as_secs_f64()
        })
        .skip(4)
        .collect();
    let t = median(times);
    println!(
        "  the sparse part alone at batch {batch}: {:.2} ms, {:.3} ns per outlier and batch row",
        t * 1e3,
        t * 1e9 / (nnz * batch as f64),
    );
}

criterion_group!(benches, cpu_kernels);
criterion_main!(benches);
