//! Bad and odd inputs, one table for every command: the command line, the
//! exit status it must give, a phrase of its message, and that no file was
//! created or changed. The same habit as the cross-backend test: a new
//! defect class adds a row, not a test file. The table is copied into
//! docs/RELIABILITY.md.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quantscope::format::Matrix;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quantscope"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

/// Every file under `dir` with its bytes and mode (what "unchanged" means).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p.clone());
                m.insert(p, (Vec::new(), 0));
            } else if meta.is_file() {
                #[cfg(unix)]
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
                #[cfg(not(unix))]
                let mode = 0;
                // Sparse giants (huge.st) are compared by size and time.
                let bytes = if meta.len() > 1 << 26 {
                    format!("{} {:?}", meta.len(), meta.modified().ok()).into_bytes()
                } else {
                    std::fs::read(&p).unwrap()
                };
                m.insert(p.clone(), (bytes, mode));
            } else {
                m.insert(p, (b"<special>".to_vec(), 0));
            }
        }
    }
    m
}

fn st_file(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(m: &Matrix) -> Vec<u8> {
    bytemuck::cast_slice(m.data()).to_vec()
}

fn scaled(rows: usize, cols: usize, k: f32) -> Matrix {
    let v = common::gaussian(rows, cols, 5).into_vec();
    Matrix::from_vec(rows, cols, v.into_iter().map(|x| x * k).collect()).unwrap()
}

/// The fixture folder: inputs for every row.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let w = |n: &str, items: Vec<(String, Matrix)>| {
            quantscope::io::write_matrices(&p(n), &items).unwrap()
        };
        w(
            "w.st",
            vec![
                ("layer.a".into(), common::gaussian(16, 64, 1)),
                ("layer.b".into(), common::gaussian(5, 40, 2)),
            ],
        );
        w("big.st", vec![("w".into(), scaled(8, 64, 1e6))]);
        w("f16big.st", vec![("w".into(), scaled(4, 16, 1e5))]);
        w("tiny.st", vec![("w".into(), scaled(4, 64, 1e-9))]);
        w("one.st", vec![("w".into(), scaled(1, 1, 1.0))]);
        w(
            "zero.st",
            vec![("w".into(), Matrix::from_vec(4, 64, vec![0.0; 256]).unwrap())],
        );
        w(
            "zcalib.st",
            vec![(
                "layer.a".into(),
                Matrix::from_vec(8, 64, vec![0.0; 512]).unwrap(),
            )],
        );
        w(
            "gw.st",
            vec![("layer.a".into(), common::gaussian(16, 64, 1))],
        );
        let m = common::gaussian(4, 32, 3);
        st_file(
            &p("ctrl.st"),
            &[(
                "evil\u{1b}[31m\nname",
                Dtype::F32,
                vec![4, 32],
                f32_bytes(&m),
            )],
        );
        let bias: Vec<u8> = bytemuck::cast_slice(&[0.5f32; 32]).to_vec();
        let ids: Vec<u8> = bytemuck::cast_slice(&[7i64; 6]).to_vec();
        st_file(
            &p("mixed.st"),
            &[
                ("dense.weight", Dtype::F32, vec![4, 32], f32_bytes(&m)),
                ("dense.bias", Dtype::F32, vec![32], bias.clone()),
                ("position_ids", Dtype::I64, vec![1, 6], ids),
            ],
        );
        st_file(&p("onlybias.st"), &[("bias", Dtype::F32, vec![32], bias)]);
        let conv = vec![0u8; 4 * 2 * 2 * 2 * 2];
        st_file(
            &p("conv.st"),
            &[("conv", Dtype::F32, vec![2, 2, 2, 2], conv)],
        );
        // A checkpoint whose one tensor is 200000 x 200000 f16 (80 GB, a
        // sparse file): refused before anything is converted.
        let mut header =
            br#"{"w":{"dtype":"F16","shape":[200000,200000],"data_offsets":[0,80000000000]}}"#
                .to_vec();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let mut huge = (header.len() as u64).to_le_bytes().to_vec();
        huge.extend(&header);
        std::fs::write(p("huge.st"), &huge).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p("huge.st"))
            .unwrap();
        f.set_len(huge.len() as u64 + 80_000_000_000).unwrap();
        std::fs::write(p("text.st"), b"this is not a tensor file").unwrap();
        let good = std::fs::read(p("w.st")).unwrap();
        std::fs::write(p("trunc.st"), &good[..good.len() - 100]).unwrap();
        std::fs::write(p("notadir"), b"a file").unwrap();
        std::fs::create_dir(p("outdir")).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(p("w.st"), p("link-to-input")).unwrap();
            std::fs::hard_link(p("w.st"), p("hard-to-input")).unwrap();
            std::os::unix::fs::symlink(p("missing"), p("dangling")).unwrap();
            let ok = Command::new("mkfifo").arg(p("fifo")).status();
            assert!(ok.map(|s| s.success()).unwrap_or(false), "mkfifo");
        }
        Fixture { dir }
    }

    fn path(&self, n: &str) -> String {
        self.dir.path().join(n).to_str().unwrap().to_string()
    }

    /// Replaces `{name}` with the fixture path of `name`.
    fn expand(&self, arg: &str) -> String {
        let mut s = arg.to_string();
        while let (Some(a), Some(b)) = (s.find('{'), s.find('}')) {
            if b < a {
                break;
            }
            let name = s[a + 1..b].to_string();
            s = format!("{}{}{}", &s[..a], self.path(&name), &s[b + 1..]);
        }
        s
    }
}

