//! The verifier: a durable JetStream consumer that folds the log through
//! the decision core and publishes exactly one outcome per try.
//!
//! Per batch of the log, in this order:
//! 1. decide every new event with [`Ledger`] (pure, in memory);
//! 2. commit the batch to the SQLite snapshot (decisions with their exact
//!    outcome bytes, and the last applied sequence) in one transaction;
//! 3. publish the outcomes, pipelined, each with its deterministic
//!    `Nats-Msg-Id`;
//! 4. once every ack is in, record them as published, then ack the
//!    batch's tries.
//!
//! While one batch waits for its acks (step 4), the next ones are decided,
//! committed and sent: up to [`PIPELINE_DEPTH`] batches are in flight, and
//! they finish in log order, so the snapshot's record of what is published
//! only ever moves forward.
//!
//! A crash anywhere leaves a state the next start repairs: decided but
//! unpublished outcomes are published again (JetStream drops the copies it
//! already has), unacked tries already in the snapshot are skipped, and the
//! consumer is re-aligned to the snapshot's position. With the snapshot lost,
//! the log is decided again from the start; since the core is deterministic
//! the decisions are the same, and those already in the outcome stream are
//! taken from there rather than published twice.

mod assign;
pub mod lease;
mod outcomes;
pub mod protocol;
mod recovery;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;

use crate::error::{Error, ErrorKind, Result};
use crate::faults::{crash_point, stall_point, stop_point};
use crate::log::fence::Fence;
use crate::observe::Metrics;
use crate::snapshot::{Snapshot, Sync};
use crate::streams::Streams;
use crate::wire::names::{self, PULL_GROUP, VERIFIER_QUEUE};
use crate::wire::{
    timestamp, CommandReply, CommandRequest, CommandResult, DecidedReply, DecidedRequest,
    HeldEvent, LogEvent,
};
use lease::{DirLock, Lease};
use outcomes::{announce_closed, announce_sold_out, send, Acks};
use protocol::{Action, CommandAnswer, Delivered, Delivery, Protocol};
use recovery::align_consumer;

/// Verifier settings.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// Where the SQLite snapshot lives.
    pub data_dir: PathBuf,
    /// Durable consumer name on the log stream.
    pub consumer: String,
    /// Most log events decided per SQLite transaction.
    pub batch_size: usize,
    /// SQLite durability.
    pub sync: Sync,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            data_dir: PathBuf::from("allot-data"),
            consumer: names::VERIFIER_CONSUMER.into(),
            batch_size: 512,
            sync: Sync::Normal,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Runs the verifier until `shutdown` completes: takes a fair share of
/// the log's partitions (see `assign.rs`) and decides each of them.
///
/// A failure to start at all (an unusable data directory, a corrupt
/// snapshot, streams that do not belong together) is returned: retrying
/// would not help. A later failure (NATS gone, a snapshot write refused)
/// drops the partition's in-memory state and starts it over from its
/// snapshot, as a restart would; nothing is acked that is not durably
/// decided. A replay that disagrees with a published outcome always stops
/// the verifier.
pub async fn run(
    streams: Streams,
    config: VerifierConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let _dir = DirLock::acquire(&config.data_dir)?;
    assign::run(streams, config, metrics, shutdown).await
}

