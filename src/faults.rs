//! Named crash points, for fault tests that need a crash at an exact step
//! rather than at a random moment.
//!
//! With `ALLOT_CRASH_AT=<point>` in its environment, the process aborts
//! (as `kill -9` would stop it: no cleanup, no flush) the first time it
//! reaches that point. Unset, a crash point costs one comparison.

use std::sync::OnceLock;

/// Environment variable naming the crash point to abort at.
pub const CRASH_AT: &str = "ALLOT_CRASH_AT";

/// Aborts the process if `point` is the configured crash point.
pub fn crash_point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(CRASH_AT).ok()).as_deref() == Some(point) {
        eprintln!("allot: crash point {point:?} reached; aborting");
        std::process::abort();
    }
}
