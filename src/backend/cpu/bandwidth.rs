//! The CPU's ceilings: DRAM read bandwidth and f32 FMA rate, measured the
//! way the kernels use the machine (every rayon thread at once).
//!
//! A GEMV's floor is `weight bytes / read bandwidth`; a GEMM's is
//! `FLOPs / FMA rate`. Benches and `quantscope profile` print each kernel's
//! time as a fraction of these, which is the figure that travels between
//! machines (absolute times on a shared 2-core VM are noise).

use std::time::Instant;

use rayon::prelude::*;

use super::kernel::KernelPath;
use crate::backend::{Bandwidth, KernelTiming, TimingSource};

/// Smallest buffer the read probe uses: 1 GiB, far beyond any last-level cache.
pub const MIN_PROBE_BYTES: usize = 1 << 30;

/// Size of the last-level cache in bytes, from sysfs where Linux exposes it.
pub fn llc_bytes() -> Option<usize> {
    let mut best = None;
    for i in 0..8 {
        let p = format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size");
        let Ok(s) = std::fs::read_to_string(p) else {
            continue;
        };
        let s = s.trim();
        let (num, mul) = match s.chars().last() {
            Some('K') => (&s[..s.len() - 1], 1 << 10),
            Some('M') => (&s[..s.len() - 1], 1 << 20),
            Some('G') => (&s[..s.len() - 1], 1 << 30),
            _ => (s, 1),
        };
        if let Ok(n) = num.parse::<usize>() {
            best = best.max(Some(n * mul));
        }
    }
    best
}

/// Buffer size for the read probe: at least 1 GiB and at least 8x the LLC.
pub fn probe_bytes() -> usize {
    MIN_PROBE_BYTES.max(llc_bytes().unwrap_or(0) * 8)
}

fn median(samples: Vec<f64>) -> f64 {
    KernelTiming {
        samples_s: samples,
        source: TimingSource::WallClock,
    }
    .median_s()
}

/// Portable sum of a slice (the compiler vectorizes the fold).
fn sum_lanes(b: &[u64]) -> u64 {
    b.iter().fold(0u64, |a, &v| a.wrapping_add(v))
}

/// Sum of a slice with four independent zmm accumulators: a pure read stream.
///
/// # Safety
/// The CPU supports AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(b: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let n = b.len() / 32 * 32;
    let p = b.as_ptr() as *const __m512i;
    let mut acc = [_mm512_setzero_si512(); 4];
    for i in (0..n / 8).step_by(4) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(i + j)));
        }
    }
    let s = _mm512_add_epi64(
        _mm512_add_epi64(acc[0], acc[1]),
        _mm512_add_epi64(acc[2], acc[3]),
    );
    let mut out = [0u64; 8];
    _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, s);
    out.iter()
        .chain(&b[n..])
        .fold(0u64, |a, &v| a.wrapping_add(v))
}

/// Sum of a slice with four independent ymm accumulators.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(b: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let n = b.len() / 16 * 16;
    let p = b.as_ptr() as *const __m256i;
    let mut acc = [_mm256_setzero_si256(); 4];
    for i in (0..n / 4).step_by(4) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(i + j)));
        }
    }
    let s = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    let mut out = [0u64; 4];
    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s);
    out.iter()
        .chain(&b[n..])
        .fold(0u64, |a, &v| a.wrapping_add(v))
}

fn sum_read(path: KernelPath, b: &[u64]) -> u64 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is supported by this CPU (checked by `KernelPath::best`);
        // the loads stay inside the slice.
        KernelPath::Avx512 => unsafe { sum_avx512(b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2 => unsafe { sum_avx2(b) },
        _ => sum_lanes(b),
    }
}

/// A buffer kept for repeated read-bandwidth measurements, so a bench can
/// take the floor right next to each kernel on a noisy machine.
pub struct ReadProbe {
    buf: Vec<u64>,
}

impl ReadProbe {
    /// Allocates and touches `bytes` (at least 64 MiB) of memory.
    pub fn new(bytes: usize) -> ReadProbe {
        let n = bytes.max(64 << 20) / 8;
        let mut buf = vec![0u64; n];
        buf.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(i, c)| c.iter_mut().for_each(|v| *v = i as u64));
        ReadProbe { buf }
    }

    /// Reads the whole buffer once, one contiguous part per rayon thread
    /// (untimed: evicts the caches before a cold-cache measurement).
    pub fn read_once(&self) {
        let path = KernelPath::best();
        let part = self.buf.len().div_ceil(rayon::current_num_threads().max(1));
        std::hint::black_box(
            self.buf
                .par_chunks(part)
                .map(|c| sum_read(path, c))
                .reduce(|| 0, u64::wrapping_add),
        );
    }

    /// Median bandwidth of `runs` reads of the buffer, split into one
    /// contiguous part per rayon thread, all threads at once.
    pub fn measure(&self, runs: usize) -> Bandwidth {
        let path = KernelPath::best();
        let n = self.buf.len();
        let threads = rayon::current_num_threads().max(1);
        let part = n.div_ceil(threads);
        let read = || -> u64 {
            self.buf
                .par_chunks(part)
                .map(|c| sum_read(path, c))
                .reduce(|| 0, u64::wrapping_add)
        };
        std::hint::black_box(read());
        let mut samples = Vec::new();
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            std::hint::black_box(read());
            samples.push(t.elapsed().as_secs_f64());
        }
        let seconds = median(samples);
        Bandwidth {
            bytes_per_s: (n * 8) as f64 / seconds,
            bytes_moved: (n * 8) as u64,
            seconds,
            source: TimingSource::WallClock,
            method: "multi-threaded read of one buffer (median)",
        }
    }
}