/// Decides one partition, whose lease this verifier holds, until `stop`
/// completes, a fatal error, or another verifier takes the partition over.
async fn decide_partition(
    streams: Streams,
    config: VerifierConfig,
    partition: u32,
    lease: Lease,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
    // A JetStream context of its own: a context bounds the publish acks
    // awaited at once (5,000), and one partition may await one per fence
    // lane (its fence, or its outcomes in flight), so eight partitions
    // sharing one could wait on each other for good.
    let streams = Streams {
        js: async_nats::jetstream::new(streams.js.client()),
        ..streams
    };
    let config = VerifierConfig {
        data_dir: names::partition_dir(&config.data_dir, partition),
        consumer: names::verifier_consumer(&config.consumer, partition),
        ..config
    };
    // Writing the fence waits on NATS (a full outgoing buffer, when NATS is
    // gone); a stop meanwhile wins.
    let taken = tokio::select! {
        _ = &mut stop => None,
        taken = Fence::take(&streams, partition, lease.owner(), FENCE_LANES) => Some(taken),
    };
    let fence = match taken {
        Some(Ok(fence)) => fence,
        Some(Err(e)) => {
            lease.release().await;
            return Err(e);
        }
        None => {
            tracing::info!(partition, "verifier stopped");
            lease.release().await;
            return Ok(());
        }
    };
    let result = follow(
        &streams, &config, partition, &lease, &fence, &metrics, &mut stop,
    )
    .await;
    match result {
        Err(e) if matches!(e.kind(), ErrorKind::Superseded | ErrorKind::Fenced) => {
            if e.kind() == ErrorKind::Fenced {
                metrics.fenced.fetch_add(1, Ordering::Relaxed);
            }
            metrics.superseded.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(partition, error = %e, "superseded by another verifier");
            lease.abandon();
            Err(e)
        }
        result => {
            lease.release().await;
            result
        }
    }
}

