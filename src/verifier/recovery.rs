//! Starting from a snapshot: load it, publish what it decided but may not
//! have published, notice when it is behind the outcome stream, and align
//! the durable consumer with it.

use std::collections::HashMap;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use futures::StreamExt;

use super::outcomes::{announce_sold_out, publish};
use super::{blocking, Verifier, VerifierConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::Snapshot;
use crate::streams::Streams;
use crate::wire::OutcomeEvent;

impl<'a> Verifier<'a> {
    /// Loads the snapshot and publishes what it decided but may not have
    /// published.
    pub(super) async fn start(
        streams: &'a Streams,
        config: &VerifierConfig,
    ) -> Result<Verifier<'a>> {
        let identity = log_identity(streams).await?;
        let dir = config.data_dir.clone();
        let sync = config.sync;
        let (snapshot, ledger, position, unpublished, decided) =
            blocking(move || -> Result<_> {
                let mut snapshot = Snapshot::open(&dir, sync)?;
                match snapshot.log_identity()? {
                    Some(known) if known == identity => {}
                    Some(known) => {
                        tracing::warn!(snapshot = %known, log = %identity, "snapshot belongs to an earlier log; starting over");
                        snapshot.reset(&identity)?;
                    }
                    None => snapshot.reset(&identity)?,
                }
                let ledger = snapshot.load()?;
                let position = snapshot.position()?;
                let unpublished = snapshot.unpublished()?;
                let decided = snapshot.decision_count()?;
                Ok((snapshot, ledger, position, unpublished, decided))
            })
            .await?;
        let mut v = Verifier {
            streams,
            snapshot: Some(snapshot),
            ledger,
            position,
            already_published: HashMap::new(),
        };
        if !unpublished.is_empty() {
            tracing::info!(
                count = unpublished.len(),
                "publishing outcomes decided before a stop"
            );
            publish(streams, &unpublished).await?;
            announce_sold_out(streams, &v.ledger, unpublished.iter().map(|d| &d.outcome)).await?;
        }
        if v.position.published_through < v.position.last_seq {
            let last = v.position.last_seq;
            v.with_snapshot(move |s| s.mark_published(last)).await?;
            v.position.published_through = last;
        }
        let published = Streams::count(&streams.outcomes, &streams.subjects.outcomes(None)).await?;
        if published > decided {
            v.already_published = published_after(streams, v.position.last_seq).await?;
            tracing::warn!(
                snapshot_decisions = decided,
                published,
                "snapshot is behind the outcome stream; deciding the log again from sequence {}",
                v.position.last_seq + 1
            );
        }
        Ok(v)
    }
}

/// Makes the durable consumer deliver from just after the snapshot's
/// position. The snapshot, not the consumer, is the record of progress:
/// a consumer that is ahead (snapshot lost) or holds unacked deliveries
/// (crash before ack) is re-created at the right sequence, so recovery
/// does not wait for redelivery timeouts.
pub(super) async fn align_consumer(
    streams: &Streams,
    last_seq: u64,
    config: &VerifierConfig,
) -> Result<PullConsumer> {
    let log = &streams.log;
    let name = config.consumer.as_str();
    if let Ok(info) = log.consumer_info(name).await {
        let aligned = info.ack_floor.stream_sequence == last_seq && info.num_ack_pending == 0;
        if aligned {
            return log
                .get_consumer(name)
                .await
                .map_err(Error::wrap(ErrorKind::Setup, format!("consumer {name}")));
        }
        tracing::info!(
            consumer_ack_floor = info.ack_floor.stream_sequence,
            snapshot_last_seq = last_seq,
            "re-aligning the verifier consumer with the snapshot"
        );
        log.delete_consumer(name)
            .await
            .map_err(Error::wrap(ErrorKind::Setup, format!("consumer {name}")))?;
    }
    let deliver_policy = match last_seq {
        0 => DeliverPolicy::All,
        seq => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
    };
    log.create_consumer(pull::Config {
        durable_name: Some(name.to_string()),
        description: Some("allot verifier: decides every try in log order".into()),
        deliver_policy,
        ack_policy: AckPolicy::All,
        ack_wait: config.ack_wait,
        max_ack_pending: (config.batch_size * 8) as i64,
        ..Default::default()
    })
    .await
    .map_err(Error::wrap(ErrorKind::Setup, format!("consumer {name}")))
}

/// Outcomes in the stream for tries after `last_seq`, keyed by bid.
async fn published_after(
    streams: &Streams,
    last_seq: u64,
) -> Result<HashMap<(String, String), bytes::Bytes>> {
    let total = Streams::count(&streams.outcomes, &streams.subjects.outcomes(None)).await?;
    let consumer = streams
        .outcomes
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(Error::wrap(ErrorKind::Nats, "reading the outcome stream"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(Error::wrap(ErrorKind::Nats, "reading the outcome stream"))?;
    let mut found = HashMap::new();
    let mut read = 0u64;
    while read < total {
        let Some(message) = messages.next().await else {
            break;
        };
        let message =
            message.map_err(Error::wrap(ErrorKind::Nats, "reading the outcome stream"))?;
        read += 1;
        if let Ok(o) = serde_json::from_slice::<OutcomeEvent>(&message.payload) {
            if o.try_seq > last_seq {
                found.insert((o.auction_id, o.bid_id), message.payload.clone());
            }
        }
    }
    Ok(found)
}

/// Names the log stream incarnation: its creation time.
async fn log_identity(streams: &Streams) -> Result<String> {
    let mut log = streams.log.clone();
    let info = log
        .info()
        .await
        .map_err(|e| Error::with_source(ErrorKind::Setup, e).context("log stream info"))?;
    Ok(format!(
        "{}@{}",
        info.config.name,
        info.created.to_rfc3339()
    ))
}
