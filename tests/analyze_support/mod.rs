//! The analyzer tests' result fixture: one strategy's figures, every
//! field set from the few that a test varies.

use quantscope::analyze::schema::*;
use quantscope::backend::{BackendKind, TimingSource};

/// A result for `strategy` on `backend` with accuracy `acc` (also its mean
/// cosine; worst 0.001 lower; NMSE 1 - acc), `bytes` of weights (peak 10 %
/// more), `t` s per input (all of it in the linear layers), no top-k
/// agreement.
pub fn result(
    strategy: &str,
    backend: BackendKind,
    acc: f64,
    bytes: u64,
    t: f64,
) -> StrategyResult {
    StrategyResult {
        strategy: strategy.into(),
        backend,
        device: "test".into(),
        format: "q4 g128".into(),
        bits_per_weight: 4.25,
        accuracy: acc,
        retention: Retention {
            mean_cosine: acc,
            worst_cosine: acc - 0.001,
            output_nmse: 1.0 - acc,
            top10_agreement: None,
            top1_agreement: None,
        },
        memory_bytes: bytes,
        memory: MemoryStats {
            weight_bytes: bytes,
            resident_after_upload_bytes: bytes,
            device_peak_bytes: bytes + bytes / 10,
            inference_overhead_bytes: bytes / 10,
            reserved_bytes: None,
            fragmentation: None,
            process_rss_peak_bytes: 0,
            device_total_bytes: None,
        },
        inference_time_s: t,
        speed: SpeedStats {
            median_s_per_input: t,
            p10_s_per_input: t,
            p90_s_per_input: t,
            inputs_per_s: 1.0 / t,
            tokens_per_s: 128.0 / t,
            split: TimeSplit {
                linear_s: t,
                attention_s: 0.0,
                other_s: 0.0,
            },
            timing_source: TimingSource::WallClock,
            runs: 5,
        },
        quantize_time_s: 0.1,
        efficiency: Efficiency::default(),
        timeline: MemoryTimeline::default(),
        warnings: vec![],
        output_digest: String::new(),
    }
}
