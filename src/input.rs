//! Reading input files: regular files only, memory-mapped.
//!
//! A device node (`/dev/zero`) would be read without bound and a FIFO would
//! block forever, so anything that is not a regular file (after following
//! symbolic links) is refused with a message naming it. Regular files are
//! memory-mapped rather than read: a multi-gigabyte checkpoint costs no heap
//! copy, and the safetensors parser only touches the bytes it needs.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Why an input file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The path is a device, FIFO, socket or directory.
    #[error("cannot read '{path}': it is {kind}, not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// An operating-system error (missing file, permissions, ...).
    #[error("cannot read '{path}': {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: io::Error,
    },
}

/// The bytes of an input file, memory-mapped (empty files are not mapped).
#[derive(Debug)]
pub struct InputBytes(Option<memmap2::Mmap>);

impl std::ops::Deref for InputBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// Opens `path` if it is a regular file and maps it read-only.
///
/// The mapping assumes nobody truncates the file while it is read (the usual
/// contract of memory-mapped model loaders); a file changed underneath may
/// give wrong values, never a write.
pub fn map_regular(path: &Path) -> Result<InputBytes, InputError> {
    let io_err = |cause| InputError::Io {
        path: path.to_path_buf(),
        cause,
    };
    // Checked before opening: opening a FIFO for reading blocks.
    let m = std::fs::metadata(path).map_err(io_err)?;
    if !m.is_file() {
        return Err(InputError::NotRegular {
            path: path.to_path_buf(),
            kind: crate::atomic::kind_of(m.file_type()),
        });
    }
    let f = File::open(path).map_err(io_err)?;
    // Checked again on the open file: the path may have been swapped.
    let m = f.metadata().map_err(io_err)?;
    if !m.is_file() {
        return Err(InputError::NotRegular {
            path: path.to_path_buf(),
            kind: crate::atomic::kind_of(m.file_type()),
        });
    }
    if m.len() == 0 {
        return Ok(InputBytes(None));
    }
    // SAFETY: read-only private mapping of a regular file; see the contract above.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err)?;
    Ok(InputBytes(Some(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_folders_are_refused_and_files_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let err = map_regular(dir.path()).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        #[cfg(unix)]
        {
            let err = map_regular(Path::new("/dev/zero")).unwrap_err();
            assert!(err.to_string().contains("character device"), "{err}");
        }
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(&*map_regular(&p).unwrap(), b"abc");
        std::fs::write(&p, b"").unwrap();
        assert!(map_regular(&p).unwrap().is_empty());
        let err = map_regular(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
