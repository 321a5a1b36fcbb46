//! Auctions as event-sourced aggregates, shared by the optimistic and the
//! locking strategy: one subject per auction, read by catching up from the
//! last event seen, and a pure command handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::header::{HeaderMap, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use async_nats::jetstream::{self, Context};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::core::{Ledger, Step, Verdict};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{
    timestamp, AuctionSpec, BidReply, BidRequest, ErrorCode, LogEvent, OpenEvent, OutcomeEvent,
    OutcomeKind, RejectReason, Subjects, TryEvent,
};

/// An event on an aggregate's subject: the `open` event, then decisions.
#[derive(Deserialize)]
#[serde(untagged)]
enum AggregateEvent {
    Open(LogEvent),
    Decided(OutcomeEvent),
}

/// What this process knows of one auction's aggregate. Shared by every
/// handler in the process, which only makes the strategies cheaper than
/// separate readers would be: each read fetches only the events since the
/// last one any handler saw.
#[derive(Default)]
struct Known {
    ledger: Ledger,
    /// Stream sequence of the last event applied.
    last_seq: u64,
    /// Decided bids: their event's sequence, to answer a resend.
    decided: HashMap<Box<str>, u64>,
}

/// What a handler makes of a bid on one read of the aggregate.
#[derive(Debug, PartialEq)]
pub enum Attempt {
    /// Answer at once: refused, or already decided.
    Reply(BidReply),
    /// Append this decision, expecting the aggregate's last event to be at
    /// `expected_seq`.
    Append {
        expected_seq: u64,
        event: OutcomeEvent,
    },
}

/// The aggregates of one strategy, in their own stream.
pub struct Aggregates {
    js: Context,
    stream: stream::Stream,
    /// `<prefix>.<strategy>`: each auction's subject is `<base>.<auction_id>`.
    base: String,
    known: Mutex<HashMap<String, Arc<Mutex<Known>>>>,
}

impl Aggregates {
    /// Creates (or binds to) the stream `<PREFIX>_<NAME>` on subjects
    /// `<prefix>.<name>.*`, file-stored like allot's own log.
    pub async fn ensure(
        client: async_nats::Client,
        subjects: &Subjects,
        name: &str,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        let base = format!("{}.{name}", subjects.prefix());
        let stream_name = format!(
            "{}_{}",
            subjects.prefix().to_uppercase(),
            name.to_uppercase()
        );
        let stream = js
            .get_or_create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("{base}.*")],
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(Error::wrap(ErrorKind::Setup, stream_name))?;
        Ok(Aggregates {
            js,
            stream,
            base,
            known: Mutex::default(),
        })
    }

    /// The name of the stream holding the aggregates.
    pub fn stream_name(&self) -> String {
        self.stream.cached_info().config.name.clone()
    }

    /// The wildcard subject of every aggregate.
    pub fn subjects(&self) -> String {
        format!("{}.*", self.base)
    }

    fn subject(&self, auction_id: &str) -> String {
        format!("{}.{auction_id}", self.base)
    }

    /// Opens an auction: its first event. Idempotent for the same spec.
    pub async fn open(&self, auction_id: &str, spec: &AuctionSpec) -> Result<()> {
        let event = LogEvent::Open(OpenEvent {
            auction_id: auction_id.to_string(),
            spec: spec.clone(),
            opened_at: timestamp::now(),
        });
        match self.append(auction_id, 0, &event).await? {
            Ok(_) => Ok(()),
            Err(()) => {
                self.catch_up(auction_id).await?;
                let known = self.known(auction_id);
                let known = known.lock().expect("lock poisoned");
                match known.ledger.spec(auction_id) {
                    Some(existing) if existing == spec => Ok(()),
                    _ => Err(Error::new(
                        ErrorKind::Config,
                        format!("auction {auction_id} is already open with other settings"),
                    )),
                }
            }
        }
    }

    /// Reads the aggregate up to its newest event and decides the bid on it.
    pub async fn attempt(&self, auction_id: &str, bid: &BidRequest) -> Result<Attempt> {
        self.catch_up(auction_id).await?;
        let known = self.known(auction_id);
        let known = known.lock().expect("lock poisoned");
        Ok(handle(&known, auction_id, bid, timestamp::now()))
    }

    /// One read, decision and append: the reply, or `None` when another
    /// writer appended to the aggregate between the read and the append.
    pub async fn decide_and_append(
        &self,
        auction_id: &str,
        bid: &BidRequest,
    ) -> Result<Option<BidReply>> {
        let (expected_seq, event) = match self.attempt(auction_id, bid).await? {
            Attempt::Reply(reply) => return Ok(Some(reply)),
            Attempt::Append {
                expected_seq,
                event,
            } => (expected_seq, event),
        };
        let appended = self.append(auction_id, expected_seq, &event).await?;
        Ok(appended.ok().map(|seq| BidReply::Accepted {
            bid_id: bid.bid_id.clone(),
            auction_id: auction_id.to_string(),
            try_seq: seq,
            try_index: 0,
            duplicate: false,
        }))
    }

    /// Appends `event` if the aggregate's last event is still at
    /// `expected_seq`: `Ok(Err(()))` when another writer got there first.
    pub async fn append<T: serde::Serialize>(
        &self,
        auction_id: &str,
        expected_seq: u64,
        event: &T,
    ) -> Result<std::result::Result<u64, ()>> {
        let mut headers = HeaderMap::new();
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected_seq.to_string().as_str(),
        );
        let body = serde_json::to_vec(event).expect("events serialize");
        let subject = self.subject(auction_id);
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, body.into())
            .await
            .map_err(Error::wrap(ErrorKind::Nats, subject.clone()))?
            .await;
        match ack {
            Ok(ack) => Ok(Ok(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Err(())),
            Err(e) => Err(Error::with_source(ErrorKind::Nats, e).context(subject)),
        }
    }

    fn known(&self, auction_id: &str) -> Arc<Mutex<Known>> {
        let mut all = self.known.lock().expect("lock poisoned");
        all.entry(auction_id.to_string()).or_default().clone()
    }

    /// Applies every event after the last one seen. Ends with one read that
    /// finds nothing newer, so a decision is always made on the aggregate as
    /// it was a moment ago, never on a stale cache alone.
    async fn catch_up(&self, auction_id: &str) -> Result<()> {
        let known = self.known(auction_id);
        let subject = self.subject(auction_id);
        let mut next = known.lock().expect("lock poisoned").last_seq + 1;
        loop {
            let message = match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::with_source(ErrorKind::Nats, e).context(subject)),
            };
            next = message.sequence + 1;
            let mut known = known.lock().expect("lock poisoned");
            if message.sequence > known.last_seq {
                apply(&mut known, message.sequence, &message.payload, auction_id)?;
            }
        }
    }
}

