//! `allot serve`: run the gateway and/or the verifier.

use std::path::PathBuf;
use std::time::Duration;

use super::Common;
use crate::gateway::GatewayConfig;
use crate::identity::{self, IdentityConfig};
use crate::service::{self, Config, Role};
use crate::snapshot::Sync;
use crate::streams::StreamOptions;
use crate::verifier::VerifierConfig;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of the verifier's SQLite snapshot.
    #[arg(long, env = "ALLOT_DATA_DIR", default_value = "allot-data")]
    pub data_dir: PathBuf,
    /// Which parts to run in this process.
    #[arg(long, value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Most log events decided per snapshot transaction.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// JetStream de-duplication window for new streams, in seconds: a bid
    /// resent within it gets its original reply. At least 1: JetStream
    /// reads 0 as its default, 120 s, and cannot turn de-duplication off.
    #[arg(long, default_value_t = 120, value_parser = parse_dedupe_window)]
    pub dedupe_window_secs: u64,
    /// The durable profile: every snapshot transaction is on disk before the
    /// verifier goes on (SQLite synchronous=FULL). Pair it with a
    /// nats-server whose JetStream has `sync_interval: always` (see
    /// RELIABILITY.md).
    #[arg(long, alias = "sync-full")]
    pub durable: bool,
    /// Seconds JetStream waits for the verifier's ack before delivering a
    /// try again.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ack_wait_secs: u64,
    /// Seconds a verifier's lease lasts unrenewed: after a crash, another
    /// verifier takes over this long after the last renewal.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// Partitions of a new log: auctions are spread over them by a hash of
    /// their id, and each is decided by one verifier at a time, so this is
    /// how many processes can share the deciding. An existing log keeps
    /// the number it was created with.
    #[arg(long, default_value_t = crate::wire::DEFAULT_PARTITIONS, value_parser = clap::value_parser!(u32).range(1..=crate::wire::MAX_PARTITIONS as i64))]
    pub partitions: u32,
    /// Replicas of each stream and bucket it creates: 3 on a three-node
    /// JetStream cluster, so that losing a node loses nothing acknowledged.
    /// Existing streams keep theirs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// Serve the HTTP page on <addr>: the live dashboard at /, Prometheus
    /// metrics at /metrics, /healthz and /readyz; all read-only. A port
    /// alone binds 127.0.0.1 (for example
    /// 9464); give an address (0.0.0.0:9464) to serve other hosts. Off
    /// unless given. `--metrics-addr` is its older name.
    #[arg(long, alias = "metrics-addr", env = "ALLOT_HTTP_ADDR", value_parser = parse_http_addr)]
    pub http_addr: Option<std::net::SocketAddr>,
    /// Who bids: `open` takes the body's bidder_id as it is (demos, tests,
    /// trusted networks); `bound` takes the NATS user that the server
    /// stamps on requests crossing the bidders' service import, and
    /// refuses requests without one (docs/integrating.md, "Identity and
    /// access control").
    #[arg(long, env = "ALLOT_IDENTITY", value_enum, default_value_t = identity::Mode::Open)]
    pub identity: identity::Mode,
    /// Bound mode: an account whose users are backends bidding for many
    /// end users, each backend with bidder ids of its own. Repeatable.
    #[arg(
        long = "backend-account",
        env = "ALLOT_BACKEND_ACCOUNTS",
        value_delimiter = ','
    )]
    pub backend_accounts: Vec<String>,
    /// Bound mode: most bids, withdraws and raises per second from one
    /// bidder's own connection (bursts of twice that); more are answered
    /// `rate_limited` with a retry hint. 0: no limit. Backends are not limited.
    #[arg(long, env = "ALLOT_BIDDER_RATE", default_value_t = identity::DEFAULT_BIDDER_RATE)]
    pub bidder_rate: u32,
    /// Requests a gateway serves at once; one more is answered
    /// `unavailable` at once with a retry hint. Fewer keep admitted bids
    /// quick under overload; more ride out bursts.
    #[arg(long, env = "ALLOT_MAX_IN_FLIGHT", default_value_t = GatewayConfig::default().max_in_flight as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,
    /// Milliseconds a bid taken in may wait for a worker thread; past that
    /// it is answered `unavailable` with a retry hint, not served late.
    #[arg(long, env = "ALLOT_MAX_QUEUED_MS", default_value_t = GatewayConfig::default().max_queued.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub max_queued_ms: u64,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let config = Config {
        nats_url: common.nats_url,
        subjects: common.prefix,
        role: args.role,
        streams: StreamOptions {
            duplicate_window: Duration::from_secs(args.dedupe_window_secs),
            lease_ttl: Duration::from_secs(args.lease_secs),
            replicas: args.replicas.into(),
            partitions: args.partitions,
        },
        verifier: VerifierConfig {
            data_dir: args.data_dir,
            batch_size: args.batch_size as usize,
            ack_wait: Duration::from_secs(args.ack_wait_secs),
            sync: if args.durable {
                Sync::Full
            } else {
                Sync::Normal
            },
            ..VerifierConfig::default()
        },
        http_addr: args.http_addr,
        gateway: GatewayConfig {
            identity: IdentityConfig {
                mode: args.identity,
                backend_accounts: args.backend_accounts,
                bidder_rate: (args.identity == identity::Mode::Bound && args.bidder_rate > 0)
                    .then_some(args.bidder_rate),
            },
            max_in_flight: args.max_in_flight as usize,
            max_queued: Duration::from_millis(args.max_queued_ms),
            ..GatewayConfig::default()
        },
    };
    service::run(config, super::shutdown_signal()).await?;
    Ok(())
}

fn parse_dedupe_window(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1: JetStream takes 0 for its default window of 120 s, and has no way to turn de-duplication off".into()),
        Ok(secs) => Ok(secs),
        Err(e) => Err(format!("not a number of seconds: {e}")),
    }
}

/// `host:port`, or a port alone on 127.0.0.1.
fn parse_http_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|e| format!("not an address (127.0.0.1:9464) or a port (9464): {e}"))
}
