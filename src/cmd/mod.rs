//! The command line: one module per command. Each takes the common
//! options and its own arguments, and returns an error to print.

pub mod auction;
pub mod audit;
pub mod bid;
pub mod demo;
pub mod embedded;
pub mod loadtest;
pub mod raise;
pub mod result;
pub mod serve;
pub mod status;
pub mod watch;
pub mod withdraw;

use std::num::NonZeroUsize;

use crate::client::{connect, AllotClient};
use crate::wire::Subjects;

/// Options every command takes.
#[derive(Clone, Debug, clap::Args)]
pub struct Common {
    /// NATS server URL.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// First token of every allot subject (and, upper-cased, of the stream names).
    #[arg(long, global = true, default_value = "allot", value_parser = parse_prefix)]
    pub prefix: Subjects,
    /// Threads that run the process's tasks: a number, or `auto` (one on a
    /// machine of two cores or fewer, else one per core). Snapshot
    /// commits and the gateway's intake have threads of their own.
    #[arg(long, global = true, env = "ALLOT_THREADS", default_value = "auto", value_parser = parse_threads)]
    pub threads: Threads,
}

/// How many threads run a process's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    Auto,
    Exactly(NonZeroUsize),
}

fn parse_threads(s: &str) -> Result<Threads, String> {
    match s {
        "auto" => Ok(Threads::Auto),
        _ => s
            .parse()
            .map(Threads::Exactly)
            .map_err(|_| "must be `auto` or a whole number of at least 1".to_string()),
    }
}

impl Threads {
    /// The runtime that runs a command. One thread is a current-thread
    /// runtime: on two cores shared with nats-server, handing each message
    /// between two worker threads cost serve a third more CPU a bid on one
    /// hot auction (BENCHMARKS.md, "One thread on two cores").
    pub fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        let n = match self {
            Threads::Exactly(n) => n.get(),
            Threads::Auto => match std::thread::available_parallelism().map_or(1, |n| n.get()) {
                n if n <= 2 => 1,
                n => n,
            },
        };
        let mut builder = match n {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        builder.enable_all().build()
    }
}

fn parse_prefix(s: &str) -> Result<Subjects, String> {
    Subjects::new(s).map_err(|e| e.to_string())
}

/// An id argument (auction, bid or bidder), checked before anything is
/// sent: clap's error then names the argument, where the service would
/// answer an id that does not fit in a subject token with no reply at all.
pub fn parse_id(s: &str) -> Result<String, String> {
    match crate::wire::valid_id(s) {
        true => Ok(s.to_string()),
        false => Err(format!(
            "must be 1 to {} characters of [A-Za-z0-9_-]",
            crate::wire::MAX_ID_LEN
        )),
    }
}

impl Common {
    /// A client for the service at `--nats-url`.
    pub async fn client(&self) -> anyhow::Result<AllotClient> {
        let client = connect(&self.nats_url).await?;
        Ok(AllotClient::new(client, self.prefix.clone()))
    }
}

/// Completes on Ctrl-C or SIGTERM; a second one exits the process at once.
pub async fn shutdown_signal() {
    interrupted().await;
    // A second signal stops at once: the first one's graceful stop may be
    // waiting on something that is gone, and the handlers installed here
    // would otherwise swallow every later signal.
    tokio::spawn(async {
        interrupted().await;
        eprintln!("allot: second signal; stopping now");
        std::process::exit(130);
    });
}

/// Waits for Ctrl-C or SIGTERM.
async fn interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Prints a value as one line of JSON.
pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string(value).expect("values serialize")
    );
}
