//! Synthetic analysis runs for the report tests: six strategies x two
//! backends with seeded random (never round) figures, phase-labelled memory
//! timelines and per-layer sensitivity rows, built like the analyzer builds
//! them (efficiency, fronts and recommendation computed by the library).
#![allow(dead_code)]

use quantscope::analyze::efficiency;
use quantscope::analyze::schema::*;
use quantscope::analyze::{recommend, Constraints};
use quantscope::backend::{BackendKind, TimingSource};
use quantscope::hardware::*;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// (strategy, bits per weight, typical accuracy loss).
pub const STRATEGIES: [(&str, f64, f64); 6] = [
    ("none", 32.0, 0.0),
    ("int8", 8.5, 0.0004),
    ("int4", 4.25, 0.012),
    ("nf4", 4.25, 0.008),
    ("gptq-int4", 4.25, 0.005),
    ("awq-int4", 4.25, 0.006),
];

pub const PHASES: [&str; 6] = ["load", "quantize", "upload", "warm-up", "inference", "free"];

fn timeline(rng: &mut Xoshiro256PlusPlus, weights: u64, overhead: u64) -> MemoryTimeline {
    let mut t = 0.0;
    let mut samples = Vec::new();
    for (k, phase) in PHASES.iter().enumerate() {
        let n = rng.random_range(2..5);
        for i in 0..n {
            t += rng.random_range(0.01..0.2);
            let live = match k {
                0 | 1 => 0,
                2 => weights * (i as u64 + 1) / n as u64,
                3 | 4 => weights + (overhead as f64 * rng.random_range(0.3..1.0)) as u64,
                _ => weights / (i as u64 + 2),
            };
            samples.push(MemorySample {
                t_s: t,
                phase: phase.to_string(),
                backend_live_bytes: live,
                process_rss_bytes: 200_000_000 + live,
                device_used_bytes: None,
                reserved_bytes: None,
            });
        }
    }
    MemoryTimeline { samples }
}

pub fn result(
    rng: &mut Xoshiro256PlusPlus,
    (strategy, bits, loss): (&str, f64, f64),
    backend: BackendKind,
    f32_bytes: u64,
) -> StrategyResult {
    let acc = 1.0 - loss * rng.random_range(0.7..1.3) - rng.random_range(0.0..1e-6);
    let bytes = (f32_bytes as f64 * bits / 32.0 * rng.random_range(0.98..1.02)) as u64;
    let overhead = rng.random_range(3_000_000..9_000_000u64);
    let base_t = match backend {
        BackendKind::Cpu => 0.012,
        _ => 0.0031,
    };
    let t = base_t * (0.35 + bits / 32.0) * rng.random_range(0.85..1.15);
    StrategyResult {
        strategy: strategy.into(),
        backend,
        device: format!("{} device", backend.name()),
        format: if bits > 16.0 {
            "f32".into()
        } else {
            format!("q{} g128", bits.floor())
        },
        bits_per_weight: bits,
        accuracy: acc,
        retention: Retention {
            mean_cosine: acc,
            worst_cosine: acc - rng.random_range(0.0005..0.004),
            output_nmse: (1.0 - acc) * 2.1 + 1e-9,
            top10_agreement: Some(rng.random_range(0.8..1.0)),
            top1_agreement: None,
        },
        memory_bytes: bytes,
        memory: MemoryStats {
            weight_bytes: bytes,
            resident_after_upload_bytes: bytes,
            device_peak_bytes: bytes + overhead,
            inference_overhead_bytes: overhead,
            reserved_bytes: (backend == BackendKind::Wgpu).then_some(bytes + overhead * 2),
            fragmentation: (backend == BackendKind::Wgpu).then_some(0.17),
            process_rss_peak_bytes: 300_000_000,
            device_total_bytes: None,
        },
        inference_time_s: t,
        speed: SpeedStats {
            median_s_per_input: t,
            p10_s_per_input: t * 0.95,
            p90_s_per_input: t * 1.07,
            inputs_per_s: 1.0 / t,
            tokens_per_s: 128.0 / t,
            split: TimeSplit {
                linear_s: t * 0.7,
                attention_s: t * 0.2,
                other_s: t * 0.1,
            },
            timing_source: TimingSource::WallClock,
            runs: 7,
        },
        quantize_time_s: rng.random_range(0.1..3.0),
        efficiency: Efficiency::default(),
        timeline: timeline(rng, bytes, overhead),
        warnings: vec![],
        output_digest: String::new(),
    }
}

