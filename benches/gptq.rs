//! GPTQ and AWQ speed.
//!
//! criterion for a 1024x1024 layer, then one timed GPTQ of a 4096x4096 layer
//! with 4096 calibration rows (the target: under 30 s on the 2-core
//! CI machine), phase by phase. `cargo bench --bench gptq`; set
//! `QUANTSCOPE_BENCH_QUICK=1` to skip the 4096 run.

use std::time::Instant;

use criterion::Criterion;
use quantscope::format::Matrix;
use quantscope::quant::awq::{awq, AwqConfig};
use quantscope::quant::calib::ActivationModel;
use quantscope::quant::gptq::{gptq_with_hessian, GptqConfig, Hessian};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

fn weights(rows: usize, cols: usize) -> Matrix {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let data = (0..rows * cols)
        .map(|_| 0.02 * rng.sample::<f32, _>(StandardNormal))
        .collect();
    Matrix::from_vec(rows, cols, data).expect("shape")
}

fn bench_1024(c: &mut Criterion) {
    let n = 1024;
    let w = weights(n, n);
    let x = ActivationModel::new(n, 3)
        .and_then(|m| m.sample(n, 4))
        .expect("activations");
    let h = Hessian::from_calib(&x).expect("hessian");
    let cfg = GptqConfig::default();
    c.bench_function("hessian 1024 rows x 1024", |b| {
        b.iter(|| Hessian::from_calib(&x).expect("hessian"))
    });
    c.bench_function("gptq 1024x1024 g128 (given H)", |b| {
        b.iter(|| gptq_with_hessian(&w, &h, &cfg, &mut |_, _| {}).expect("gptq"))
    });
    let acfg = AwqConfig::default();
    c.bench_function("awq 1024x1024 g128, 1024 rows", |b| {
        b.iter(|| awq(&w, &x, &acfg, &mut |_, _| {}).expect("awq"))
    });
}

fn one_shot(n: usize, calib_rows: usize) {
    let w = weights(n, n);
    let x = ActivationModel::new(n, 3)
        .and_then(|m| m.sample(calib_rows, 4))
        .expect("activations");
    let t0 = Instant::now();
    let h = Hessian::from_calib(&x).expect("hessian");
    let t_h = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let r = gptq_with_hessian(&w, &h, &GptqConfig::default(), &mut |_, _| {}).expect("gptq");
    let t_q = t1.elapsed().as_secs_f64();
    println!(
        "gptq {n}x{n}, {calib_rows} calibration rows, g128, {} threads: Hessian {t_h:.2} s + \
         quantize {t_q:.2} s = {:.2} s total (damping {}, {} retries)",
        rayon::current_num_threads(),
        t_h + t_q,
        r.report.percdamp_used,
        r.report.damp_retries
    );
}

fn main() {
    let quick_only = std::env::var_os("QUANTSCOPE_BENCH_QUICK").is_some();
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    bench_1024(&mut c);
    c.final_summary();
    if !quick_only && std::env::args().any(|a| a == "--bench") {
        one_shot(4096, 4096);
    }
}