/// One row: what is run, and what must come out.
struct Case {
    /// Row label (also in docs/RELIABILITY.md).
    what: &'static str,
    /// Arguments; `{name}` is a fixture path.
    args: &'static [&'static str],
    /// Environment (fault injection).
    env: &'static [(&'static str, &'static str)],
    /// Expected exit status.
    status: i32,
    /// A phrase of stderr (or, for successes, of stdout + stderr).
    phrase: &'static str,
    /// Phrases that must not appear anywhere in the output.
    absent: &'static [&'static str],
    /// Whether files may change (a success that writes its output).
    writes: bool,
}

const NO_ENV: &[(&str, &str)] = &[];

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Data loss and destructive writes.
    Case { what: "output is the input", args: &["quantize", "--input", "{w.st}", "--output", "{w.st}"], env: NO_ENV, status: 1, phrase: "is the same file as the input", absent: &[], writes: false },
    Case { what: "output is a symlink to the input", args: &["quantize", "--input", "{w.st}", "--output", "{link-to-input}"], env: NO_ENV, status: 1, phrase: "is the same file as the input", absent: &[], writes: false },
    Case { what: "output is a hard link to the input", args: &["quantize", "--input", "{w.st}", "--output", "{hard-to-input}"], env: NO_ENV, status: 1, phrase: "is the same file as the input", absent: &[], writes: false },
    Case { what: "output is the calibration file", args: &["quantize", "--input", "{gw.st}", "--scheme", "gptq-int4", "--calib", "{zcalib.st}", "--output", "{zcalib.st}"], env: NO_ENV, status: 1, phrase: "is the same file as the input", absent: &[], writes: false },
    Case { what: "output is a device node", args: &["quantize", "--input", "{w.st}", "--output", "/dev/null"], env: NO_ENV, status: 1, phrase: "is a character device, not a regular file", absent: &[], writes: false },
    Case { what: "output is a FIFO", args: &["quantize", "--input", "{w.st}", "--output", "{fifo}"], env: NO_ENV, status: 1, phrase: "is a FIFO", absent: &[], writes: false },
    Case { what: "output is a directory", args: &["quantize", "--input", "{w.st}", "--output", "{outdir}"], env: NO_ENV, status: 1, phrase: "is a directory", absent: &[], writes: false },
    Case { what: "output is a dangling symlink", args: &["quantize", "--input", "{w.st}", "--output", "{dangling}"], env: NO_ENV, status: 1, phrase: "symbolic link to a missing file", absent: &[], writes: false },
    Case { what: "disk full while writing the output", args: &["quantize", "--input", "{w.st}", "--output", "{new.st}"], env: &[("QUANTSCOPE_FAULT", "write:1")], status: 1, phrase: "No space left on device", absent: &[], writes: false },
    Case { what: "vector: --save-dir is a file", args: &["vector", "--backend", "cpu", "--save-dir", "{notadir}"], env: NO_ENV, status: 2, phrase: "is a regular file, not a folder", absent: &[], writes: false },
    Case { what: "vector: --save-dir cannot be created (results still printed)", args: &["vector", "--backend", "cpu", "--save-dir", "{notadir}/sub"], env: NO_ENV, status: 1, phrase: "no file of this run was written", absent: &[], writes: false },
    Case { what: "vector: disk full at the 3rd file: no file at all", args: &["vector", "--backend", "cpu", "--save-dir", "{outdir}"], env: &[("QUANTSCOPE_FAULT", "write:3")], status: 1, phrase: "No space left on device", absent: &[], writes: false },
    Case { what: "vector: results.json fails after results.txt: neither", args: &["vector", "--backend", "cpu", "--no-plots", "--save-dir", "{outdir}"], env: &[("QUANTSCOPE_FAULT", "write:2")], status: 1, phrase: "results.json", absent: &[], writes: false },
    Case { what: "vector: a rename fails mid-commit: rolled back", args: &["vector", "--backend", "cpu", "--save-dir", "{outdir}"], env: &[("QUANTSCOPE_FAULT", "rename:2")], status: 1, phrase: "No space left on device", absent: &[], writes: false },
    // Finite input, non-finite output.
    Case { what: "int4 on N(0,1)*1e6", args: &["quantize", "--input", "{big.st}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "q4 holds ranges up to", absent: &["NaN"], writes: false },
    Case { what: "f16 on a weight of 1e5", args: &["quantize", "--input", "{f16big.st}", "--scheme", "f16", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "beyond f16's range", absent: &["NaN"], writes: false },
    Case { what: "nf4 on 1e6", args: &["quantize", "--input", "{big.st}", "--scheme", "nf4", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "lut4 holds groups with |w| up to 65504", absent: &["NaN"], writes: false },
    Case { what: "kmeans4 on 1e6 names the weight", args: &["quantize", "--input", "{big.st}", "--scheme", "kmeans4", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "tensor 'w': row 0, columns 0..64", absent: &["invalid codebook"], writes: false },
    Case { what: "easyquant4 on 1e6 names the weight", args: &["quantize", "--input", "{big.st}", "--scheme", "easyquant4", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "tensor 'w': row 0", absent: &["not finite"], writes: false },
    Case { what: "weights that all round to zero: warned", args: &["quantize", "--input", "{tiny.st}", "--output", "{new.st}"], env: NO_ENV, status: 0, phrase: "every weight rounds to zero", absent: &[], writes: true },
    Case { what: "an all-zero layer's output error is undefined, not 0", args: &["quantize", "--input", "{zero.st}", "--output-error", "--output", "{new.st}"], env: NO_ENV, status: 0, phrase: "output NMSE is undefined", absent: &["NaN"], writes: true },
    Case { what: "GPTQ with all-zero calibration", args: &["quantize", "--input", "{gw.st}", "--scheme", "gptq-int4", "--calib", "{zcalib.st}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "are all zero", absent: &[], writes: false },
    Case { what: "AWQ with all-zero calibration", args: &["quantize", "--input", "{gw.st}", "--scheme", "awq-int4", "--calib", "{zcalib.st}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "are all zero", absent: &[], writes: false },
    // Aborts, panics, hangs.
    Case { what: "profile: 10^6 x 10^6", args: &["profile", "--backend", "cpu", "--shape", "1000000x1000000"], env: NO_ENV, status: 2, phrase: "of memory;", absent: &["panicked"], writes: false },
    Case { what: "profile: usize::MAX rows", args: &["profile", "--backend", "cpu", "--shape", "18446744073709551615x2"], env: NO_ENV, status: 2, phrase: "of memory;", absent: &["panicked"], writes: false },
    Case { what: "profile: --batch 10^8", args: &["profile", "--backend", "cpu", "--batch", "100000000"], env: NO_ENV, status: 2, phrase: "--batch 100000000 is outside", absent: &[], writes: false },
    Case { what: "profile: --copy-mib 10^8", args: &["profile", "--backend", "cpu", "--copy-mib", "100000000"], env: NO_ENV, status: 2, phrase: "--copy-mib 100000000 is outside", absent: &[], writes: false },
    Case { what: "profile: --runs 0", args: &["profile", "--backend", "cpu", "--runs", "0"], env: NO_ENV, status: 2, phrase: "--runs 0 is outside", absent: &[], writes: false },
    Case { what: "profile: bad --shape", args: &["profile", "--backend", "cpu", "--shape", "12"], env: NO_ENV, status: 2, phrase: "is not ROWSxCOLS", absent: &[], writes: false },
    Case { what: "profile: unknown backend", args: &["profile", "--backend", "tpu"], env: NO_ENV, status: 2, phrase: "unknown --backend 'tpu'", absent: &[], writes: false },
    Case { what: "profile: --cpu-activations off the cpu", args: &["profile", "--backend", "wgpu", "--cpu-activations", "f32"], env: NO_ENV, status: 2, phrase: "--cpu-activations applies to the cpu backend, not wgpu", absent: &["panicked"], writes: false },
    Case { what: "vector: --threads 100000", args: &["vector", "--threads", "100000"], env: NO_ENV, status: 2, phrase: "more than 1024", absent: &[], writes: false },
    Case { what: "vector: --size beyond memory", args: &["vector", "--size", "4294967295", "--backend", "cpu", "--save-dir", "{outdir}"], env: NO_ENV, status: 2, phrase: "of memory;", absent: &["panicked"], writes: false },
    Case { what: "quantize: an 80 GB checkpoint beyond memory", args: &["quantize", "--input", "{huge.st}", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "of memory;", absent: &["panicked"], writes: false },
    Case { what: "quantize: /dev/zero as input", args: &["quantize", "--input", "/dev/zero", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "is a character device, not a regular file", absent: &[], writes: false },
    Case { what: "quantize: a FIFO as input (no hang)", args: &["quantize", "--input", "{fifo}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "is a FIFO", absent: &[], writes: false },
    Case { what: "quantize: a directory as input", args: &["quantize", "--input", "{outdir}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "is a directory", absent: &[], writes: false },
    Case { what: "quantize: a FIFO as --calib", args: &["quantize", "--input", "{gw.st}", "--scheme", "gptq-int4", "--calib", "{fifo}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "is a FIFO", absent: &[], writes: false },
    Case { what: "tensor name with escape sequences", args: &["quantize", "--input", "{ctrl.st}", "--output", "{new.st}"], env: NO_ENV, status: 0, phrase: "evil\\u{1b}[31m\\nname", absent: &["\u{1b}"], writes: true },
    Case { what: "missing input: the OS error said once", args: &["quantize", "--input", "{missing}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "No such file or directory (os error 2)", absent: &["(os error 2): No such"], writes: false },
    Case { what: "not a safetensors file", args: &["quantize", "--input", "{text.st}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "not a valid safetensors file", absent: &[], writes: false },
    Case { what: "truncated safetensors file", args: &["quantize", "--input", "{trunc.st}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "not a valid safetensors file", absent: &[], writes: false },
    // Smaller.
    Case { what: "--symmetric with int4", args: &["quantize", "--scheme", "int4", "--symmetric", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "--symmetric applies to --scheme uniform only", absent: &[], writes: false },
    Case { what: "--threshold with int4", args: &["quantize", "--scheme", "int4", "--threshold", "2", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "--threshold applies to --scheme easyquant4 only", absent: &[], writes: false },
    Case { what: "--threshold 0", args: &["quantize", "--scheme", "easyquant4", "--threshold", "0", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "--threshold must be a positive", absent: &[], writes: false },
    Case { what: "vector: --distribution with --size small", args: &["vector", "--distribution", "laplace", "--save-dir", "{outdir}"], env: NO_ENV, status: 2, phrase: "--distribution applies to generated vectors", absent: &[], writes: false },
    Case { what: "unknown scheme lists uniform", args: &["quantize", "--scheme", "int3", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "awq-int4, w8a8, uniform)", absent: &[], writes: false },
    Case { what: "--bits=-3", args: &["quantize", "--scheme", "uniform", "--bits=-3", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "-3 is not in 2..=8", absent: &["0..=255"], writes: false },
    Case { what: "--bits 9", args: &["quantize", "--scheme", "uniform", "--bits", "9", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "9 is not in 2..=8", absent: &[], writes: false },
    Case { what: "--bits with int4", args: &["quantize", "--scheme", "int4", "--bits", "4", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "--bits applies to --scheme uniform only", absent: &[], writes: false },
    Case { what: "--group 48", args: &["quantize", "--group", "48", "--output", "{new.st}"], env: NO_ENV, status: 2, phrase: "invalid group size 48", absent: &[], writes: false },
    Case { what: "--group row says so (no 'grow')", args: &["quantize", "--input", "{w.st}", "--group", "row", "--output", "{new.st}"], env: NO_ENV, status: 0, phrase: "one group per row", absent: &["grow"], writes: true },
    Case { what: "a 1x1 tensor is larger, not '0.21x smaller'", args: &["quantize", "--input", "{one.st}", "--output", "{new.st}"], env: NO_ENV, status: 0, phrase: "larger than f32", absent: &["x smaller"], writes: true },
    Case { what: "1-D and integer tensors carried over", args: &["quantize", "--input", "{mixed.st}", "--output", "{new.st}"], env: NO_ENV, status: 0, phrase: "carried over unchanged: position_ids", absent: &[], writes: true },
    Case { what: "only a 1-D tensor: nothing to quantize", args: &["quantize", "--input", "{onlybias.st}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "no 2-D float tensor", absent: &[], writes: false },
    Case { what: "a 4-D float tensor without --skip-incompatible", args: &["quantize", "--input", "{conv.st}", "--output", "{new.st}"], env: NO_ENV, status: 1, phrase: "--skip-incompatible carries such tensors over", absent: &[], writes: false },
    Case { what: "a flag value with escape sequences (clap's message escaped)", args: &["quantize", "--bits", "\u{1b}[2J"], env: NO_ENV, status: 2, phrase: "invalid value '", absent: &["\u{1b}"], writes: false },
    Case { what: "clap's own errors exit 2 too", args: &["quantize", "--no-such-flag"], env: NO_ENV, status: 2, phrase: "unexpected argument", absent: &[], writes: false },
];

fn run_case(fx: &Fixture, c: &Case) -> Result<(), String> {
    let before = snapshot(fx.dir.path());
    let args: Vec<String> = c.args.iter().map(|a| fx.expand(a)).collect();
    let mut cmd = bin();
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(fx.dir.path());
    for (k, v) in c.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let out = wait_with_timeout(child, Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}{stderr}");
    let code = out.status.code();
    if code != Some(c.status) {
        return Err(format!(
            "exit status {code:?}, expected {}\n{all}",
            c.status
        ));
    }
    let hay = if c.status == 0 {
        &all
    } else {
        &stderr.to_string()
    };
    if !hay.contains(c.phrase) {
        return Err(format!("no '{}' in the output:\n{all}", c.phrase));
    }
    for a in c.absent {
        if all.contains(a) {
            return Err(format!("'{a}' in the output:\n{all}"));
        }
    }
    if all.contains("panicked") {
        return Err(format!("a panic:\n{all}"));
    }
    let after = snapshot(fx.dir.path());
    let temps: Vec<_> = after
        .keys()
        .filter(|p| p.to_string_lossy().contains(".quantscope-"))
        .collect();
    if !temps.is_empty() {
        return Err(format!("temporary files left: {temps:?}"));
    }
    if !c.writes && after != before {
        let changed: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k)
            .chain(before.keys().filter(|k| !after.contains_key(*k)))
            .collect();
        // An empty --save-dir folder may be created; no file may be.
        if changed.iter().any(|p| !p.is_dir()) {
            return Err(format!("files created or changed: {changed:?}"));
        }
    }
    if c.writes {
        let _ = std::fs::remove_file(fx.dir.path().join("new.st"));
    }
    Ok(())
}

fn wait_with_timeout(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output, String> {
    let start = Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return child.wait_with_output().map_err(|e| e.to_string());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("hung for {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn every_bad_input_row_gives_its_status_and_message_and_changes_nothing() {
    let fx = Fixture::new();
    // Something in the save dir to protect.
    std::fs::write(
        fx.dir.path().join("outdir/results.txt"),
        b"an earlier run\n",
    )
    .unwrap();
    let mut failures = Vec::new();
    for c in CASES {
        if let Err(e) = run_case(&fx, c) {
            failures.push(format!("[{}] {}: {e}", c.what, c.args.join(" ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

/// Files of a run: the outputs, without the temporary files.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[cfg(unix)]
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[cfg(unix)]
#[test]
fn an_interrupted_write_leaves_no_temporary_file() {
    for sig in ["-INT", "-TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("q.st");
        let child = bin()
            .args(["quantize", "--output", out.to_str().unwrap()])
            .env("QUANTSCOPE_FAULT", "stall:20000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the staged temporary file, then interrupt.
        let start = Instant::now();
        while !listing(dir.path())
            .iter()
            .any(|n| n.starts_with(".quantscope-"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no temporary file appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(child.id(), sig);
        let status = wait_with_timeout(child, Duration::from_secs(30))
            .unwrap()
            .status;
        assert!(!status.success());
        assert_eq!(listing(dir.path()), Vec::<String>::new(), "{sig}");
    }
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    for args in [
        &["devices", "--json"][..],
        &["devices"][..],
        &["quantize", "--json", "--output", "OUT"][..],
        &[
            "vector",
            "--backend",
            "cpu",
            "--no-plots",
            "--save-dir",
            "DIR",
        ][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "OUT" => dir.path().join("o.st").to_str().unwrap().to_string(),
                "DIR" => dir.path().join("r").to_str().unwrap().to_string(),
                a => a.to_string(),
            })
            .collect();
        let mut child = bin()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away at once (`| head -0`)
        let out = wait_with_timeout(child, Duration::from_secs(120)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[cfg(unix)]
#[test]
fn outputs_get_the_usual_mode_and_keep_an_existing_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.st");
    let run = || {
        let s = bin()
            .args(["quantize", "--output", out.to_str().unwrap()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
    };
    run();
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_ne!(mode, 0o600, "private temp-file mode leaked");
    assert!(mode & 0o044 != 0 || mode == 0o600, "{mode:o}");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    run();
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn carried_tensors_are_byte_for_byte_in_the_output() {
    let fx = Fixture::new();
    let out = fx.dir.path().join("q.st");
    let s = bin()
        .args([
            "quantize",
            "--input",
            &fx.path("mixed.st"),
            "--output",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(s.success());
    let (src, dst) = (
        std::fs::read(fx.path("mixed.st")).unwrap(),
        std::fs::read(&out).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&src).unwrap(),
        safetensors::SafeTensors::deserialize(&dst).unwrap(),
    );
    for name in ["dense.bias", "position_ids"] {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(
            (x.dtype(), x.shape(), x.data()),
            (y.dtype(), y.shape(), y.data())
        );
    }
    assert!(b.tensor("dense.weight.codes").is_ok());
    assert_eq!(quantscope::io::read_quantized(&out).unwrap().len(), 1);
}
