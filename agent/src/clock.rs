//! Kernel monotonic time (`bpf_ktime_get_ns`) to wall-clock time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer; the clocks used always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Current wall-clock time, unix ns.
pub fn unix_now_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// `CLOCK_MONOTONIC_COARSE` in ns (the last tick's: a few ms of resolution, and cheaper to
/// read than the precise clock, for what is checked per event).
pub fn coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Current `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Converts kernel monotonic timestamps to wall-clock time.
///
/// The offset is sampled at creation with the tightest of several bracketing reads;
/// `refresh` re-samples it (wall clock steps, NTP slew).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime - monotonic, ns.
    offset_ns: i128,
}

impl WallClock {
    pub fn new() -> Self {
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..5 {
            let m0 = clock_ns(libc::CLOCK_MONOTONIC);
            let r = clock_ns(libc::CLOCK_REALTIME);
            let m1 = clock_ns(libc::CLOCK_MONOTONIC);
            let width = m1 - m0;
            let offset = r as i128 - (m0 as i128 + width as i128 / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        WallClock {
            offset_ns: best.map_or(0, |(_, o)| o),
        }
    }

    /// Unix time in ns of a kernel monotonic timestamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).max(0) as u64
    }

    pub fn system_time(&self, monotonic_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.unix_ns(monotonic_ns))
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_maps_to_now() {
        let clock = WallClock::new();
        let wall = clock.unix_ns(monotonic_ns());
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        assert!(wall.abs_diff(real) < 5_000_000, "{wall} vs {real}");
    }
}
