//! Atomic file writes: the one way quantscope writes a file.
//!
//! Every file the tool writes (quantized checkpoints, `results.txt`,
//! `results.json`, plots, analysis results, reports) goes through a
//! [`Transaction`]: each file is first written in full to a temporary file
//! beside its target (`.quantscope-<pid>-<n>.tmp.<ext>`), flushed and
//! fsynced; only when every file of the run is complete are they renamed over
//! their targets, one after another, with the old versions kept as hard links
//! until the last rename has succeeded. So a run leaves either all of its
//! files or none of them, a reader never sees half a file, and nothing
//! half-written is left behind:
//!
//! - dropping an uncommitted transaction (any error path) removes its
//!   temporary files;
//! - [`install_signal_cleanup`] removes the temporary files of every live
//!   transaction on SIGINT, SIGTERM and SIGHUP before the process exits (the
//!   renames of a commit run under the registry lock, so a signal arriving
//!   mid-commit waits for the commit to finish or roll back);
//! - a failed rename rolls the earlier ones back.
//!
//! The rules for the target path (checked by [`resolve_output`]):
//! - a path that does not exist yet is created (its folder too);
//! - an existing regular file is replaced and keeps its permission bits;
//! - a symbolic link is written *through*: the file it points to is
//!   replaced and the link is kept (a link to nothing is refused);
//! - anything else (a directory, device node, FIFO, socket) is refused;
//! - an output that is the same file as an input (same device and inode,
//!   symbolic links followed) is refused by [`refuse_same_file`].
//!
//! New files get the usual mode `0666 & ~umask` (the temporary file is
//! created with mode 0666 and the kernel applies the umask).
//!
//! ```no_run
//! use quantscope::atomic::{write_atomic, Transaction};
//! use std::io::Write;
//! # fn main() -> Result<(), quantscope::atomic::AtomicError> {
//! write_atomic("out/report.html".as_ref(), |w| w.write_all(b"<html></html>"))?;
//! let mut t = Transaction::new();
//! t.write("out/a.json".as_ref(), |w| w.write_all(b"{}"))?;
//! t.append("out/log.txt".as_ref(), b"one more line\n")?;
//! t.commit()?; // both files, or neither
//! # Ok(()) }
//! ```
//!
//! Fault injection for tests: `QUANTSCOPE_FAULT=write:N` makes the N-th file
//! staged by the process fail as if the disk were full, `rename:N` makes the
//! N-th rename of a commit fail, and `stall:MS` sleeps MS milliseconds after
//! each file is staged (so a test can send a signal while temporary files
//! exist). Several are separated by commas.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Errors of atomic writes; every one names the file.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// The output is one of the inputs.
    #[error(
        "output '{path}' is the same file as the input '{input}': refusing to overwrite an input \
         (choose another output path)"
    )]
    SameAsInput {
        /// The output path given.
        path: PathBuf,
        /// The input path it resolves to.
        input: PathBuf,
    },
    /// The output exists and is not a regular file.
    #[error(
        "output '{path}' is {kind}, not a regular file: outputs must be regular files or new paths"
    )]
    NotRegular {
        /// The output path given.
        path: PathBuf,
        /// What it is ("a directory", "a character device", ...).
        kind: &'static str,
    },
    /// The output is a symbolic link to nothing.
    #[error(
        "output '{path}' is a symbolic link to a missing file ('{target}'): refusing to guess"
    )]
    DanglingLink {
        /// The output path given.
        path: PathBuf,
        /// What the link points at.
        target: PathBuf,
    },
    /// One transaction names the same target twice.
    #[error("'{path}' would be written twice in one run")]
    Duplicate {
        /// The target.
        path: PathBuf,
    },
    /// An operating-system error.
    #[error("cannot write '{path}': {cause}")]
    Io {
        /// The target.
        path: PathBuf,
        /// The OS error (its text is in the message; kept for callers).
        cause: io::Error,
    },
    /// A renderer that writes to a path (plotters) failed.
    #[error("cannot write '{path}': {reason}")]
    Render {
        /// The target.
        path: PathBuf,
        /// The renderer's message.
        reason: String,
    },
}

