//! Starting from a snapshot: load it, publish what it decided but may not
//! have published, notice when it is behind the outcome stream, and align
//! the durable consumer with it.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream;
use futures::StreamExt;

use super::outcomes::{announce_sold_out, publish};
use super::{blocking, Verifier, VerifierConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::{Snapshot, StoredOutcome};
use crate::streams::Streams;
use crate::wire::OutcomeEvent;

impl<'a> Verifier<'a> {
    /// Loads the snapshot, and makes sure everything it decided is
    /// published exactly once.
    pub(super) async fn start(
        streams: &'a Streams,
        config: &VerifierConfig,
    ) -> Result<Verifier<'a>> {
        let log = log_info(streams).await?;
        check_outcomes_follow_log(streams, &log).await?;
        let identity = format!("{}@{}", log.config.name, log.created.to_rfc3339());
        let dir = config.data_dir.clone();
        let sync = config.sync;
        let (snapshot, ledger, position, unpublished) = blocking(move || -> Result<_> {
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
            Ok((snapshot, ledger, position, unpublished))
        })
        .await?;
        let mut v = Verifier {
            streams,
            snapshot: Some(snapshot),
            ledger,
            position,
            already_published: HashMap::new(),
        };

        // Outcomes the snapshot does not know to be published: a crash came
        // between publishing and recording it, or the snapshot was lost.
        // JetStream's de-duplication only covers a recent window, so look.
        let (mut found, outcomes_seq) = published_after(streams, position.outcomes_seq).await?;
        if !unpublished.is_empty() {
            let published: HashSet<(String, String)> = unpublished
                .iter()
                .map(|d| key(&d.outcome))
                .filter(|k| found.contains_key(k))
                .collect();
            tracing::info!(
                decided = unpublished.len(),
                already_published = published.len(),
                "publishing outcomes decided before a stop"
            );
            publish(streams, &unpublished, &published).await?;
            announce_sold_out(streams, &v.ledger, unpublished.iter().map(|d| &d.outcome)).await?;
        }
        let last = position.last_seq;
        let outcomes_seq = outcomes_seq.max(position.outcomes_seq);
        v.with_snapshot(move |s| s.mark_published(last, outcomes_seq))
            .await?;
        v.position.published_through = last;
        v.position.outcomes_seq = outcomes_seq;

        found.retain(|_, d| d.outcome.try_seq > last);
        if !found.is_empty() {
            tracing::warn!(
                published = found.len(),
                "the snapshot is behind the outcome stream; deciding the log again from sequence {}",
                last + 1
            );
        }
        v.already_published = found;
        Ok(v)
    }
}

fn key(o: &OutcomeEvent) -> (String, String) {
    (o.auction_id.clone(), o.bid_id.clone())
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

/// Outcomes in the stream after sequence `after`, keyed by bid, and the
/// stream's last sequence.
async fn published_after(
    streams: &Streams,
    after: u64,
) -> Result<(HashMap<(String, String), StoredOutcome>, u64)> {
    const READING: &str = "reading the outcome stream";
    let mut outcomes = streams.outcomes.clone();
    let last = outcomes
        .info()
        .await
        .map_err(Error::wrap(ErrorKind::Nats, READING))?
        .state
        .last_sequence;
    let mut found = HashMap::new();
    if last <= after {
        return Ok((found, last));
    }
    let consumer = streams
        .outcomes
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(Error::wrap(ErrorKind::Nats, READING))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(Error::wrap(ErrorKind::Nats, READING))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(Error::wrap(ErrorKind::Nats, READING))?;
        let seq = message
            .info()
            .map_err(Error::wrap(ErrorKind::Nats, READING))?
            .stream_sequence;
        if let Ok(outcome) = serde_json::from_slice::<OutcomeEvent>(&message.payload) {
            let payload = message.payload.clone();
            found.insert(key(&outcome), StoredOutcome { outcome, payload });
        }
        if seq >= last {
            break;
        }
    }
    Ok((found, last))
}

/// The log stream's info.
async fn log_info(streams: &Streams) -> Result<stream::Info> {
    let mut log = streams.log.clone();
    log.info()
        .await
        .cloned()
        .map_err(Error::wrap(ErrorKind::Setup, "log stream info"))
}

/// Refuses an outcome stream older than the log: its outcomes would belong
/// to tries of an earlier log, with the same ids but other decisions.
async fn check_outcomes_follow_log(streams: &Streams, log: &stream::Info) -> Result<()> {
    let mut outcomes = streams.outcomes.clone();
    let info = outcomes
        .info()
        .await
        .map_err(Error::wrap(ErrorKind::Setup, "outcome stream info"))?
        .clone();
    if info.state.messages == 0 {
        return Ok(());
    }
    let first = streams
        .outcomes
        .direct_get(info.state.first_sequence)
        .await
        .map_err(Error::wrap(ErrorKind::Setup, "outcome stream"))?;
    if first.time < log.created {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "stream {} holds outcomes from before stream {} was created; they belong to an earlier log: delete {} too, or use another --prefix",
                info.config.name, log.config.name, info.config.name
            ),
        ));
    }
    Ok(())
}
