//! Structure-aware fuzzing of every parser and loader, on stable Rust.
//!
//! Each target is a function from bytes to "anything but a panic, an abort
//! or a hang": errors are fine, they are what bad input must give. Inputs
//! start from the seed corpus committed under `fuzz/corpus/<target>/` and
//! are mutated by a seeded mutator that knows the shape of the formats:
//! bit flips, interesting bytes, truncation, splices, the safetensors
//! header length (first 8 bytes) rewritten, numbers inside the JSON header
//! replaced by edge values (0, -1, 2^64-1, 2^53, huge exponents), dtype
//! names swapped, JSON structure broken. A case that panics is saved under
//! the target folder as `fuzz/artifacts/<target>/<hash>` (the test fails);
//! a case that runs longer than `CASE_TIMEOUT` aborts the run with the
//! case saved the same way.
//!
//! Budget: `QUANTSCOPE_FUZZ_SECONDS` per target (default 5; CI sets its
//! own), at least `MIN_CASES` cases each. Seed: `QUANTSCOPE_FUZZ_SEED`
//! (default: a fixed one, so a failure reproduces; CI passes the date).
//!
//! Adding a target is a few lines: a function `fn(&[u8])` and a row in
//! [`targets`]; its seeds go in `fuzz/corpus/<name>/`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const CASE_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_CASES: u64 = 200;

/// A fuzz target: its name (and corpus folder) and the code under test.
struct Target {
    name: &'static str,
    run: fn(&[u8]),
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "safetensors_checkpoint",
            run: checkpoint,
        },
        Target {
            name: "quantized_file",
            run: quantized,
        },
        Target {
            name: "calibration",
            run: calibration,
        },
        Target {
            name: "results_json",
            run: results_json,
        },
        Target {
            name: "flag_values",
            run: flag_values,
        },
        Target {
            name: "model_config",
            run: model_config,
        },
        Target {
            name: "analysis_results",
            run: analysis_results,
        },
    ]
}

// ---------------------------------------------------------------------------
// Targets.

fn checkpoint(b: &[u8]) {
    let p = Path::new("fuzz-input.safetensors");
    for skip in [false, true] {
        if let Ok(c) = quantscope::io::read_checkpoint_bytes(b, p, skip) {
            // What was read must be usable: quantize the first small matrix.
            if let Some((_, m)) = c.matrices.iter().find(|(_, m)| m.len() <= 1 << 16) {
                let cfg = quantscope::quant::QuantConfig::new(quantscope::quant::Scheme::Int4);
                let _ = quantscope::quant::quantize(m, &cfg);
            }
        }
    }
}

fn quantized(b: &[u8]) {
    if let Ok(items) = quantscope::io::read_quantized_bytes(b, Path::new("fuzz-input.safetensors"))
    {
        // A matrix that passed the layout checks must dequantize without panicking.
        for (_, q) in items {
            if q.rows().saturating_mul(q.cols()) <= 1 << 16 {
                let _ = q.dequantize();
            }
        }
    }
}

fn calibration(b: &[u8]) {
    for (name, cols) in [("layer.a", 64), ("layer.b", 40), ("x", 1)] {
        let _ = quantscope::quant::calib::load_safetensors_bytes(b, "fuzz-input", name, cols);
    }
}

fn results_json(b: &[u8]) {
    let _ = serde_json::from_slice::<quantscope::vector::report::ResultsFile>(b);
    if let Ok(v) = serde_json::from_slice::<quantscope::vector::study::StudyRun>(b) {
        let _ = quantscope::vector::report::results_text(&v);
    }
}

fn model_config(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    let p = Path::new("fuzz/config.json");
    if let Ok(c) = quantscope::model::ModelConfig::from_hf_json(p, &text) {
        // A config that parses must validate or be refused, and what
        // validates must describe its layers without panicking.
        if c.validate(p).is_ok() {
            let _ = c.output_dim();
            let _ = c.to_hf_json();
        }
    }
}

fn analysis_results(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    if let Ok(run) = quantscope::analyze::AnalysisRun::from_json(&text, "fuzz.json") {
        let _ = run.to_json();
    }
}

