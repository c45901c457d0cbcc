//! Waiting for the ring buffer: the kernel's early wake-up (fill level) or the drain timer,
//! whichever comes first. Shared by every command that reads events.
use std::{os::fd::RawFd, time::Duration};

use tokio::{
    io::{unix::AsyncFd, Interest},
    time::{Interval, MissedTickBehavior},
};

use crate::capture::Capture;

/// Default interval between two drains of the ring buffer.
pub const DEFAULT_DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Tells the caller when to drain the ring buffer.
pub struct RingReady {
    ring: AsyncFd<RingFd>,
    tick: Interval,
}

impl RingReady {
    /// Registers the capture's ring buffer fd with tokio. The returned value must be dropped
    /// before the capture is detached or dropped (it polls the capture's fd).
    pub fn new(capture: &Capture, drain_interval: Duration) -> std::io::Result<RingReady> {
        // SAFETY: the fd stays open while `ring` lives: the capture owns it, and the caller
        // drops this value before detaching or dropping the capture (documented above).
        let ring = unsafe {
            AsyncFd::register_with_interest(RingFd(capture.ring_fd()), Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let mut tick = tokio::time::interval(drain_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(RingReady { ring, tick })
    }

    /// Resolves when the ring buffer should be drained. Cancel-safe.
    pub async fn ready(&mut self) {
        tokio::select! {
            _ = self.tick.tick() => {}
            guard = self.ring.readable() => {
                // Cleared before the caller drains, so a wake-up that arrives during the drain
                // makes the next call return at once instead of waiting for the timer.
                if let Ok(mut g) = guard { g.clear_ready(); }
            }
        }
    }
}

/// The ring buffer fd, for tokio's readiness polling (the fd is owned by the capture).
struct RingFd(RawFd);

impl std::os::fd::AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
