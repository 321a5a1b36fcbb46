//! `allot status`: what an operator wants to see at a glance, read from
//! NATS alone (the streams, the verifier's consumer, the leases bucket and
//! the running instances' `$SRV.PING` answers), so it works from any
//! machine that can reach the cluster and changes nothing.

use std::collections::BTreeMap;

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, kv};
use async_nats::service::PingResponse;
use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::log::Reader;
use crate::wire::{LogEvent, Policy, Subjects};

/// How long `$SRV.PING` answers are collected.
const PING_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
pub struct Status {
    /// Running `allot serve` processes.
    pub instances: Vec<Instance>,
    pub partitions: Vec<Partition>,
    /// Auctions with the most tries first, at most the limit asked for.
    pub auctions: Vec<AuctionFill>,
    /// Auctions in the log in all.
    pub auctions_total: usize,
}

#[derive(Debug, Serialize)]
pub struct Instance {
    pub id: String,
    pub role: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct Partition {
    pub partition: u32,
    /// The log subjects it covers.
    pub subject: String,
    /// The lease holder (host and data directory), if any.
    pub owner: Option<String>,
    /// Auctions in it.
    pub auctions: u64,
    /// Log entries in it.
    pub events: u64,
    /// Log entries its verifier has not yet decided and acked.
    pub pending: u64,
}

#[derive(Debug, Serialize)]
pub struct AuctionFill {
    pub auction_id: String,
    pub capacity: u32,
    pub policy: Policy,
    pub tries: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    /// Tries with no outcome yet: held (in `top_amount` auctions) or not
    /// yet decided.
    pub open: u64,
}

/// The `open` subjects among the log's message counts per subject.
pub(crate) fn opened(logged: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    logged
        .iter()
        .filter(|(subject, _)| subject.split('.').nth(1) == Some("auction"))
        .map(|(subject, n)| (subject.clone(), *n))
        .collect()
}

/// Auctions opened and log entries in partition `p`, from the log's
/// message counts per subject (`<prefix>.<kind>.<partition>.<...>`).
pub(crate) fn partition_counts(logged: &BTreeMap<String, u64>, p: u32) -> (u64, u64) {
    let in_p = |subject: &str| {
        subject
            .split('.')
            .nth(2)
            .and_then(|t| t.parse::<u32>().ok())
            == Some(p)
    };
    let mut auctions = 0;
    let mut events = 0;
    for (subject, n) in logged.iter().filter(|(s, _)| in_p(s)) {
        events += n;
        if subject.split('.').nth(1) == Some("auction") {
            auctions += 1;
        }
    }
    (auctions, events)
}

/// Reads the status. `limit` bounds how many auctions are described.
pub async fn read(
    client: &async_nats::Client,
    subjects: &Subjects,
    consumer: &str,
    limit: usize,
) -> Result<Status> {
    let js = jetstream::new(client.clone());
    let streams = Reader::open(&js, subjects.clone()).await?;
    let subjects = &streams.subjects;
    let instances = instances(client).await?;

    let prefix = subjects.prefix();
    let logged = streams.log_counts(&format!("{prefix}.*.*.*")).await?;
    let opened = opened(&logged);
    let tries = crate::log::all_try_counts(&js, subjects).await?;
    let leases = js.get_key_value(subjects.leases_bucket()).await.ok();
    let mut partitions = Vec::new();
    for p in 0..subjects.partitions() {
        let (auctions, events) = partition_counts(&logged, p);
        let name = crate::wire::names::verifier_consumer(consumer, p);
        let pending = match streams
            .log
            .get_consumer::<jetstream::consumer::pull::Config>(&name)
            .await
        {
            Ok(mut c) => {
                let c: &mut PullConsumer = &mut c;
                let info = c.info().await.map_err(Error::wrap(ErrorKind::Nats, name))?;
                info.num_pending + info.num_ack_pending as u64
            }
            // No verifier has decided it yet: everything is pending.
            Err(_) => events,
        };
        let owner = match &leases {
            Some(bucket) => lease_owner(bucket, p).await,
            None => None,
        };
        partitions.push(Partition {
            partition: p,
            subject: subjects.log_partition(p),
            owner,
            auctions,
            events,
            pending,
        });
    }
    let decided = crate::log::outcome_counts(&js, subjects, None).await?;
    let mut fills: Vec<AuctionFill> = opened
        .keys()
        .filter_map(|subject| subject.rsplit('.').next())
        .map(|auction_id| {
            let tries = tries.get(auction_id).copied().unwrap_or(0);
            let d = decided.get(auction_id).copied().unwrap_or_default();
            let (confirmed, cancelled) = (d.confirmed, d.cancelled);
            AuctionFill {
                auction_id: auction_id.to_string(),
                capacity: 0,
                policy: Policy::default(),
                tries,
                confirmed,
                cancelled,
                open: tries.saturating_sub(confirmed + cancelled),
            }
        })
        .collect();
    let auctions_total = fills.len();
    fills.sort_by(|a, b| {
        b.tries
            .cmp(&a.tries)
            .then_with(|| a.auction_id.cmp(&b.auction_id))
    });
    fills.truncate(limit);
    // Each auction's settings are in its first event, the open.
    for fill in &mut fills {
        match streams.first_event(&fill.auction_id).await {
            Ok(Some(open)) => {
                if let Ok(LogEvent::Open(open)) = serde_json::from_slice(&open.payload) {
                    fill.capacity = open.spec.capacity.get();
                    fill.policy = open.spec.policy;
                }
            }
            Ok(None) => {}
            Err(e) => return Err(Error::wrap(ErrorKind::Nats, fill.auction_id.clone())(e)),
        }
    }
    Ok(Status {
        instances,
        partitions,
        auctions: fills,
        auctions_total,
    })
}

async fn lease_owner(bucket: &kv::Store, partition: u32) -> Option<String> {
    let value = bucket
        .get(crate::wire::names::lease_key(partition))
        .await
        .ok()??;
    Some(String::from_utf8_lossy(&value).into_owned())
}

/// Every `allot serve` that answers `$SRV.PING.allot` within [`PING_WAIT`].
async fn instances(client: &async_nats::Client) -> Result<Vec<Instance>> {
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context("ping"))?;
    client
        .publish_with_reply(
            format!("$SRV.PING.{}", super::micro::NAME),
            inbox,
            "".into(),
        )
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context("ping"))?;
    let mut found = Vec::new();
    let deadline = tokio::time::sleep(PING_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            answer = answers.next() => {
                let Some(answer) = answer else { break };
                if let Ok(ping) = serde_json::from_slice::<PingResponse>(&answer.payload) {
                    found.push(Instance {
                        role: ping.metadata.get("role").cloned().unwrap_or_default(),
                        id: ping.id,
                        version: ping.version,
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}
