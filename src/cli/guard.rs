//! What every command shares to fail cleanly: the exit status of a bad flag
//! value, a stdout that never panics (EPIPE ends the output quietly), names
//! with control characters escaped, and sizes checked against the machine
//! before anything is allocated.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// A flag value the command refuses (exit status 2, like clap's own errors).
#[derive(Debug)]
pub struct BadFlag(pub String);

impl fmt::Display for BadFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadFlag {}

/// Returns early with a [`BadFlag`] error (exit status 2).
macro_rules! bad_flag {
    ($($t:tt)*) => {
        return Err(anyhow::Error::new($crate::cli::guard::BadFlag(format!($($t)*))))
    };
}
pub(crate) use bad_flag;

/// Whether `e` (or a cause) is a bad flag value.
pub fn is_bad_flag(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<BadFlag>())
}

/// 0: fine; 1: the reader went away (EPIPE); 2: another write error.
static STDOUT_STATE: AtomicU8 = AtomicU8::new(0);

/// Writes one line to stdout. When the reader has gone (EPIPE: `| head`),
/// the rest of the output is dropped quietly and the command carries on
/// (files are still written); another write error is reported at exit.
pub fn write_line(args: fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_STATE.load(Ordering::Relaxed) != 0 {
        return;
    }
    let mut out = std::io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    if let Err(e) = r {
        let state = if e.kind() == std::io::ErrorKind::BrokenPipe {
            1
        } else {
            2
        };
        STDOUT_STATE.store(state, Ordering::Relaxed);
    }
}

/// Whether printing failed for another reason than a closed pipe.
pub fn stdout_failed() -> bool {
    STDOUT_STATE.load(Ordering::Relaxed) == 2
}

/// `println!` that never panics: see [`write_line`].
macro_rules! outln {
    () => { $crate::cli::guard::write_line(format_args!("")) };
    ($($t:tt)*) => { $crate::cli::guard::write_line(format_args!($($t)*)) };
}
pub(crate) use outln;

/// Installs the fallbacks for output written by other means (`println!` in
/// a command that does not use [`outln!`]): a panic from a closed stdout ends
/// the process quietly, after removing live temporary files.
pub fn install_pipe_guard() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            quantscope::atomic::remove_live_temporaries();
            std::process::exit(0);
        }
        default(info);
    }));
}

/// `s` with every control character escaped (`\n`, `\u{1b}`, ...), for
/// names and messages that reach a terminal.
pub fn esc(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// [`esc`], keeping line breaks (for multi-line messages such as clap's).
pub fn esc_keep_lines(s: &str) -> String {
    s.split('\n').map(esc).collect::<Vec<_>>().join("\n")
}

/// Bytes of memory available to this process now (sysinfo).
pub fn available_memory() -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    // Within a cgroup limit, that limit is what counts.
    let avail = sys.available_memory();
    match sys.cgroup_limits() {
        Some(c) => avail.min(c.free_memory),
        None => avail,
    }
}

/// Bytes as `12.3 GiB (13207024435 bytes)`.
pub fn show_bytes(b: u128) -> String {
    format!("{:.1} GiB ({b} bytes)", b as f64 / (1u64 << 30) as f64)
}

/// Refuses (exit status 2) a run that needs more host memory than is
/// available now, naming what needs it.
pub fn check_host_memory(what: &str, needed: Option<u128>) -> anyhow::Result<()> {
    let avail = available_memory() as u128;
    match needed {
        None => bad_flag!("{what}: the size overflows a 128-bit byte count"),
        Some(n) if n > avail => bad_flag!(
            "{what} needs {} of memory; {} is available on this machine",
            show_bytes(n),
            show_bytes(avail)
        ),
        Some(_) => Ok(()),
    }
}

/// `a · b · ...` in u128, `None` on overflow.
pub fn product(factors: &[u128]) -> Option<u128> {
    factors.iter().try_fold(1u128, |a, &b| a.checked_mul(b))
}

/// Checks a count flag is within `lo..=hi` (exit status 2 otherwise).
pub fn check_count(
    flag: &str,
    value: usize,
    lo: usize,
    hi: usize,
    why: &str,
) -> anyhow::Result<()> {
    if value < lo || value > hi {
        bad_flag!("{flag} {value} is outside {lo}..={hi} ({why})");
    }
    Ok(())
}