fn flag_values(b: &[u8]) {
    let s = String::from_utf8_lossy(b);
    let _ = s.parse::<quantscope::format::GroupSize>();
    let _ = s.parse::<quantscope::quant::Scheme>();
    let _ = s.parse::<quantscope::format::FormatKind>();
    let _ = s.parse::<quantscope::vector::VectorSize>();
    let _ = s.parse::<quantscope::vector::Distribution>();
    let _ = s.parse::<quantscope::backend::BackendKind>();
    let _ = s.parse::<quantscope::model::Preset>();
    let _ = s.parse::<quantscope::analyze::Priority>();
    let _ = quantscope::vector::Approach::parse_choice(&s);
}

// ---------------------------------------------------------------------------
// The mutator.

const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "4294967296",
    "65535",
    "1e308",
    "-0",
    "2147483648",
    "99999999999999999999999",
];
const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "U32", "BOOL", "F8_E4M3", "XYZ",
];

fn mutate(rng: &mut Xoshiro256PlusPlus, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        match rng.random_range(0..11) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b'[', b'9'][rng.random_range(0..8)];
            }
            2 if !b.is_empty() => {
                let n = rng.random_range(0..b.len());
                b.truncate(n);
            }
            3 => {
                let n = rng.random_range(1..64);
                b.extend((0..n).map(|_| rng.random::<u8>()));
            }
            4 if !others.is_empty() => {
                // Splice: a piece of another seed.
                let o = &others[rng.random_range(0..others.len())];
                if !o.is_empty() && !b.is_empty() {
                    let (i, j) = (rng.random_range(0..b.len()), rng.random_range(0..o.len()));
                    let n = rng.random_range(0..(o.len() - j).min(256) + 1);
                    b.splice(i..i, o[j..j + n].iter().copied());
                }
            }
            5 if b.len() >= 8 => {
                // The safetensors header length.
                let hl = u64::from_le_bytes(b[..8].try_into().unwrap());
                let v = match rng.random_range(0..5) {
                    0 => hl.wrapping_add(rng.random_range(1..16)),
                    1 => hl.saturating_sub(rng.random_range(1..16)),
                    2 => u64::MAX - rng.random_range(0..16),
                    3 => (b.len() as u64).saturating_sub(8),
                    _ => rng.random::<u32>() as u64,
                };
                b[..8].copy_from_slice(&v.to_le_bytes());
            }
            6 | 7 => edit_json_number(rng, &mut b),
            8 => swap_dtype(rng, &mut b),
            9 => fix_header_length(&mut b),
            _ if b.len() > 2 => {
                // Duplicate a chunk (repeated keys, repeated entries).
                let i = rng.random_range(0..b.len() - 1);
                let n = rng.random_range(1..(b.len() - i).min(128) + 1);
                let chunk = b[i..i + n].to_vec();
                b.splice(i..i, chunk);
            }
            _ => {}
        }
    }
    if rng.random_bool(0.5) {
        fix_header_length(&mut b);
    }
    b
}

/// Where the JSON part is: a safetensors header, or the whole input.
fn json_span(b: &[u8]) -> (usize, usize) {
    if b.len() >= 8 {
        let hl = u64::from_le_bytes(b[..8].try_into().unwrap());
        if hl > 0 && hl <= (b.len() - 8) as u64 && b.get(8) == Some(&b'{') {
            return (8, 8 + hl as usize);
        }
    }
    (0, b.len())
}

/// Replaces one number inside the JSON part by an edge value.
fn edit_json_number(rng: &mut Xoshiro256PlusPlus, b: &mut Vec<u8>) {
    let (lo, hi) = json_span(b);
    let digits: Vec<usize> = (lo..hi).filter(|&i| b[i].is_ascii_digit()).collect();
    if digits.is_empty() {
        return;
    }
    let start = digits[rng.random_range(0..digits.len())];
    let (mut s, mut e) = (start, start);
    while s > lo && b[s - 1].is_ascii_digit() {
        s -= 1;
    }
    while e < hi && b[e].is_ascii_digit() {
        e += 1;
    }
    let new = EDGE_NUMBERS[rng.random_range(0..EDGE_NUMBERS.len())];
    b.splice(s..e, new.bytes());
}

