//! What every backend keeps the same way: the tables of handles it gave out
//! and the live / peak byte counters of what it holds.
//!
//! One implementation so the checks are made once: a handle is looked up or
//! freed only by the backend that made it, and a freed or unknown id is an
//! error, never another object's slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{BackendError, BackendKind, MatrixHandle, TensorHandle};

/// A handle a backend gives out: an id in one of its tables.
pub(crate) trait Handle {
    /// Backend-local identifier.
    fn id(&self) -> u64;
    /// The backend that made it.
    fn backend(&self) -> BackendKind;
    /// What it names, for messages (`matrix`, `tensor`).
    const WHAT: &'static str;
}

impl Handle for MatrixHandle {
    fn id(&self) -> u64 {
        MatrixHandle::id(self)
    }
    fn backend(&self) -> BackendKind {
        MatrixHandle::backend(self)
    }
    const WHAT: &'static str = "matrix";
}

impl Handle for TensorHandle {
    fn id(&self) -> u64 {
        TensorHandle::id(self)
    }
    fn backend(&self) -> BackendKind {
        TensorHandle::backend(self)
    }
    const WHAT: &'static str = "tensor";
}

/// Live and peak bytes of everything a backend holds.
#[derive(Debug, Default)]
pub(crate) struct MemCounter {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemCounter {
    /// Counts `bytes` more.
    pub(crate) fn add(&self, bytes: u64) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }
    /// Counts `bytes` less.
    pub(crate) fn sub(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
    /// Bytes held now.
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }
    /// Highest [`Self::live`] so far.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// The objects behind one kind of handle of one backend.
pub(crate) struct HandleTable<T> {
    backend: BackendKind,
    entries: Mutex<HashMap<u64, Arc<T>>>,
    next_id: AtomicU64,
}

impl<T> HandleTable<T> {
    /// An empty table of `backend`'s.
    pub(crate) fn new(backend: BackendKind) -> Self {
        HandleTable {
            backend,
            entries: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<u64, Arc<T>>>, BackendError> {
        self.entries.lock().map_err(|_| BackendError::Device {
            backend: self.backend,
            message: "handle table lock poisoned by an earlier panic".into(),
        })
    }

    /// Stores `value` under a fresh id and returns the id.
    pub(crate) fn insert(&self, value: T) -> Result<u64, BackendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()?.insert(id, Arc::new(value));
        Ok(id)
    }

    fn check<H: Handle>(&self, h: &H) -> Result<(), BackendError> {
        if h.backend() != self.backend {
            return Err(BackendError::Invalid(format!(
                "{} handle belongs to the {} backend, not {}",
                H::WHAT,
                h.backend(),
                self.backend
            )));
        }
        Ok(())
    }

    fn unknown<H: Handle>(h: &H) -> BackendError {
        BackendError::Invalid(format!("unknown or freed {} {}", H::WHAT, h.id()))
    }

    /// The object behind `h`: refuses another backend's handles and freed or
    /// unknown ids.
    pub(crate) fn get<H: Handle>(&self, h: &H) -> Result<Arc<T>, BackendError> {
        self.check(h)?;
        self.lock()?
            .get(&h.id())
            .cloned()
            .ok_or_else(|| Self::unknown(h))
    }

    /// Removes the object behind `h` (same checks as [`Self::get`]).
    pub(crate) fn remove<H: Handle>(&self, h: &H) -> Result<Arc<T>, BackendError> {
        self.check(h)?;
        self.lock()?.remove(&h.id()).ok_or_else(|| Self::unknown(h))
    }
}