/// Median bandwidth of 7 reads of a buffer of `bytes` (at least 64 MiB)
/// split into one contiguous part per rayon thread, all threads at once.
pub fn measure_read_bandwidth(bytes: usize) -> Bandwidth {
    ReadProbe::new(bytes).measure(7)
}

/// FMA iterations per thread per probe run.
const FMA_ITERS: usize = 1 << 22;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn fma_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(0.999_999);
    let a = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, m, a);
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let a = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, m, a);
        }
    }
    let mut out = [0.0f32; 8];
    let s = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
    // SAFETY: `out` holds 8 f32, one ymm.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// FMAs per iteration and the loop, for one path.
fn fma_loop(path: KernelPath, iters: usize, seed: f32) -> (f32, f64) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is supported by this CPU (checked by `KernelPath::best`).
        KernelPath::Avx512 => (unsafe { fma_avx512(iters, seed) }, (16 * 16) as f64),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2 => (unsafe { fma_avx2(iters, seed) }, (12 * 8) as f64),
        _ => {
            let mut acc = [seed; 8];
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = v.mul_add(0.999_999, 1e-7);
                }
            }
            (acc.iter().sum(), 8.0)
        }
    }
}

/// Measured f32 FMA rate in FLOP/s (2 per FMA) of all rayon threads at once,
/// from a loop of independent FMAs on the widest supported registers
/// (median of 5 runs).
pub fn measure_fma_rate() -> f64 {
    let path = KernelPath::best();
    let threads = rayon::current_num_threads().max(1);
    let run = || -> f64 {
        (0..threads)
            .into_par_iter()
            .map(|t| {
                let (v, fmas) = fma_loop(path, FMA_ITERS, t as f32 * 1e-3);
                std::hint::black_box(v);
                fmas
            })
            .sum::<f64>()
    };
    let mut flops = 0.0;
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let per_iter = run();
        samples.push(t.elapsed().as_secs_f64());
        flops = 2.0 * per_iter * FMA_ITERS as f64;
    }
    flops / median(samples)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
fn dot_avx512(iters: usize, seed: i32) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi32(0x0102_0304);
    let b = _mm512_set1_epi32(seed);
    let mut acc = [_mm512_set1_epi32(seed); 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_si512(), |s, &v| _mm512_add_epi32(s, v));
    _mm512_reduce_add_epi32(s)
}

/// Measured int8 dot-product rate in OP/s (a multiply and an add per u8 x
/// i8 product) of all rayon threads at once, from a loop of independent
/// `vpdpbusd` (64 products each; median of 5 runs): the ceiling of the
/// int8-activation kernels (q4 GEMM, q8 / q4 / lut4 GEMV). `None` without
/// AVX-512 VNNI, where those kernels run in f32.
pub fn measure_int8_dot_rate() -> Option<f64> {
    if KernelPath::best() != KernelPath::Avx512 {
        return None;
    }
    let threads = rayon::current_num_threads().max(1);
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        (0..threads).into_par_iter().for_each(|t| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 VNNI is supported (`KernelPath::Avx512`).
            std::hint::black_box(unsafe { dot_avx512(FMA_ITERS, t as i32) });
            #[cfg(not(target_arch = "x86_64"))]
            let _ = t;
        });
        samples.push(t.elapsed().as_secs_f64());
    }
    let ops = (threads * FMA_ITERS * 16 * 64 * 2) as f64;
    Some(ops / median(samples))
}

/// The two ceilings of this machine, measured once.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// DRAM read bandwidth in bytes per second ([`measure_read_bandwidth`]).
    pub read_bytes_per_s: f64,
    /// f32 FMA rate in FLOP/s ([`measure_fma_rate`]).
    pub flops: f64,
}

impl Floor {
    /// Measures both ceilings (about a second; allocates [`probe_bytes`]).
    pub fn measure() -> Floor {
        Floor {
            read_bytes_per_s: measure_read_bandwidth(probe_bytes()).bytes_per_s,
            flops: measure_fma_rate(),
        }
    }

    /// Fraction of the bandwidth floor reached by a kernel that reads
    /// `bytes` in `seconds` (1.0 = at the floor).
    pub fn bandwidth_fraction(&self, bytes: f64, seconds: f64) -> f64 {
        bytes / seconds / self.read_bytes_per_s
    }

    /// Fraction of the FMA-rate floor reached by `flops` in `seconds`.
    pub fn compute_fraction(&self, flops: f64, seconds: f64) -> f64 {
        flops / seconds / self.flops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The int8 dot probe runs where the int8 kernels use `vpdpbusd`, and
    /// reports a rate of the right order next to the FMA probe: 64 products
    /// per instruction against 16 FMAs, 4x the FMA rate at equal throughput
    /// (measured 4.0x on Zen 5). The band is wide (1x .. 16x) because the
    /// two probes run at different moments of a shared machine's load.
    #[test]
    fn int8_dot_probe_is_present_exactly_with_vnni() {
        let dot = measure_int8_dot_rate();
        assert_eq!(dot.is_some(), KernelPath::best() == KernelPath::Avx512);
        if let Some(d) = dot {
            let f = measure_fma_rate();
            assert!(d.is_finite() && d > 0.0);
            assert!(d > 1.0 * f && d < 16.0 * f, "dot {d:e} vs fma {f:e}");
        }
    }
}