/// Runs and restarts a partition's verifier until shutdown or a fatal error.
async fn follow(
    streams: &Streams,
    config: &VerifierConfig,
    partition: u32,
    lease: &Lease,
    fence: &Fence,
    metrics: &Metrics,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    loop {
        let started = tokio::time::Instant::now();
        match run_once(
            streams, config, partition, lease, fence, metrics, shutdown, first,
        )
        .await
        {
            Ok(()) => {
                tracing::info!(partition, "verifier stopped");
                return Ok(());
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                first = false;
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
                tracing::error!(partition, error = %e, retry_in = ?backoff, "verifier failed; recovering from the snapshot");
                tokio::select! {
                    _ = &mut *shutdown => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The verifier's working state between batches: the protocol, and the
/// I/O handles it needs.
struct Verifier<'a> {
    /// Where the log, outcomes and buckets are.
    streams: &'a Streams,
    /// The partition of the log this verifier decides.
    partition: u32,
    /// Checked before each batch: only the lease holder decides.
    lease: &'a Lease,
    /// Every outcome is stamped with it, so that none gets through once a
    /// successor has taken over.
    fence: &'a Fence,
    /// Counts outcomes for the operators' metrics.
    metrics: &'a Metrics,
    /// `None` only while a blocking snapshot call has it.
    snapshot: Option<Snapshot>,
    /// Everything that decides what to do next.
    protocol: Protocol<Entry>,
}

/// A delivery of the log, with what the protocol reads of it.
#[derive(Clone)]
struct Entry {
    message: Message,
    seq: u64,
    consumer_seq: u64,
    delivered: u64,
    stored_at: chrono::DateTime<chrono::Utc>,
}

impl Entry {
    fn of(message: Message) -> Result<Entry> {
        let info = message
            .info()
            .map_err(|e| Error::with_source(ErrorKind::Protocol, e))?;
        let (seq, consumer_seq) = (info.stream_sequence, info.consumer_sequence);
        let (delivered, stored_at) = (info.delivered as u64, info.published);
        Ok(Entry {
            message,
            seq,
            consumer_seq,
            delivered,
            stored_at,
        })
    }
}

impl Delivered for Entry {
    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            seq: self.seq,
            consumer_seq: self.consumer_seq,
            delivered: self.delivered,
            subject: self.message.subject.as_str(),
            payload: &self.message.payload,
            stored_at: self.stored_at,
        }
    }
}

/// How a verifier run ended badly.
enum Failure {
    /// Stop the verifier and report.
    Fatal(Error),
    /// Start over from the snapshot.
    Transient(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Integrity | ErrorKind::Superseded | ErrorKind::Fenced => Failure::Fatal(e),
            _ => Failure::Transient(e),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    streams: &Streams,
    config: &VerifierConfig,
    partition: u32,
    lease: &Lease,
    fence: &Fence,
    metrics: &Metrics,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    first: bool,
) -> std::result::Result<(), Failure> {
    // A verifier woken from a pause past its lease must not touch the
    // shared consumer: the lease's own clock says whether it may.
    lease.check()?;
    let started = async {
        let v = Verifier::start(streams, partition, lease, fence, metrics, config).await?;
        let last_seq = v.protocol.position().last_seq;
        let consumer = align_consumer(streams, partition, last_seq, config).await?;
        Ok::<_, Error>((v, consumer))
    };
    // Loading a large snapshot takes a while; a shutdown meanwhile wins.
    let started = tokio::select! {
        _ = &mut *shutdown => return Ok(()),
        started = started => started,
    };
    let (mut v, consumer) = match started {
        Ok(started) => started,
        // A first start that cannot work (a damaged snapshot, streams from
        // another log) stops at once, with the reason; NATS being slow or
        // briefly away (a cluster electing a leader) is waited out.
        Err(e)
            if first
                && !matches!(
                    e.kind(),
                    ErrorKind::Nats | ErrorKind::Setup | ErrorKind::Timeout
                ) =>
        {
            return Err(Failure::Fatal(e))
        }
        Err(e) => return Err(e.into()),
    };
    // Deliveries continue the consumer's count: one that skips a number
    // went elsewhere, and the log is checked for a gap (see `process`).
    v.protocol
        .expect_delivery(consumer.cached_info().delivered.consumer_sequence + 1);
    // Whoever pulled before (this verifier's previous run, or a
    // predecessor that lost the lease) is unpinned: this run pulls now.
    if let Err(e) = streams
        .log
        .unpin_consumer(&config.consumer, PULL_GROUP)
        .await
    {
        tracing::debug!(error = %e, "nothing to unpin");
    }
    let mut messages = consumer
        .stream()
        .group(PULL_GROUP)
        .max_messages_per_batch(config.batch_size)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context("verifier consumer"))?
        .ready_chunks(config.batch_size);
    // Gateways ask which try decided a bid, and what a withdraw or a raise
    // did; answered between batches, when the ledger and the position agree.
    let mut lookups = futures::stream::SelectAll::new();
    for subject in streams.subjects.lookups(partition) {
        let sub = streams
            .js
            .client()
            .queue_subscribe(subject.clone(), VERIFIER_QUEUE.into())
            .await
            .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
        lookups.push(sub);
    }
    // Auctions whose `closes_at` passed get their close event written.
    let mut deadlines = tokio::time::interval(DEADLINE_CHECK);
    deadlines.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        partition,
        last_seq = v.protocol.position().last_seq,
        "verifier following the log"
    );
    // Batches whose outcomes are sent and not all acked yet, oldest first.
    // Deciding the next batch while the last one's acks travel keeps both
    // the verifier and the server busy; batches still finish in log order.
    let mut in_flight: VecDeque<Acks> = VecDeque::new();
    let failed = loop {
        let next = tokio::select! {
            biased;
            _ = &mut *shutdown => return Ok(()),
            acked = oldest_acked(&mut in_flight) => Next::Acked(acked),
            Some(lookup) = lookups.next() => Next::Lookup(lookup),
            _ = deadlines.tick() => Next::Deadlines,
            // Unconstrained: tokio's cooperative budget would otherwise end
            // a chunk after about 128 messages, whatever the batch size.
            chunk = tokio::task::unconstrained(messages.next()), if in_flight.len() < PIPELINE_DEPTH => Next::Chunk(chunk),
        };
        let step: Result<()> = match next {
            Next::Lookup(request) => {
                v.answer(request).await;
                Ok(())
            }
            // An idle verifier must notice a lost lease too, not only at
            // its next batch: it would go on holding a partition that
            // another decides, and the processes' shares would not add up.
            // (A lease merely late to renew waits for the next batch.)
            Next::Deadlines => match lease.check() {
                Err(e) if e.kind() == ErrorKind::Superseded => Err(e),
                _ => {
                    v.close_due().await;
                    Ok(())
                }
            },
            Next::Acked(acked) => {
                drop(in_flight.pop_front().expect("an acked batch is in flight"));
                match acked {
                    Ok(acked) => {
                        let actions = v.protocol.outcomes_acked(acked);
                        v.run(actions, &mut in_flight).await
                    }
                    Err(e) => Err(e),
                }
            }
            Next::Chunk(None) => Err(Error::new(ErrorKind::Nats, "verifier consumer ended")),
            Next::Chunk(Some(chunk)) => {
                match chunk
                    .into_iter()
                    .collect::<std::result::Result<Vec<_>, _>>()
                {
                    Ok(chunk) => match chunk.into_iter().map(Entry::of).collect() {
                        Ok(entries) => {
                            let actions = v.protocol.deliveries(entries);
                            v.run(actions, &mut in_flight).await
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => {
                        Err(Error::with_source(ErrorKind::Nats, e).context("verifier consumer"))
                    }
                }
            }
        };
        if let Err(e) = step {
            break e;
        }
    };
    Err(settle(&mut in_flight, failed).await.into())
}

/// Waits a little for the acks of the batches in flight before a run
/// gives up on them. A refusal by the fence (another verifier has taken
/// over) then wins over `error`: it says to stand by, not to start over.
async fn settle(in_flight: &mut VecDeque<Acks>, error: Error) -> Error {
    let acks = async {
        while !in_flight.is_empty() {
            let acked = oldest_acked(in_flight).await;
            in_flight.pop_front();
            if let Err(e) = acked {
                return Some(e);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(5), acks).await {
        Ok(Some(refused)) if refused.kind() == ErrorKind::Fenced => refused,
        _ => error,
    }
}

/// Most batches sent and not yet finished.
const PIPELINE_DEPTH: usize = 4;

/// Fence lanes per partition (`log/fence.rs`): at least as many as outcomes
/// can be unacked at once ([`outcomes::MAX_UNACKED`] per batch,
/// [`PIPELINE_DEPTH`] batches).
pub const FENCE_LANES: usize = outcomes::MAX_UNACKED * PIPELINE_DEPTH;

/// How often the verifier looks for auctions past their `closes_at`: how
/// late, at most, their close event is written.
const DEADLINE_CHECK: Duration = Duration::from_millis(250);

/// What the verifier loop does next.
enum Next<C> {
    /// A gateway asks which try decided a bid.
    Lookup(async_nats::Message),
    /// Time to look for auctions past their `closes_at`.
    Deadlines,
    /// The oldest batch in flight has all its acks (or failed).
    Acked(Result<u64>),
    /// A chunk of the log arrived, or the consumer ended.
    Chunk(Option<C>),
}

/// Waits for the oldest batch in flight; pending while there is none.
async fn oldest_acked(in_flight: &mut VecDeque<Acks>) -> Result<u64> {
    match in_flight.front_mut() {
        Some(acks) => acks.await,
        None => std::future::pending().await,
    }
}

impl Verifier<'_> {
    /// Does what the protocol asks, in order; the actions a step's answer
    /// brings come before the rest. Publishing does not wait for acks: the
    /// acks of each batch join `in_flight`, and the caller hands them back
    /// to the protocol, oldest first.
    async fn run(
        &mut self,
        actions: Vec<Action<Entry>>,
        in_flight: &mut VecDeque<Acks>,
    ) -> Result<()> {
        let mut queue: VecDeque<Action<Entry>> = actions.into();
        while let Some(action) = queue.pop_front() {
            let next = match action {
                Action::CheckGaps(gaps) => {
                    for (from, delivered) in gaps {
                        check_gap(self.streams, self.partition, from, delivered).await?;
                    }
                    self.protocol
                        .gaps_clear(&self.streams.subjects, timestamp::now())?
                }
                Action::CheckLease => {
                    self.lease.check()?;
                    Vec::new()
                }
                Action::Commit { batch, closes } => {
                    self.with_snapshot(move |s| s.commit(&batch)).await?;
                    crash_point("after_commit");
                    if closes {
                        crash_point("after_close_commit");
                    }
                    self.protocol.committed()
                }
                Action::AnswerCommands(answers) => {
                    self.answer_parked(&answers).await;
                    Vec::new()
                }
                Action::AnswerDecided(answers) => {
                    self.answer_waiting(answers).await;
                    Vec::new()
                }
                Action::Publish { batch, skip } => {
                    if !batch.decisions.is_empty() {
                        stop_point("before_publish");
                    }
                    in_flight
                        .push_back(send(self.streams, self.fence, &batch.decisions, &skip).await?);
                    Vec::new()
                }
                Action::SendHolds(holds) => {
                    send_holds(self.streams, &holds).await;
                    Vec::new()
                }
                Action::Announce {
                    batch,
                    closed,
                    restart,
                } => {
                    for d in &batch.decisions {
                        self.metrics.outcome(&d.outcome);
                    }
                    let ledger = self.protocol.ledger();
                    let outcomes = batch.decisions.iter().map(|d| &d.outcome);
                    announce_sold_out(self.streams, ledger, outcomes).await?;
                    announce_closed(self.streams, ledger, &closed).await?;
                    if !restart {
                        crash_point("after_publish");
                    }
                    Vec::new()
                }
                Action::Record {
                    last_seq,
                    outcomes_seq,
                    restart,
                } => {
                    self.with_snapshot(move |s| s.mark_published(last_seq, outcomes_seq))
                        .await?;
                    if !restart {
                        crash_point("before_ack");
                        stall_point("before_ack").await;
                    }
                    self.protocol.recorded(last_seq, outcomes_seq)
                }
                Action::Terminate(entries) => {
                    for entry in entries {
                        entry.message.ack_with(AckKind::Term).await.map_err(|e| {
                            Error::with_source(ErrorKind::Nats, e).context("terminate")
                        })?;
                    }
                    Vec::new()
                }
                // Acks every delivery up to and including this one.
                Action::Ack(entry) => {
                    entry
                        .message
                        .ack()
                        .await
                        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context("ack"))?;
                    Vec::new()
                }
            };
            for action in next.into_iter().rev() {
                queue.push_front(action);
            }
        }
        Ok(())
    }

    /// Answers a gateway's [`DecidedRequest`] or [`CommandRequest`]. A
    /// request that cannot be read gets no answer: the asking gateway then
    /// treats the bid as not provably new, or the command as not yet
    /// decided, which is always safe.
    async fn answer(&mut self, request: async_nats::Message) {
        let subjects = &self.streams.subjects;
        let subject = request.subject.as_str();
        let auction_id = subject.rsplit('.').next().unwrap_or_default();
        let body = if subject == subjects.decided(auction_id) {
            let Ok(asked) = serde_json::from_slice::<DecidedRequest>(&request.payload) else {
                tracing::warn!(subject, "unreadable decided-bid request ignored");
                return;
            };
            let decided = match (asked.wait_for, request.reply.as_ref()) {
                (Some(seq), Some(reply_to)) => {
                    self.protocol
                        .decided_wait(auction_id, &asked.bid_id, seq, reply_to.to_string())
                }
                _ => Some(self.protocol.decided(auction_id, &asked.bid_id)),
            };
            // Not decided yet: answered when it is, rather than polled.
            let Some((decided, through)) = decided else {
                return;
            };
            let outcome = match (asked.outcome, decided) {
                (true, Some(at)) => match self.with_snapshot(move |s| s.outcome(at)).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a bid's outcome");
                        return;
                    }
                },
                _ => None,
            };
            serde_json::to_vec(&DecidedReply {
                try_seq: decided.map(|at| at.seq),
                try_index: decided.map_or(0, |at| at.index),
                through,
                outcome,
            })
        } else if subject == subjects.command(auction_id) {
            let Ok(asked) = serde_json::from_slice::<CommandRequest>(&request.payload) else {
                tracing::warn!(subject, "unreadable command request ignored");
                return;
            };
            let reply_to = request.reply.as_ref().map(|r| r.to_string());
            let (result, through) = match self.protocol.command(asked.seq, reply_to) {
                // Not decided yet: answered when it is, rather than polled.
                CommandAnswer::Parked => return,
                CommandAnswer::NotYet { through } => (None, through),
                CommandAnswer::Read { through } => {
                    match self.with_snapshot(move |s| s.command(asked.seq)).await {
                        Ok(result) => (result, through),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read a command's result");
                            return;
                        }
                    }
                }
            };
            serde_json::to_vec(&CommandReply { result, through })
        } else if subject == subjects.tries_count(self.partition, None) {
            serde_json::to_vec(&self.protocol.tries(None))
        } else if subject == subjects.tries_count(self.partition, Some(auction_id)) {
            serde_json::to_vec(&self.protocol.tries(Some(auction_id)))
        } else {
            return;
        };
        let Some(reply_to) = request.reply else {
            return;
        };
        let body = body.expect("replies serialize");
        if let Err(e) = self
            .streams
            .js
            .client()
            .publish(reply_to, body.into())
            .await
        {
            tracing::warn!(error = %e, "cannot answer a gateway's request");
        }
    }

    /// Answers the parked command requests that a committed batch decided.
    async fn answer_parked(&mut self, answers: &[(String, Option<CommandResult>, u64)]) {
        let client = self.streams.js.client();
        for (reply_to, result, through) in answers {
            let body = serde_json::to_vec(&CommandReply {
                result: *result,
                through: *through,
            })
            .expect("replies serialize");
            if let Err(e) = client.publish(reply_to.clone(), body.into()).await {
                tracing::warn!(error = %e, "cannot answer a gateway's request");
            }
        }
    }

    /// Answers the gateways waiting for bids that a committed batch decided.
    async fn answer_waiting(&mut self, answers: Vec<(String, DecidedReply)>) {
        let client = self.streams.js.client();
        for (reply_to, reply) in answers {
            let body = serde_json::to_vec(&reply).expect("replies serialize");
            if let Err(e) = client.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "cannot answer a gateway's request");
            }
        }
    }

    /// Writes the close event of every auction past its `closes_at`. Every
    /// instance that does so at once writes the same event with the same
    /// message id, so JetStream keeps one, and the core ignores any later
    /// copy.
    async fn close_due(&mut self) {
        for close in self.protocol.due_closes(timestamp::now()) {
            let auction_id = close.auction_id.clone();
            if let Err(e) = self.streams.append(&LogEvent::Close(close)).await {
                // Tried again at the next check.
                tracing::warn!(error = %e, auction_id, "cannot write a deadline close");
                self.protocol.close_failed(&auction_id);
            }
        }
    }

    /// Runs snapshot work on a blocking thread.
    async fn with_snapshot<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Snapshot) -> std::result::Result<T, crate::snapshot::SnapshotError>
            + Send
            + 'static,
    ) -> Result<T> {
        let mut snapshot = self
            .snapshot
            .take()
            .expect("snapshot is present between batches");
        let (snapshot, result) = blocking(move || {
            let result = work(&mut snapshot);
            Ok((snapshot, result))
        })
        .await?;
        self.snapshot = Some(snapshot);
        Ok(result?)
    }
}