impl AtomicError {
    fn io(path: &Path, cause: io::Error) -> Self {
        AtomicError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

// ---------------------------------------------------------------------------
// Registry of live temporary files (removed on a signal).

/// Temporary files that exist right now. The signal handler removes them;
/// commits hold the lock for their renames so the handler waits for them.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic elsewhere must not stop the cleanup: take the data anyway.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn unregister(list: &mut Vec<PathBuf>, p: &Path) {
    if let Some(i) = list.iter().position(|q| q == p) {
        list.swap_remove(i);
    }
}

/// Removes every live temporary file now (what the signal handler does).
/// Returns how many were removed. Meant for a binary's own exit paths.
pub fn remove_live_temporaries() -> usize {
    let mut list = live();
    let n = list.len();
    for p in list.drain(..) {
        let _ = fs::remove_file(&p);
    }
    n
}

/// Installs a handler for SIGINT, SIGTERM and SIGHUP that removes every live
/// temporary file and exits with status 128 + signal number. Call once at the
/// start of `main`. A no-op off unix.
pub fn install_signal_cleanup() -> io::Result<()> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        std::thread::Builder::new()
            .name("quantscope-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    // Held until exit: no new temporary file is registered,
                    // and a commit in progress finishes first.
                    let mut list = live();
                    for p in list.drain(..) {
                        let _ = fs::remove_file(&p);
                    }
                    std::process::exit(128 + sig);
                }
            })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Fault injection (tests only; read once from QUANTSCOPE_FAULT).

#[derive(Default)]
struct Faults {
    write: Option<usize>,
    rename: Option<usize>,
    stall_ms: u64,
}

fn faults() -> &'static Faults {
    static F: OnceLock<Faults> = OnceLock::new();
    F.get_or_init(|| {
        let mut f = Faults::default();
        if let Ok(s) = std::env::var("QUANTSCOPE_FAULT") {
            for item in s.split(',') {
                match item.split_once(':') {
                    Some(("write", n)) => f.write = n.trim().parse().ok(),
                    Some(("rename", n)) => f.rename = n.trim().parse().ok(),
                    Some(("stall", n)) => f.stall_ms = n.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        f
    })
}

static STAGED_COUNT: AtomicUsize = AtomicUsize::new(0);
static RENAME_COUNT: AtomicUsize = AtomicUsize::new(0);

fn injected(which: Option<usize>, counter: &AtomicUsize) -> io::Result<()> {
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    if which == Some(n) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "No space left on device (injected by QUANTSCOPE_FAULT)",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Path rules.

/// A file's identity: device and inode (unix), else its canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileId(FileIdInner);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FileIdInner {
    #[cfg(unix)]
    DevIno(u64, u64),
    #[cfg_attr(unix, allow(dead_code))]
    Path(PathBuf),
}

impl FileId {
    /// The identity of the file `path` resolves to (symbolic links followed);
    /// `None` when it does not exist.
    pub fn of(path: &Path) -> Option<FileId> {
        let m = fs::metadata(path).ok()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(FileId(FileIdInner::DevIno(m.dev(), m.ino())))
        }
        #[cfg(not(unix))]
        {
            let _ = m;
            fs::canonicalize(path)
                .ok()
                .map(|p| FileId(FileIdInner::Path(p)))
        }
    }
}

/// Refuses an `output` that is the same file as one of `inputs` (same device
/// and inode, symbolic links and hard links included). Call it before doing
/// any work, with every file the run reads.
pub fn refuse_same_file(output: &Path, inputs: &[&Path]) -> Result<(), AtomicError> {
    let Some(out) = FileId::of(output) else {
        return Ok(());
    };
    for input in inputs {
        if FileId::of(input).as_ref() == Some(&out) {
            return Err(AtomicError::SameAsInput {
                path: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// What a non-regular file is, for messages.
pub fn kind_of(t: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// The file that writing `path` replaces, after the rules above: `path`
/// itself when it is new or a regular file, the final target of a symbolic
/// link; an error for anything else.
pub fn resolve_output(path: &Path) -> Result<PathBuf, AtomicError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(AtomicError::io(path, e)),
        Ok(m) if m.file_type().is_symlink() => match fs::metadata(path) {
            Ok(t) if t.is_file() => fs::canonicalize(path).map_err(|e| AtomicError::io(path, e)),
            Ok(t) => Err(AtomicError::NotRegular {
                path: path.to_path_buf(),
                kind: kind_of(t.file_type()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(AtomicError::DanglingLink {
                path: path.to_path_buf(),
                target: fs::read_link(path).unwrap_or_default(),
            }),
            Err(e) => Err(AtomicError::io(path, e)),
        },
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(m) => Err(AtomicError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(m.file_type()),
        }),
    }
}

/// The folder a target lives in (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates a folder for outputs (and its parents) with a message that names it.
pub fn create_folder(dir: &Path) -> Result<(), AtomicError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(m) => {
            return Err(AtomicError::NotRegular {
                path: dir.to_path_buf(),
                kind: match kind_of(m.file_type()) {
                    "a regular file" => "a regular file (a folder is needed)",
                    k => k,
                },
            })
        }
        Err(_) => {}
    }
    fs::create_dir_all(dir).map_err(|e| AtomicError::io(dir, e))
}

// ---------------------------------------------------------------------------
// Staged files and transactions.

/// One file written to its temporary path, waiting for the commit.
#[derive(Debug)]
struct Staged {
    /// The path the caller named (for messages and the returned list).
    named: PathBuf,
    /// The file that is replaced (after following a symbolic link).
    target: PathBuf,
    /// The temporary file beside it.
    temp: PathBuf,
}

/// Creates a new, registered, empty temporary file beside `target`, with mode
/// 0666 (before the umask), or the mode of the file it replaces.
fn create_temp(target: &Path) -> Result<(PathBuf, File), AtomicError> {
    let dir = folder_of(target);
    create_folder(&dir)?;
    let ext = target
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let existing_mode = fs::metadata(target).ok().map(|m| m.permissions());
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".quantscope-{}-{n}.tmp{ext}", std::process::id()));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o666);
        }
        // Registered before it exists, so a signal can never miss it.
        live().push(temp.clone());
        match opts.open(&temp) {
            Ok(f) => {
                if let Some(p) = existing_mode {
                    if let Err(e) = f.set_permissions(p) {
                        discard(&temp);
                        return Err(AtomicError::io(target, e));
                    }
                }
                return Ok((temp, f));
            }
            Err(e) => {
                unregister(&mut live(), &temp);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(AtomicError::io(target, e));
                }
            }
        }
    }
}

