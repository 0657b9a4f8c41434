//! Memory timelines: timestamped, phase-labelled samples of what the
//! backend holds (its own byte accounting, the allocator's reservation and
//! the driver's view where the backend reports them) and of the process's
//! resident set (sysinfo).

use std::time::Instant;

use super::schema::{MemorySample, MemoryTimeline};
use crate::backend::Backend;

/// Resident set size of this process in bytes (0 where unknown).
pub fn process_rss_bytes() -> u64 {
    let pid = match sysinfo::get_current_pid() {
        Ok(p) => p,
        Err(_) => return 0,
    };
    let mut sys = sysinfo::System::new();
    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    sys.process(pid).map(|p| p.memory()).unwrap_or(0)
}

/// Records a [`MemoryTimeline`] for one strategy x backend pair.
pub struct TimelineRecorder {
    start: Instant,
    timeline: MemoryTimeline,
}

impl Default for TimelineRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl TimelineRecorder {
    /// Starts the clock.
    pub fn new() -> Self {
        TimelineRecorder {
            start: Instant::now(),
            timeline: MemoryTimeline::default(),
        }
    }

    /// One sample labelled `phase`, from `backend` when there is one.
    pub fn sample(&mut self, phase: &str, backend: Option<&dyn Backend>) {
        let mem = backend.map(|b| b.memory());
        let gpu = backend.is_some_and(|b| b.kind() != crate::backend::BackendKind::Cpu);
        self.timeline.samples.push(MemorySample {
            t_s: self.start.elapsed().as_secs_f64(),
            phase: phase.into(),
            backend_live_bytes: mem.as_ref().map_or(0, |m| m.live_bytes),
            process_rss_bytes: process_rss_bytes(),
            // The CPU backend's "device" is the whole machine's RAM: not a
            // figure about this run, so it is left out.
            device_used_bytes: mem
                .as_ref()
                .and_then(|m| m.device_used_bytes)
                .filter(|_| gpu),
            reserved_bytes: mem.as_ref().and_then(|m| m.reserved_bytes),
        });
    }

    /// The samples so far.
    pub fn timeline(&self) -> &MemoryTimeline {
        &self.timeline
    }

    /// The finished timeline.
    pub fn finish(self) -> MemoryTimeline {
        self.timeline
    }
}

impl MemoryTimeline {
    /// Highest backend bytes over the samples.
    pub fn peak_backend_bytes(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.backend_live_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Highest process RSS over the samples.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.process_rss_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Highest backend bytes over the samples of `phase`.
    pub fn peak_in(&self, phase: &str) -> Option<u64> {
        self.samples
            .iter()
            .filter(|s| s.phase == phase)
            .map(|s| s.backend_live_bytes)
            .max()
    }
}
