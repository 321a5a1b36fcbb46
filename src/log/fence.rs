//! The fence: JetStream itself refuses outcomes from a verifier that has
//! been superseded.
//!
//! A lease says who should decide, but a verifier paused past its lease
//! (`SIGSTOP`, a long GC, a VM migration) does not know it until it looks,
//! and may be in the middle of publishing a batch when it wakes. So a
//! verifier, on taking the lease, appends its markers to the partition's
//! fence subjects in the outcome stream, and every outcome it publishes
//! carries `Nats-Expected-Last-Subject-Sequence` with the sequence of one
//! of its markers and `Nats-Expected-Last-Subject-Sequence-Subject` naming
//! that marker's subject. Once a successor has written its own markers,
//! the server refuses every outcome of the predecessor, however many are
//! in flight.
//!
//! Why many fence subjects (lanes) rather than one: a clustered stream
//! lets only one message at a time be in flight with a check against a
//! given subject, and refuses the others (`wrong last sequence`, error
//! 10164), which would serialize every outcome behind the previous one's
//! replication. Outcomes take the lanes in turn, and there are as many
//! lanes as outcomes can be unacked at once, so that no two outstanding
//! outcomes ever check the same lane.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;

use crate::error::{Error, ErrorKind, Result};
use crate::streams::Streams;

/// The header naming the subject that `Nats-Expected-Last-Subject-Sequence`
/// is checked against (nats-server 2.11 and later).
const EXPECTED_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// This verifier's markers on its partition's fence lanes.
#[derive(Debug)]
pub struct Fence {
    /// Lane subjects and the sequence of this verifier's marker on each.
    lanes: Vec<(String, u64)>,
    /// The lane the next outcome checks.
    next: AtomicUsize,
}

impl Fence {
    /// Writes this verifier's markers on every lane, fencing out whoever
    /// wrote the ones before; then drops those. Only a lease holder calls
    /// this, so markers need no compare-and-set of their own: were two
    /// verifiers ever to write at once, each would hold some lanes and
    /// both would be refused, which is safe. `lanes` must be at least as
    /// many as outcomes its holder leaves unacked at once.
    pub async fn take(
        streams: &Streams,
        partition: u32,
        owner: &str,
        lanes: usize,
    ) -> Result<Fence> {
        let marker = serde_json::json!({
            "type": "fence",
            "partition": partition,
            "owner": owner,
            "at": crate::wire::timestamp::now(),
        })
        .to_string();
        let failed = |e| Error::with_source(ErrorKind::Nats, e).context("writing the fence");
        let mut acks = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let subject = streams.subjects.fence(partition, lane);
            let ack = streams
                .js
                .send_publish(
                    subject.clone(),
                    PublishMessage::build().payload(marker.clone().into()),
                )
                .await
                .map_err(failed)?;
            acks.push((subject, ack));
        }
        let mut taken = Vec::with_capacity(lanes);
        for (subject, ack) in acks {
            taken.push((subject, ack.await.map_err(failed)?.sequence));
        }
        let first = taken.iter().map(|(_, seq)| *seq).min().unwrap_or(0);
        // Earlier holders' markers are of no further use.
        if let Err(e) = streams
            .outcomes
            .purge()
            .filter(streams.subjects.fence_lanes(partition))
            .sequence(first)
            .await
        {
            tracing::warn!(error = %e, "cannot drop old fence markers");
        }
        tracing::info!(partition, lanes, "fence taken");
        Ok(Fence::from_lanes(taken))
    }

    /// A fence whose markers are written already: `lanes` holds each lane's
    /// subject and the sequence of the marker on it (the simulator's
    /// stream writes its own).
    pub fn from_lanes(lanes: Vec<(String, u64)>) -> Fence {
        assert!(!lanes.is_empty(), "a fence has lanes");
        Fence {
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// Makes `message` acceptable only while this fence is the latest.
    pub fn stamp(&self, message: PublishMessage) -> PublishMessage {
        if crate::verifier::protocol::mutant(crate::verifier::protocol::Mutant::DropFenceHeader) {
            return message;
        }
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let (subject, seq) = &self.lanes[lane];
        message
            .expected_last_subject_sequence(*seq)
            .header(EXPECTED_SUBJECT, subject.as_str())
    }
}

/// An outcome's failed ack: a fence refusal means another verifier took
/// over.
pub fn refused(e: PublishError) -> Error {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        Error::new(
            ErrorKind::Fenced,
            "an outcome was refused by the fence: another verifier has taken over",
        )
    } else {
        Error::with_source(ErrorKind::Nats, e).context("publish outcome")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_server::{NatsCluster, NatsServer};
    use crate::streams::StreamOptions;
    use crate::wire::Subjects;

    async fn streams(url: &str, replicas: usize) -> Streams {
        let js = async_nats::jetstream::new(crate::client::connect(url).await.unwrap());
        for _ in 0..300 {
            if js.query_account().await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let options = StreamOptions {
            replicas,
            ..StreamOptions::default()
        };
        Streams::ensure(js, Subjects::default(), &options)
            .await
            .unwrap()
    }

    /// Lanes in these tests: as many as a verifier takes.
    const LANES: usize = crate::verifier::FENCE_LANES;

    /// Sends `n` stamped outcomes at once, then waits for every ack.
    async fn publish(streams: &Streams, fence: &Fence, n: usize) -> Vec<Result<u64>> {
        let mut acks = Vec::with_capacity(n);
        for i in 0..n {
            let message = PublishMessage::build().payload(format!("{i}").into());
            let subject = streams
                .subjects
                .outcome("x", crate::wire::OutcomeKind::Confirmed);
            acks.push(
                streams
                    .js
                    .send_publish(subject, fence.stamp(message))
                    .await
                    .unwrap(),
            );
        }
        let mut results = Vec::with_capacity(n);
        for ack in acks {
            results.push(ack.await.map(|a| a.sequence).map_err(refused));
        }
        results
    }

    /// A fence admits any number of its holder's outcomes in flight at once
    /// (up to the lanes), and none once a successor has taken it.
    async fn fences_out_the_predecessor(streams: &Streams) {
        let first = Fence::take(streams, 0, "first", LANES).await.unwrap();
        let accepted = publish(streams, &first, LANES).await;
        assert!(
            accepted.iter().all(Result::is_ok),
            "{:?}",
            accepted.iter().find(|r| r.is_err())
        );

        let second = Fence::take(streams, 0, "second", LANES).await.unwrap();
        let refused = publish(streams, &first, 100).await;
        for result in &refused {
            let e = result.as_ref().expect_err("the predecessor is fenced out");
            assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
        }
        let accepted = publish(streams, &second, 100).await;
        assert!(accepted.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn a_successor_fences_out_the_predecessor_on_one_server() {
        let server = NatsServer::start().unwrap();
        fences_out_the_predecessor(&streams(server.url(), 1).await).await;
    }

    /// A clustered stream lets one message at a time be in flight with a
    /// check against one subject; the lanes keep outcomes from waiting on
    /// each other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_successor_fences_out_the_predecessor_on_a_three_node_cluster() {
        let cluster = NatsCluster::start(3).unwrap();
        fences_out_the_predecessor(&streams(&cluster.urls(), 3).await).await;
    }
}
