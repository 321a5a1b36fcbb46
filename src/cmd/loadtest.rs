//! `allot loadtest`: drive bids at a running service (or a private one),
//! print what it measured, and fail when an invariant broke.

use std::path::PathBuf;
use std::time::Duration;

use super::embedded::Embedded;
use super::Common;
use crate::loadtest::report::{micros_text as duration, Latency, Report};
use crate::loadtest::workload::Workload;
use crate::loadtest::{self, html, Options, Outcome, Strategy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategies {
    Tcc,
    Occ,
    Lock,
    /// All three, one after the other, on the same workload.
    All,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start a private nats-server and service instead of using --nats-url.
    #[arg(long)]
    pub embedded: bool,
    /// How concurrent bids are handled.
    #[arg(long, value_enum, default_value_t = Strategies::Tcc)]
    pub strategy: Strategies,
    /// Auctions to spread the bids over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub auctions: u32,
    /// Winning slots per auction.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// Distinct bidders.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub bidders: u32,
    /// Most slots one bidder may win per auction.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_wins: u32,
    /// Smallest winning amount (amounts bid are 1 to 1000).
    #[arg(long, default_value_t = 0)]
    pub min_amount: u64,
    /// Bid requests to send, duplicates included.
    #[arg(long, default_value_t = 20_000, conflicts_with = "duration")]
    pub bids: u64,
    /// Send for this many seconds instead of a number of bids.
    #[arg(long, value_parser = positive)]
    pub duration: Option<f64>,
    /// Requests in flight at once (at most, with --rate).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Open loop: send this many bids per second on a fixed schedule;
    /// latency counts from each bid's due time.
    #[arg(long, value_parser = positive)]
    pub rate: Option<f64>,
    /// Fraction of requests that resend an earlier bid with the same id.
    #[arg(long, default_value_t = 0.01, value_parser = fraction)]
    pub duplicates: f64,
    /// Fraction of requests sent to one hot auction (the rest are uniform).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub hot: f64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First measure raw JetStream publishes on the same server, and report
    /// the pipeline's rate as a ratio of it.
    #[arg(long)]
    pub baseline: bool,
    /// Write every report as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write a self-contained HTML page with charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Seconds to wait for a missing outcome before checking anyway.
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// Tries per bid when the service does not answer (each resend keeps
    /// the bid id, so it is safe); 100 ms apart.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub attempts: u32,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let strategies = match args.strategy {
        Strategies::Tcc => vec![Strategy::Tcc],
        Strategies::Occ => vec![Strategy::Occ],
        Strategies::Lock => vec![Strategy::Lock],
        Strategies::All => vec![Strategy::Tcc, Strategy::Occ, Strategy::Lock],
    };
    let options = Options {
        workload: Workload {
            auctions: args.auctions,
            capacity: args.capacity,
            min_amount: args.min_amount,
            max_wins_per_bidder: args.max_wins,
            bidders: args.bidders,
            requests: args.duration.is_none().then_some(args.bids),
            duration_secs: args.duration,
            concurrency: args.concurrency as usize,
            rate: args.rate,
            duplicates: args.duplicates,
            hot: args.hot,
            seed: args.seed,
            // Unique per run, so runs on one server never share an auction.
            run_id: format!("lt{:x}", chrono::Utc::now().timestamp_millis()),
            // The lifecycle knobs have no flags yet.
            policy: Default::default(),
            withdraws: 0.0,
            early_withdraws: 0.0,
            raises: 0.0,
            close_after_secs: None,
        },
        strategies,
        baseline: args.baseline,
        settle: Duration::from_secs(args.settle_secs),
        attempts: args.attempts,
        progress: !args.quiet,
    };
    let outcome = if args.embedded {
        let embedded = Embedded::start(common.prefix).await?;
        let outcome = loadtest::run(&embedded.client, &options).await;
        embedded.stop().await?;
        outcome?
    } else {
        loadtest::run(&common.client().await?, &options).await?
    };
    print!("{}", table(&outcome));
    if let Some(path) = &args.report {
        let json = serde_json::json!({ "baseline": outcome.baseline, "runs": outcome.reports });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&outcome.reports))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if !outcome.ok() {
        anyhow::bail!("invariant check failed");
    }
    Ok(())
}

