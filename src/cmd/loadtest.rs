//! `allot loadtest`: drive bids at a running service (or a private one),
//! print what it measured, and fail when an invariant broke.

use std::path::PathBuf;
use std::time::Duration;

use super::embedded::Embedded;
use super::Common;
use crate::loadtest::report::{micros_text as duration, Latency, Report};
use crate::loadtest::workload::Workload;
use crate::loadtest::{self, html, Options, Outcome, Strategy};
use crate::wire::{label, Policy};

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
    /// Bids wait for their decision: each reply is `confirmed` or
    /// `cancelled` (in a top_amount auction, `accepted` for a held bid),
    /// and the reply latency is the decision's.
    #[arg(long)]
    pub wait: bool,
    /// Fraction of requests that resend an earlier bid with the same id.
    #[arg(long, default_value_t = 0.01, value_parser = fraction)]
    pub duplicates: f64,
    /// Fraction of requests sent to one hot auction (the rest are uniform).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub hot: f64,
    /// Who wins each auction: the first N eligible bids, or the N highest
    /// amounts at the close (held until then).
    #[arg(long, default_value = "first_n")]
    pub policy: Policy,
    /// Fraction of bids the bidder withdraws once accepted.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub withdraws: f64,
    /// Fraction of bids whose withdraw is sent just before the bid, racing
    /// it (empty rollback: the late try must never hold a slot).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub early_withdraws: f64,
    /// Fraction of bids the bidder raises once accepted (needs --policy
    /// top_amount); a conflict is retried once from the current amount.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub raises: f64,
    /// Close every auction this many seconds after it is opened, inside the
    /// run; top_amount verdicts arrive at the close. (Without it, top_amount
    /// auctions are closed once every bid is sent.)
    #[arg(long, value_parser = positive)]
    pub close_after: Option<f64>,
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
    /// Write the client-side history: one JSON line per distinct bid with
    /// every request sent, what it was told and when, and its outcomes.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Seconds to wait for a reply before a request counts as unanswered
    /// (and is resent, with --attempts).
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    pub timeout_secs: f64,
    /// Stop resending a bid this many seconds after it was due (with a high
    /// --attempts, a bound in time rather than in tries).
    #[arg(long, value_parser = positive)]
    pub give_up_secs: Option<f64>,
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
    /// Send bids, withdraws and raises over a connection of their own to
    /// this URL, for example as a backend's user against `serve --identity
    /// bound`; --nats-url then needs a user that may open auctions and
    /// read the outcome stream (the example config's `admin`).
    #[arg(long, env = "ALLOT_BID_URL")]
    pub bid_url: Option<String>,
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
    let workload = Workload {
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
        wait: args.wait,
        policy: args.policy,
        withdraws: args.withdraws,
        early_withdraws: args.early_withdraws,
        raises: args.raises,
        close_after_secs: args.close_after,
    };
    let strategies = match args.strategy {
        Strategies::Tcc => vec![Strategy::Tcc],
        Strategies::Occ => vec![Strategy::Occ],
        Strategies::Lock => vec![Strategy::Lock],
        // Asked by name, occ and lock refuse the knobs (in the library);
        // asked as "all", they step aside.
        Strategies::All if workload.lifecycle() => {
            eprintln!(
                "note: occ and lock take plain first_n bids only, so with --policy top_amount, --withdraws, --early-withdraws, --raises or --close-after, --strategy all runs tcc alone"
            );
            vec![Strategy::Tcc]
        }
        Strategies::All => Strategy::ALL.to_vec(),
    };
    let options = Options {
        workload,
        strategies,
        baseline: args.baseline,
        settle: Duration::from_secs(args.settle_secs),
        attempts: args.attempts,
        progress: !args.quiet,
        history: args.history.clone(),
        give_up: args.give_up_secs.map(Duration::from_secs_f64),
        bid_url: args.bid_url.clone(),
    };
    let outcome = if args.embedded {
        let embedded = Embedded::start(common.prefix).await?;
        let outcome = loadtest::run(&embedded.client, &options).await;
        embedded.stop().await?;
        outcome?
    } else {
        let mut client = common.client().await?;
        client.timeout = Duration::from_secs_f64(args.timeout_secs);
        loadtest::run(&client, &options).await?
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
    if let Some(w) = outcome
        .reports
        .first()
        .map(|r| &r.workload)
        .filter(|w| w.lifecycle())
    {
        out += &format!(
            "lifecycle: {}, {:.0}% withdrawn once accepted, {:.0}% withdrawn early, {:.0}% raised, {}\n",
            label(&w.policy),
            w.withdraws * 100.0,
            w.early_withdraws * 100.0,
            w.raises * 100.0,
            match w.close_after_secs {
                Some(s) => format!("closing {s} s after opening"),
                None if w.holds_until_close() => "closed after the last bid".into(),
                None => "no close".into(),
            },
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
    let mut rows: Vec<(&str, Cell<'_>)> = vec![
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
            "admitted p50/p99/p99.9/max",
            Box::new(|r| lat(&r.admitted_latency)),
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
    if outcome.reports.iter().any(|r| r.workload.lifecycle()) {
        // After "cancelled", where `withdrawn` and `outbid` show.
        let at = rows
            .iter()
            .position(|(name, _)| *name == "cancelled")
            .map_or(rows.len(), |i| i + 1);
        rows.splice(at..at, lifecycle_rows());
    }
    // Each strategy's column as wide as its widest cell, two spaces apart,
    // so that long latencies never run into the next column.
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, cell)| outcome.reports.iter().map(cell).collect())
        .collect();
    let widths: Vec<usize> = outcome
        .reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let widest = cells.iter().map(|row| row[i].chars().count()).max();
            widest.unwrap_or(0).max(r.strategy.to_string().len()) + 2
        })
        .collect();
    let width = 28;
    out += &format!("{:<width$}", "");
    for (r, w) in outcome.reports.iter().zip(&widths) {
        out += &format!("{:>w$}", r.strategy.to_string());
    }
    out.push('\n');
    for ((name, _), row) in rows.iter().zip(&cells) {
        out += &format!("{name:<width$}");
        for (cell, w) in row.iter().zip(&widths) {
            out += &format!("{cell:>w$}");
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

/// The rows of withdraws, raises and held notices.
fn lifecycle_rows<'a>() -> Vec<(&'static str, Cell<'a>)> {
    vec![
        (
            "withdraws sent / withdrawn",
            Box::new(|r| {
                let l = &r.lifecycle;
                format!(
                    "{} / {} ({} empty rollbacks)",
                    l.withdraws_sent, l.withdrawn, l.empty_rollbacks
                )
            }),
        ),
        (
            "withdraws refused",
            Box::new(|r| counts(&r.lifecycle.withdraws_refused)),
        ),
        (
            "raises sent/raised/conflicts",
            Box::new(|r| {
                let l = &r.lifecycle;
                format!("{} / {} / {}", l.raises_sent, l.raised, l.raise_conflicts)
            }),
        ),
        (
            "raises refused",
            Box::new(|r| counts(&r.lifecycle.raises_refused)),
        ),
        (
            "held notices / unanswered",
            Box::new(|r| format!("{} / {}", r.lifecycle.held_notices, r.lifecycle.unanswered)),
        ),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::html::tests::report;

    /// Latencies as long as a real run's ("522 µs / 29.3 ms / 57.9 ms /
    /// 86.8 ms") once ran into the next column.
    #[test]
    fn the_table_keeps_every_column_apart() {
        let mut reports: Vec<Report> = ["tcc", "occ", "lock"].map(report).into();
        for r in &mut reports {
            r.reply_latency.p50_us = 522;
            r.reply_latency.p99_us = 29_300;
            r.reply_latency.p999_us = 157_900;
            r.reply_latency.max_us = 186_800;
            r.cancelled.insert("bidder_limit".into(), 57);
        }
        let text = table(&Outcome {
            baseline: None,
            reports,
        });
        let row = |name: &str| {
            let line = text.lines().find(|l| l.starts_with(name)).expect(name);
            line[name.len()..]
                .split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let latency = "522 µs / 29.3 ms / 157.9 ms / 186.8 ms";
        assert_eq!(row("reply p50/p99/p99.9/max"), vec![latency; 3], "{text}");
        let cancelled = "57 bidder_limit, 18000 capacity_full";
        assert_eq!(row("cancelled"), vec![cancelled; 3], "{text}");
    }
}
