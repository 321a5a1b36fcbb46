//! Named fault points, for fault tests that need a fault at an exact step
//! rather than at a random moment. Each is set by an environment variable
//! and, unset, costs one comparison:
//!
//! - `ALLOT_CRASH_AT=<point>`: the process aborts (as `kill -9` would stop
//!   it: no cleanup, no flush) the first time it reaches that point;
//! - `ALLOT_STALL_AT=<point>:<millis>`: it pauses there once;
//! - `ALLOT_STOP_AT=<point>`: it stops itself with `SIGSTOP` there once,
//!   all of it (lease renewals included), until someone sends `SIGCONT`:
//!   a process frozen at an exact step, as a VM pause would freeze it;
//! - `ALLOT_FAIL_AT=<point>:<millis>`: the step fails, from the first time
//!   it is reached, for that long.
//!
//! They exist only with the cargo feature `faults`, which every test build
//! turns on (the crate is its own dev-dependency with it, so the unit
//! tests, the integration tests and the `allot` binary they spawn all have
//! it) and no other build does: in a release binary these functions are
//! empty and the variables are not read.

/// Environment variable naming the crash point to abort at.
pub const CRASH_AT: &str = "ALLOT_CRASH_AT";
/// Environment variable naming a point to stop the process at once.
pub const STOP_AT: &str = "ALLOT_STOP_AT";
/// Environment variable naming a point to stall at once: `<point>:<millis>`.
pub const STALL_AT: &str = "ALLOT_STALL_AT";
/// Environment variable naming a point that fails for a while:
/// `<point>:<millis>`, counted from the first time it is reached.
pub const FAIL_AT: &str = "ALLOT_FAIL_AT";

pub use points::{crash_point, fail_point, stall_point, stop_point};

#[cfg(feature = "faults")]
mod points {
    use std::sync::OnceLock;

    use super::{CRASH_AT, FAIL_AT, STALL_AT, STOP_AT};

    /// Aborts the process if `point` is the configured crash point.
    pub fn crash_point(point: &str) {
        static AT: OnceLock<Option<String>> = OnceLock::new();
        if AT.get_or_init(|| std::env::var(CRASH_AT).ok()).as_deref() == Some(point) {
            eprintln!("allot: crash point {point:?} reached; aborting");
            std::process::abort();
        }
    }

    /// Stops the whole process with `SIGSTOP` the first time `point` is
    /// reached, if it is the configured stop point.
    pub fn stop_point(point: &str) {
        static AT: OnceLock<Option<String>> = OnceLock::new();
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if AT.get_or_init(|| std::env::var(STOP_AT).ok()).as_deref() == Some(point)
            && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            eprintln!("allot: stop point {point:?} reached; stopping until SIGCONT");
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &std::process::id().to_string()])
                .status();
        }
    }

    /// Parses `<point>:<millis>` from `var`.
    fn timed(var: &str) -> Option<(String, std::time::Duration)> {
        let value = std::env::var(var).ok()?;
        let (point, millis) = value.rsplit_once(':')?;
        Some((
            point.to_string(),
            std::time::Duration::from_millis(millis.parse().ok()?),
        ))
    }

    /// Sleeps the configured time the first time `point` is reached, as a
    /// process paused by the scheduler or a long GC would.
    pub async fn stall_point(point: &str) {
        static AT: OnceLock<Option<(String, std::time::Duration)>> = OnceLock::new();
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let Some((at, pause)) = AT.get_or_init(|| timed(STALL_AT)) else {
            return;
        };
        if at == point && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("allot: stall point {point:?} reached; pausing {pause:?}");
            tokio::time::sleep(*pause).await;
        }
    }

    /// True while `point` is configured to fail: from the first time it is
    /// reached, for the configured time (a disk that is full for a while).
    pub fn fail_point(point: &str) -> bool {
        static AT: OnceLock<Option<(String, std::time::Duration)>> = OnceLock::new();
        static SINCE: OnceLock<std::time::Instant> = OnceLock::new();
        let Some((at, lasting)) = AT.get_or_init(|| timed(FAIL_AT)) else {
            return false;
        };
        at == point && SINCE.get_or_init(std::time::Instant::now).elapsed() < *lasting
    }
}

/// Without the `faults` feature: the same calls, compiled to nothing.
#[cfg(not(feature = "faults"))]
mod points {
    #[inline(always)]
    pub fn crash_point(_point: &str) {}

    #[inline(always)]
    pub fn stop_point(_point: &str) {}

    #[inline(always)]
    pub async fn stall_point(_point: &str) {}

    #[inline(always)]
    pub fn fail_point(_point: &str) -> bool {
        false
    }
}