/// How one row of the table shows a report.
type Cell<'a> = Box<dyn Fn(&Report) -> String + 'a>;

/// The human-readable summary.
fn table(outcome: &Outcome) -> String {
    let mut out = String::new();
    if let Some(w) = outcome.reports.first().map(|r| &r.workload) {
        out += &format!(
            "workload: {} auctions x {} slots, {} bidders, {}, {}, {:.0}% duplicates, {:.0}% on one hot auction\n",
            w.auctions,
            w.capacity,
            w.bidders,
            match (w.requests, w.duration_secs) {
                (Some(n), _) => format!("{n} requests"),
                (None, Some(s)) => format!("{s} s"),
                _ => String::new(),
            },
            match w.rate {
                Some(r) => format!("open loop at {r} bids/s (up to {} in flight)", w.concurrency),
                None => format!("{} in flight", w.concurrency),
            },
            w.duplicates * 100.0,
            w.hot * 100.0,
        );
    }
    if let Some(b) = &outcome.baseline {
        out += &format!(
            "baseline: {:.0} raw JetStream publishes/s ({} bytes, {} in flight)\n",
            b.per_sec, b.payload_bytes, b.in_flight
        );
    }
    let lat = |l: &Latency| {
        format!(
            "{} / {} / {} / {}",
            duration(l.p50_us),
            duration(l.p99_us),
            duration(l.p999_us),
            duration(l.max_us)
        )
    };
    let rows: Vec<(&str, Cell<'_>)> = vec![
        (
            "bids/s replied",
            Box::new(|r| format!("{:.0}", r.replied_per_sec)),
        ),
        (
            "bids/s decided",
            Box::new(|r| format!("{:.0}", r.decided_per_sec)),
        ),
        (
            "vs baseline",
            Box::new(|r| r.baseline_ratio.map_or("-".into(), |x| format!("{x:.2}"))),
        ),
        (
            "requests / bids",
            Box::new(|r| format!("{} / {}", r.requests, r.bids)),
        ),
        ("accepted", Box::new(|r| r.accepted.to_string())),
        ("rejected", Box::new(|r| counts(&r.rejected))),
        ("errors", Box::new(|r| counts(&r.errors))),
        ("confirmed", Box::new(|r| r.confirmed.to_string())),
        ("cancelled", Box::new(|r| counts(&r.cancelled))),
        (
            "reply p50/p99/p99.9/max",
            Box::new(|r| lat(&r.reply_latency)),
        ),
        (
            "outcome p50/p99/p99.9/max",
            Box::new(|r| lat(&r.outcome_latency)),
        ),
        (
            "conflicts / retries",
            Box::new(|r| format!("{} / {}", r.contention.conflicts, r.contention.retries)),
        ),
        (
            "lock waits / timeouts",
            Box::new(|r| {
                format!(
                    "{} / {}",
                    r.contention.lock_waits, r.contention.lock_timeouts
                )
            }),
        ),
        (
            "first/last tenth",
            Box::new(|r| {
                r.trend.as_ref().map_or("-".into(), |t| {
                    format!(
                        "{:.0} / {:.0} bids/s ({:.2})",
                        t.first_tenth_per_sec, t.last_tenth_per_sec, t.ratio
                    )
                })
            }),
        ),
        (
            "invariants",
            Box::new(|r| {
                if r.invariants.ok {
                    "ok".into()
                } else {
                    format!("BROKEN ({})", r.invariants.violation_count)
                }
            }),
        ),
    ];
    let width = 28;
    out += &format!("{:<width$}", "");
    for r in &outcome.reports {
        out += &format!("{:>36}", r.strategy);
    }
    out.push('\n');
    for (name, cell) in &rows {
        out += &format!("{name:<width$}");
        for r in &outcome.reports {
            out += &format!("{:>36}", cell(r));
        }
        out.push('\n');
    }
    for r in outcome.reports.iter().filter(|r| !r.invariants.ok) {
        out += &format!(
            "{}: {} invariant violations, first ones:\n",
            r.strategy, r.invariants.violation_count
        );
        for v in &r.invariants.violations {
            out += &format!("  {v}\n");
        }
    }
    out
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