/// Removes a temporary file and forgets it.
fn discard(temp: &Path) {
    let mut list = live();
    let _ = fs::remove_file(temp);
    unregister(&mut list, temp);
}

fn stall() {
    let ms = faults().stall_ms;
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// A set of files written together: all of them appear, or none.
///
/// Stage files with [`write`](Self::write), [`append`](Self::append) or
/// [`render`](Self::render); nothing is visible at the targets until
/// [`commit`](Self::commit). Dropping the transaction without committing
/// removes every temporary file.
#[derive(Debug, Default)]
pub struct Transaction {
    staged: Vec<Staged>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Transaction::default()
    }

    /// Number of files staged so far.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// The paths staged so far, as the caller named them.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.staged.iter().map(|s| s.named.clone()).collect()
    }

    fn begin(&self, path: &Path) -> Result<PathBuf, AtomicError> {
        let target = resolve_output(path)?;
        let id = FileId::of(&target);
        for s in &self.staged {
            let same = s.target == target || (id.is_some() && FileId::of(&s.target) == id);
            if same {
                return Err(AtomicError::Duplicate {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(target)
    }

    fn finish_staging(&mut self, named: &Path, target: PathBuf, temp: PathBuf) {
        self.staged.push(Staged {
            named: named.to_path_buf(),
            target,
            temp,
        });
        stall();
    }

    /// Stages `path` with the bytes `fill` writes (buffered; flushed and
    /// fsynced before this returns).
    pub fn write(
        &mut self,
        path: &Path,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), AtomicError> {
        let target = self.begin(path)?;
        let (temp, file) = create_temp(&target)?;
        let result = (|| {
            injected(faults().write, &STAGED_COUNT)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            fill(&mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })();
        if let Err(e) = result {
            discard(&temp);
            return Err(AtomicError::io(path, e));
        }
        self.finish_staging(path, target, temp);
        Ok(())
    }

    /// Stages `path` as its current contents (nothing when it does not
    /// exist) followed by `extra`: an append that is atomic like the rest.
    pub fn append(&mut self, path: &Path, extra: &[u8]) -> Result<(), AtomicError> {
        let target = resolve_output(path)?;
        let old = match fs::read(&target) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(AtomicError::io(path, e)),
        };
        self.write(path, |w| {
            w.write_all(&old)?;
            w.write_all(extra)
        })
    }

    /// Stages `path` through a renderer that writes to a path of its own
    /// (plotters' bitmap backend): `render` gets the temporary path, which
    /// ends with the target's extension.
    pub fn render(
        &mut self,
        path: &Path,
        render: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<(), AtomicError> {
        let target = self.begin(path)?;
        let (temp, file) = create_temp(&target)?;
        drop(file);
        if let Err(e) = injected(faults().write, &STAGED_COUNT) {
            discard(&temp);
            return Err(AtomicError::io(path, e));
        }
        if let Err(reason) = render(&temp) {
            discard(&temp);
            return Err(AtomicError::Render {
                path: path.to_path_buf(),
                reason,
            });
        }
        // The renderer may have replaced the file: check it is still ours and regular.
        let synced = (|| {
            let m = fs::symlink_metadata(&temp)?;
            if !m.is_file() {
                return Err(io::Error::other("the renderer left no regular file"));
            }
            File::open(&temp)?.sync_all()
        })();
        if let Err(e) = synced {
            discard(&temp);
            return Err(AtomicError::io(path, e));
        }
        self.finish_staging(path, target, temp);
        Ok(())
    }

    /// Renames every staged file over its target. If a rename fails, the
    /// targets already replaced get their old contents back (new ones are
    /// removed) and the error is returned. Returns the paths written.
    pub fn commit(mut self) -> Result<Vec<PathBuf>, AtomicError> {
        let staged = std::mem::take(&mut self.staged);
        // Held for the whole commit: the signal handler waits for it.
        let mut list = live();
        // Old versions, kept as hard links until every rename has succeeded.
        let mut backups: Vec<Option<PathBuf>> = Vec::with_capacity(staged.len());
        let fail = |list: &mut Vec<PathBuf>, backups: &[Option<PathBuf>], done: usize| {
            for (s, b) in staged[..done].iter().zip(backups).rev() {
                match b {
                    Some(b) => {
                        let _ = fs::rename(b, &s.target);
                    }
                    None => {
                        let _ = fs::remove_file(&s.target);
                    }
                }
            }
            for s in &staged {
                let _ = fs::remove_file(&s.temp);
                unregister(list, &s.temp);
            }
            for b in backups.iter().flatten() {
                let _ = fs::remove_file(b);
                unregister(list, b);
            }
        };
        for (i, s) in staged.iter().enumerate() {
            let backup = if s.target.exists() {
                let b = s.temp.with_extension("bak");
                list.push(b.clone());
                let _ = fs::remove_file(&b);
                match fs::hard_link(&s.target, &b).or_else(|_| fs::copy(&s.target, &b).map(|_| ()))
                {
                    Ok(()) => Some(b),
                    Err(e) => {
                        unregister(&mut list, &b);
                        fail(&mut list, &backups, i);
                        return Err(AtomicError::io(&s.named, e));
                    }
                }
            } else {
                None
            };
            backups.push(backup);
            let renamed = injected(faults().rename, &RENAME_COUNT)
                .and_then(|_| fs::rename(&s.temp, &s.target));
            if let Err(e) = renamed {
                fail(&mut list, &backups, i);
                return Err(AtomicError::io(&s.named, e));
            }
            unregister(&mut list, &s.temp);
        }
        for b in backups.iter().flatten() {
            let _ = fs::remove_file(b);
            unregister(&mut list, b);
        }
        drop(list);
        // Durability of the renames: fsync each folder once (best effort;
        // not every platform can open a folder).
        let mut dirs: Vec<PathBuf> = staged.iter().map(|s| folder_of(&s.target)).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            if let Ok(f) = File::open(&d) {
                let _ = f.sync_all();
            }
        }
        Ok(staged.into_iter().map(|s| s.named).collect())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        for s in self.staged.drain(..) {
            discard(&s.temp);
        }
    }
}

/// Writes one file atomically: [`Transaction::write`] then commit.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), AtomicError> {
    let mut t = Transaction::new();
    t.write(path, fill)?;
    t.commit().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_transaction_writes_all_files_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        fs::write(&a, b"old a").unwrap();
        let mut t = Transaction::new();
        t.write(&a, |w| w.write_all(b"new a")).unwrap();
        t.append(&b, b"new b").unwrap();
        // Nothing visible before the commit.
        assert_eq!(fs::read(&a).unwrap(), b"old a");
        assert!(!b.exists());
        assert_eq!(t.commit().unwrap().len(), 2);
        assert_eq!(fs::read(&a).unwrap(), b"new a");
        assert_eq!(fs::read(&b).unwrap(), b"new b");
        assert_eq!(names(dir.path()), ["a.txt", "b.txt"]);

        // A failed stage drops the transaction: no temporary file, no change.
        let mut t = Transaction::new();
        t.append(&a, b" again").unwrap();
        let err = t
            .write(&b, |_| Err(io::Error::other("disk on fire")))
            .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        drop(t);
        assert_eq!(fs::read(&a).unwrap(), b"new a");
        assert_eq!(names(dir.path()), ["a.txt", "b.txt"]);
    }

    #[test]
    fn a_failed_rename_rolls_back_the_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        fs::write(&a, b"old a").unwrap();
        let mut t = Transaction::new();
        t.write(&a, |w| w.write_all(b"new a")).unwrap();
        t.write(&b, |w| w.write_all(b"new b")).unwrap();
        t.write(&c, |w| w.write_all(b"new c")).unwrap();
        // A folder appears at c after staging: its rename fails.
        fs::create_dir(&c).unwrap();
        fs::write(c.join("x"), b"x").unwrap();
        assert!(t.commit().is_err());
        assert_eq!(fs::read(&a).unwrap(), b"old a");
        assert!(!b.exists());
        assert_eq!(names(dir.path()), ["a", "c"]);
    }

    #[test]
    fn outputs_that_are_not_regular_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(dir.path(), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        #[cfg(unix)]
        {
            let err = write_atomic(Path::new("/dev/null"), |_| Ok(())).unwrap_err();
            assert!(err.to_string().contains("character device"), "{err}");
            let link = dir.path().join("dangling");
            std::os::unix::fs::symlink(dir.path().join("missing"), &link).unwrap();
            let err = write_atomic(&link, |_| Ok(())).unwrap_err();
            assert!(err.to_string().contains("missing file"), "{err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_written_through_and_modes_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"old").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, |w| w.write_all(b"new")).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&real).unwrap(), b"new");
        let mode = fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // A new file: 0666 minus the umask, never the 0600 of a private temp file.
        let fresh = dir.path().join("fresh");
        write_atomic(&fresh, |w| w.write_all(b"x")).unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        // The umask, from /proc where there is one (Linux).
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(umask) = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|u| u32::from_str_radix(u.trim(), 8).ok())
        {
            assert_eq!(mode, 0o666 & !umask, "mode {mode:o}, umask {umask:o}");
        }
    }

    #[test]
    fn the_same_file_is_refused_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"data").unwrap();
        let hard = dir.path().join("hard");
        fs::hard_link(&a, &hard).unwrap();
        assert!(refuse_same_file(&hard, &[&a]).is_err());
        assert!(refuse_same_file(&a, &[&a]).is_err());
        let dotted = dir.path().join(".").join("a");
        assert!(refuse_same_file(&dotted, &[&a]).is_err());
        assert!(refuse_same_file(&dir.path().join("new"), &[&a]).is_ok());
        assert_eq!(fs::read(&a).unwrap(), b"data");
    }

    #[test]
    fn one_target_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut t = Transaction::new();
        t.write(&a, |w| w.write_all(b"1")).unwrap();
        assert!(matches!(
            t.write(&a, |w| w.write_all(b"2")),
            Err(AtomicError::Duplicate { .. })
        ));
    }
}