/// Replaces one dtype name by another.
fn swap_dtype(rng: &mut Xoshiro256PlusPlus, b: &mut Vec<u8>) {
    let (lo, hi) = json_span(b);
    let hay = &b[lo..hi];
    let mut spots = Vec::new();
    for d in DTYPES {
        let pat = format!("\"{d}\"");
        let mut i = 0;
        while let Some(p) = find(&hay[i..], pat.as_bytes()) {
            spots.push((lo + i + p + 1, d.len()));
            i += p + 1;
        }
    }
    if spots.is_empty() {
        return;
    }
    let (at, len) = spots[rng.random_range(0..spots.len())];
    let new = DTYPES[rng.random_range(0..DTYPES.len())];
    b.splice(at..at + len, new.bytes());
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Makes the header length match the JSON again (the closing brace of the
/// header), so a mutation inside the header reaches the parser behind it.
fn fix_header_length(b: &mut [u8]) {
    if b.len() < 9 || b[8] != b'{' {
        return;
    }
    let mut depth = 0i64;
    let mut in_str = false;
    let mut esc = false;
    for i in 8..b.len() {
        let c = b[i];
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    let hl = (i + 1 - 8) as u64;
                    b[..8].copy_from_slice(&hl.to_le_bytes());
                    return;
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The driver.

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

fn load_corpus(name: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(name))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn hash(b: &[u8]) -> u64 {
    // FNV-1a: stable names for saved cases.
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

fn save_case(target: &str, b: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/artifacts")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{:016x}", hash(b)));
    let _ = std::fs::write(&p, b);
    p
}

fn budget() -> Duration {
    let s: f64 = std::env::var("QUANTSCOPE_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(s)
}

fn seed() -> u64 {
    std::env::var("QUANTSCOPE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d)
}

/// Runs one target for its budget; returns (cases run, failures).
fn fuzz(t: &Target) -> (u64, Vec<String>) {
    let corpus = load_corpus(t.name);
    assert!(
        !corpus.is_empty(),
        "no seed corpus in {}",
        corpus_dir(t.name).display()
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed() ^ hash(t.name.as_bytes()));
    // Watchdog: a case that runs past CASE_TIMEOUT is saved and the run aborted.
    let current: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let epoch = Instant::now();
    let watchdog = {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        let name = t.name;
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let s = started.load(Ordering::Relaxed);
                if s != u64::MAX
                    && epoch.elapsed().as_millis() as u64 > s + CASE_TIMEOUT.as_millis() as u64
                {
                    let b = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let p = save_case(name, &b);
                    eprintln!(
                        "fuzz {name}: a case hung for {CASE_TIMEOUT:?}; saved as {}",
                        p.display()
                    );
                    std::process::abort();
                }
            }
        })
    };
    let mut failures = Vec::new();
    let (start, limit) = (Instant::now(), budget());
    let mut n = 0u64;
    while n < MIN_CASES || start.elapsed() < limit {
        // The seeds themselves first, then mutants.
        let input = if (n as usize) < corpus.len() {
            corpus[n as usize].clone()
        } else {
            let s = &corpus[rng.random_range(0..corpus.len())];
            mutate(&mut rng, s, &corpus)
        };
        *current.lock().unwrap() = input.clone();
        started.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        started.store(u64::MAX, Ordering::Relaxed);
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let p = save_case(t.name, &input);
            failures.push(format!("{}: panic '{msg}' on {}", t.name, p.display()));
            if failures.len() >= 5 {
                break;
            }
        }
        n += 1;
    }
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    (n, failures)
}

#[test]
fn every_parser_survives_mutated_input() {
    // Panics are caught and reported below; keep their noise out of the log.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for t in targets() {
        let (n, f) = fuzz(&t);
        summary.push(format!("{}: {n} cases", t.name));
        failures.extend(f);
    }
    std::panic::set_hook(hook);
    eprintln!("fuzz: {}", summary.join(", "));
    assert!(
        failures.is_empty(),
        "seed {} (QUANTSCOPE_FUZZ_SEED):\n{}",
        seed(),
        failures.join("\n")
    );
}

/// Every saved failure stays fixed: the artifacts folder is replayed (the
/// cases found so far are committed under `fuzz/regressions/<target>/`).
#[test]
fn found_cases_stay_fixed() {
    for t in targets() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(t.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let b = std::fs::read(e.path()).unwrap();
            (t.run)(&b);
        }
    }
}