/// Sends the `held` notices of a committed batch. Notices, not
/// records: a lost one is corrected by the try's final outcome.
async fn send_holds(streams: &Streams, holds: &[HeldEvent]) {
    let client = streams.js.client();
    for h in holds {
        let body = serde_json::to_vec(h).expect("notices serialize");
        let subject = streams.subjects.hold(&h.auction_id);
        if let Err(e) = client.publish(subject, body.into()).await {
            tracing::warn!(error = %e, "cannot send a held notice");
            return;
        }
    }
}

/// A delivery at `delivered` skipped sequences from `from`: fine if none of
/// them is in this partition (another partition's, or deleted), but if one
/// is, a delivery was lost and the consumer must be re-aligned rather than
/// the entry skipped (acking `delivered` would ack it too).
async fn check_gap(streams: &Streams, partition: u32, from: u64, delivered: u64) -> Result<()> {
    match streams.next_in_partition(partition, from).await {
        Err(e) => Err(Error::with_source(ErrorKind::Nats, e).context("log gap check")),
        Ok(None) => Ok(()),
        Ok(Some(seq)) if seq >= delivered => Ok(()),
        Ok(Some(seq)) => Err(Error::new(
            ErrorKind::Nats,
            format!("log entry {seq} was not delivered; re-aligning the consumer"),
        )),
    }
}

/// Snapshot work of all the partitions a process decides, at most two at a
/// time: each blocking thread keeps an allocator heap of its own, and
/// eight partitions committing at once held eight (1M-bid soak: 221 MB
/// resident, against 176 MB with one partition).
static SNAPSHOT_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let _slot = SNAPSHOT_WORK.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Snapshot, e).context("snapshot thread"))?
}