fn apply(known: &mut Known, seq: u64, payload: &[u8], auction_id: &str) -> Result<()> {
    let event: AggregateEvent = serde_json::from_slice(payload).map_err(|e| {
        Error::with_source(ErrorKind::Protocol, e)
            .context(format!("event {seq} of auction {auction_id}"))
    })?;
    match event {
        AggregateEvent::Open(LogEvent::Open(open)) => {
            known.ledger.open(&open);
        }
        AggregateEvent::Open(_) => {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("event {seq} of auction {auction_id} is neither an open nor a decision"),
            ))
        }
        AggregateEvent::Decided(outcome) => {
            let verdict = Verdict::of(&outcome).ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("event {seq}: confirmed without a rank"),
                )
            })?;
            known.ledger.restore(
                auction_id,
                &outcome.bid_id,
                &outcome.bidder_id,
                verdict,
                seq.into(),
            );
            known.decided.insert(outcome.bid_id.as_str().into(), seq);
        }
    }
    known.last_seq = seq;
    Ok(())
}

/// The command handler: pure. The same fast rejects as allot's gateway
/// (nothing is written for a bid that can never win), then the same rules as
/// allot's verifier.
fn handle(known: &Known, auction_id: &str, bid: &BidRequest, now: DateTime<Utc>) -> Attempt {
    let reject = |reason| {
        Attempt::Reply(BidReply::Rejected {
            bid_id: bid.bid_id.clone(),
            auction_id: auction_id.to_string(),
            reason,
        })
    };
    if let Some(&seq) = known.decided.get(bid.bid_id.as_str()) {
        return Attempt::Reply(BidReply::Accepted {
            bid_id: bid.bid_id.clone(),
            auction_id: auction_id.to_string(),
            try_seq: seq,
            try_index: 0,
            duplicate: true,
        });
    }
    let (Some(spec), Some(fill)) = (known.ledger.spec(auction_id), known.ledger.fill(auction_id))
    else {
        return reject(RejectReason::UnknownAuction);
    };
    if spec.is_closed_at(now) {
        return reject(RejectReason::AuctionClosed);
    }
    if bid.amount < spec.min_amount {
        return reject(RejectReason::BelowMinimum);
    }
    if fill.sold_out() {
        return reject(RejectReason::SoldOut);
    }
    let t = TryEvent {
        bid_id: bid.bid_id.clone(),
        auction_id: auction_id.to_string(),
        bidder_id: bid.bidder_id.clone(),
        amount: bid.amount,
        tried_at: now,
    };
    let verdict = match known.ledger.judge(&t) {
        Step::Decided(verdict) => verdict,
        // `decided` above already answered every duplicate; ranked
        // auctions are this service's alone.
        _ => {
            return Attempt::Reply(BidReply::Error {
                error: ErrorCode::Internal,
                message: "the occ and lock strategies decide first_n auctions only".into(),
                retry_after_ms: None,
            })
        }
    };
    let (kind, rank, reason) = match verdict {
        Verdict::Confirmed { rank } => (OutcomeKind::Confirmed, Some(rank), None),
        Verdict::Cancelled { reason } => (OutcomeKind::Cancelled, None, Some(reason)),
    };
    Attempt::Append {
        expected_seq: known.last_seq,
        event: OutcomeEvent {
            kind,
            bid_id: t.bid_id,
            auction_id: t.auction_id,
            bidder_id: t.bidder_id,
            amount: t.amount,
            // No separate try: the decided event is the bid's only record.
            try_seq: 0,
            try_index: 0,
            tried_at: now,
            decided_at: now,
            rank,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::CancelReason;

    fn bid(id: &str, bidder: &str, amount: u64) -> BidRequest {
        BidRequest {
            bid_id: id.into(),
            bidder_id: bidder.into(),
            amount,
            wait: false,
        }
    }

    fn opened(capacity: u32) -> Known {
        let mut known = Known::default();
        let open = LogEvent::Open(OpenEvent {
            auction_id: "a".into(),
            spec: AuctionSpec {
                min_amount: 10,
                ..AuctionSpec::with_capacity(capacity)
            },
            opened_at: timestamp::now(),
        });
        apply(&mut known, 1, &serde_json::to_vec(&open).unwrap(), "a").unwrap();
        known
    }

    fn decide(known: &mut Known, b: &BidRequest) -> Attempt {
        let attempt = handle(known, "a", b, timestamp::now());
        if let Attempt::Append { event, .. } = &attempt {
            let seq = known.last_seq + 1;
            apply(known, seq, &serde_json::to_vec(event).unwrap(), "a").unwrap();
        }
        attempt
    }

    #[test]
    fn decides_on_the_aggregate_and_expects_its_last_event() {
        let mut known = opened(1);
        match decide(&mut known, &bid("b1", "x", 10)) {
            Attempt::Append {
                expected_seq,
                event,
            } => {
                assert_eq!(expected_seq, 1);
                assert_eq!((event.kind, event.rank), (OutcomeKind::Confirmed, Some(1)));
            }
            other => panic!("{other:?}"),
        }
        // Sold out now: refused without a write, like allot's fast reject.
        assert!(matches!(
            decide(&mut known, &bid("b2", "y", 10)),
            Attempt::Reply(BidReply::Rejected {
                reason: RejectReason::SoldOut,
                ..
            })
        ));
        // A resend gets the original event's sequence.
        assert!(matches!(
            decide(&mut known, &bid("b1", "x", 10)),
            Attempt::Reply(BidReply::Accepted {
                try_seq: 2,
                duplicate: true,
                ..
            })
        ));
    }

    #[test]
    fn applies_the_same_rules_as_the_verifier() {
        let mut known = opened(3);
        assert!(matches!(
            decide(&mut known, &bid("b1", "x", 9)),
            Attempt::Reply(BidReply::Rejected {
                reason: RejectReason::BelowMinimum,
                ..
            })
        ));
        decide(&mut known, &bid("b2", "x", 10));
        match decide(&mut known, &bid("b3", "x", 10)) {
            Attempt::Append { event, .. } => {
                assert_eq!(event.reason, Some(CancelReason::BidderLimit))
            }
            other => panic!("{other:?}"),
        }
        let unknown = handle(
            &Known::default(),
            "a",
            &bid("b4", "y", 10),
            timestamp::now(),
        );
        assert!(matches!(
            unknown,
            Attempt::Reply(BidReply::Rejected {
                reason: RejectReason::UnknownAuction,
                ..
            })
        ));
    }
}