/// Writes the seed corpus (run once by hand: `cargo test --test fuzz -- --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    use quantscope::format::{GroupSize, Matrix};
    use quantscope::quant::{quantize, QuantConfig, Scheme};
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let m = |r: usize, c: usize| {
        Matrix::from_vec(
            r,
            c,
            (0..r * c)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect(),
        )
        .unwrap()
    };
    let put = |target: &str, name: &str, bytes: Vec<u8>| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    let tmp = tempfile::tempdir().unwrap();
    // A checkpoint with every dtype the loader meets.
    let a = m(4, 40);
    let h: Vec<u8> = a
        .data()
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf: Vec<u8> = a
        .data()
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let f64b: Vec<u8> = a
        .data()
        .iter()
        .flat_map(|v| (*v as f64).to_le_bytes())
        .collect();
    let f32b: Vec<u8> = bytemuck::cast_slice(a.data()).to_vec();
    let ids: Vec<u8> = bytemuck::cast_slice(&[1i64, 2, 3]).to_vec();
    let bias: Vec<u8> = bytemuck::cast_slice(&[0.5f32; 4]).to_vec();
    let conv = vec![0u8; 16 * 4];
    let tensors: Vec<(&str, Dtype, Vec<usize>, &[u8])> = vec![
        ("layer.a", Dtype::F32, vec![4, 40], &f32b),
        ("layer.b", Dtype::F16, vec![4, 40], &h),
        ("layer.c", Dtype::BF16, vec![4, 40], &bf),
        ("layer.d", Dtype::F64, vec![4, 40], &f64b),
        ("bias", Dtype::F32, vec![4], &bias),
        ("ids", Dtype::I64, vec![1, 3], &ids),
        ("conv", Dtype::F32, vec![2, 2, 2, 2], &conv),
    ];
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    put(
        "safetensors_checkpoint",
        "mixed.safetensors",
        safetensors::serialize(views, Some(meta)).unwrap(),
    );
    let p = tmp.path().join("w.st");
    quantscope::io::write_matrices(&p, &[("w".into(), m(3, 33))]).unwrap();
    put(
        "safetensors_checkpoint",
        "plain.safetensors",
        std::fs::read(&p).unwrap(),
    );
    // A quantized file with every format, outliers and an activation scale.
    let w = m(5, 70);
    let mut items = Vec::new();
    for s in ["none", "f16", "bf16", "int8", "int4", "nf4", "easyquant4"] {
        let mut cfg = QuantConfig::new(s.parse::<Scheme>().unwrap());
        cfg.group = GroupSize::Cols(32);
        items.push((format!("t.{s}"), quantize(&w, &cfg).unwrap()));
    }
    let scaled = items[4].1.clone().with_act_scale(vec![1.5; 70]).unwrap();
    items.push(("t.awq".into(), scaled));
    let q = tmp.path().join("q.st");
    quantscope::io::write_quantized(&q, &items, false).unwrap();
    put(
        "quantized_file",
        "every_format.safetensors",
        std::fs::read(&q).unwrap(),
    );
    let q1 = tmp.path().join("q1.st");
    quantscope::io::write_quantized(&q1, &items[4..5], true).unwrap();
    put(
        "quantized_file",
        "int4_dequantized.safetensors",
        std::fs::read(&q1).unwrap(),
    );
    // Calibration activations: 2-D and 3-D, two dtypes.
    let x = m(16, 64);
    let x16: Vec<u8> = m(2 * 5 * 40, 1)
        .data()
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let xb: Vec<u8> = bytemuck::cast_slice(x.data()).to_vec();
    let views = vec![
        (
            "layer.a".to_string(),
            TensorView::new(Dtype::F32, vec![16, 64], &xb).unwrap(),
        ),
        (
            "layer.b".to_string(),
            TensorView::new(Dtype::F16, vec![2, 5, 40], &x16).unwrap(),
        ),
    ];
    put(
        "calibration",
        "two_layers.safetensors",
        safetensors::serialize(views, None).unwrap(),
    );
    // results.json from a real run of the study.
    let dir = tmp.path().join("r");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_quantscope"))
        .args([
            "vector",
            "--backend",
            "cpu",
            "--no-plots",
            "--save-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(st.status.success());
    put(
        "results_json",
        "results.json",
        std::fs::read(dir.join("results.json")).unwrap(),
    );
    for (i, s) in [
        "128",
        "row",
        "int4-clip",
        "F16",
        "1_000_000",
        "gaussian+outliers",
        "lloyd-max,uniform",
        "cuda",
        "large",
    ]
    .iter()
    .enumerate()
    {
        put("flag_values", &format!("{i}.txt"), s.as_bytes().to_vec());
    }
}
