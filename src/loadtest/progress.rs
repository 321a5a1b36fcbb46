//! Live progress: a bar on a terminal, a plain line every few seconds
//! otherwise (a CI log, a pipe).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts at one moment.
#[derive(Clone, Copy, Default)]
pub struct Snapshot {
    pub sent: u64,
    pub replied: u64,
    pub accepted: u64,
    pub decided: u64,
    pub errors: u64,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    strategy: &'static str,
    started: Instant,
    last_line: Instant,
    last: (Instant, u64),
}

impl Progress {
    /// `total`: requests to send, if known.
    pub fn new(strategy: &'static str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>4} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .expect("template is valid"),
            );
            bar.set_prefix(strategy);
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            strategy,
            started: now,
            last_line: now,
            last: (now, 0),
        }
    }

    pub fn update(&mut self, s: Snapshot) {
        let now = Instant::now();
        let rate = (s.replied - self.last.1) as f64
            / now.duration_since(self.last.0).as_secs_f64().max(1e-9);
        let msg = format!(
            "{rate:>7.0} bids/s  accepted {}  outcomes {}  errors {}",
            s.accepted, s.decided, s.errors
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(s.sent);
                bar.set_message(msg);
            }
            None if now.duration_since(self.last_line) >= Duration::from_secs(2) => {
                eprintln!(
                    "{:>4} {:>6.1}s  sent {}  {msg}",
                    self.strategy,
                    now.duration_since(self.started).as_secs_f64(),
                    s.sent
                );
                self.last_line = now;
            }
            None => {}
        }
        self.last = (now, s.replied);
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