pub fn hardware(host: &str) -> HardwareProfile {
    HardwareProfile {
        host: Some(host.into()),
        os: Some("Debian GNU/Linux 12".into()),
        cpu: CpuProfile {
            model: "Test CPU 9000".into(),
            logical_cores: 2,
            physical_cores: Some(1),
            simd_path: "avx2".into(),
            features: vec!["avx2".into(), "fma".into()],
            ram_total_bytes: 8_000_000_000,
            ram_available_bytes: 6_000_000_000,
        },
        nvidia_gpus: vec![],
        nvidia_unavailable: Some("NVML not found".into()),
        wgpu_adapters: vec![],
        wgpu_unavailable: None,
        backends: vec![
            BackendAvailability {
                backend: BackendKind::Cpu,
                available: true,
                reason: None,
                device: Some(DeviceInfoRecord {
                    name: "Test CPU 9000".into(),
                    device_type: "cpu".into(),
                    driver: "rust".into(),
                    memory_total_bytes: Some(8_000_000_000),
                    compute_capability: None,
                    features: vec![],
                }),
            },
            BackendAvailability {
                backend: BackendKind::Wgpu,
                available: true,
                reason: None,
                device: Some(DeviceInfoRecord {
                    name: "llvmpipe".into(),
                    device_type: "cpu".into(),
                    driver: "vulkan".into(),
                    memory_total_bytes: None,
                    compute_capability: None,
                    features: vec![],
                }),
            },
            BackendAvailability {
                backend: BackendKind::Cuda,
                available: false,
                reason: Some("libcuda not found".into()),
                device: None,
            },
        ],
    }
}

/// A run with every strategy on cpu and wgpu, from `seed`.
pub fn rich_run(seed: u64, host: &str) -> AnalysisRun {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let f32_bytes = 90_000_000;
    let mut rs = Vec::new();
    for b in [BackendKind::Cpu, BackendKind::Wgpu] {
        for s in STRATEGIES {
            rs.push(result(&mut rng, s, b, f32_bytes));
        }
    }
    efficiency::compute(&mut rs, f32_bytes);
    let rec = recommend(
        &rs,
        Priority::Balanced,
        &Constraints {
            max_memory_bytes: None,
            min_accuracy: Some(0.99),
        },
        None,
        &[],
    );
    let linear: Vec<(String, usize, usize)> = (0..4)
        .flat_map(|l| {
            ["query", "key", "value", "ffn.up"]
                .into_iter()
                .map(move |n| (format!("encoder.layer.{l}.{n}"), 384, 384))
        })
        .collect();
    let layers = linear
        .iter()
        .map(|(name, r, c)| LayerSensitivity {
            layer: name.clone(),
            shape: (*r, *c),
            weight_nmse: STRATEGIES[1..]
                .iter()
                .map(|(s, bits, _)| {
                    let base = if *bits > 5.0 { 2e-5 } else { 4e-3 };
                    (s.to_string(), base * rng.random_range(0.3..3.0))
                })
                .collect(),
            probe_strategy: "int4".into(),
            output_nmse_alone: rng.random_range(1e-5..1e-3),
            cosine_alone: 1.0 - rng.random_range(1e-5..1e-3),
        })
        .collect();
    let inputs = InputsRef {
        source: "built-in".into(),
        count: 24,
        seq_len: 128,
        digest: "0123456789abcdef".into(),
    };
    AnalysisRun {
        schema_version: SCHEMA_VERSION,
        tool_version: "0.1.0".into(),
        run_id: format!("{}-tiny-0123", 1_700_000_000 + seed),
        created_unix_s: 1_700_000_000 + seed,
        duration_s: 42.5,
        config: AnalysisConfig {
            model: ModelRef {
                name: "tiny".into(),
                source: "preset:tiny".into(),
                family: "bert".into(),
                output_dim: 384,
                f32_weight_bytes: f32_bytes,
                linear_layers: linear,
            },
            strategies: STRATEGIES.iter().map(|s| s.0.to_string()).collect(),
            backends: vec![BackendKind::Cpu, BackendKind::Wgpu],
            priority: Priority::Balanced,
            max_memory_gb: None,
            min_accuracy: Some(0.99),
            batch: 8,
            eval_inputs: inputs.clone(),
            calib_inputs: inputs,
            timed_runs: 7,
        },
        hardware: hardware(host),
        pareto: efficiency::fronts(&rs),
        results: rs,
        skipped: vec![SkippedPair {
            strategy: "int4".into(),
            backend: BackendKind::Cuda,
            reason: "cuda unavailable: libcuda not found".into(),
        }],
        layers,
        mixed_precision: None,
        recommendation: rec,
    }
}
