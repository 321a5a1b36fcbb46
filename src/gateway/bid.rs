//! The bid path: validate, refuse early what can never win, else append
//! the try; and give a resent bid its original reply.

use async_nats::jetstream::stream::{DirectGetError, DirectGetErrorKind};
use async_nats::Message;

use super::failure::{unavailable, CATCH_UP_RETRY_MS};
pub(super) use super::gate::Known;
use super::gate::{Answer, BidGate, Fact, Step};
use super::{internal, Gateway};
use crate::identity::unqualified;
use crate::wire::{
    decode_bid, timestamp, BidReply, BidRequest, DecidedReply, DecidedRequest, ErrorCode,
    OutcomeEvent, OutcomeKind, RejectReason, RequestError, TryAt, TryEvent,
};

impl Gateway {
    /// A bid: who sends it, then validate, maybe refuse early, else append
    /// its try. The reply names the bid as the client did.
    pub(super) async fn bid(&self, message: &Message) -> Result<BidReply, RequestError> {
        let actor = self.gate.admit(message.headers.as_ref())?;
        let auction_id = self.streams.subjects.auction_in(&message.subject, "bid")?;
        let request = decode_bid(&message.payload, auction_id)?;
        let (bid_id, bidder_id) = actor.log_ids(&request.bid_id, &request.bidder_id)?;
        let logged = BidRequest {
            bid_id: bid_id.clone(),
            bidder_id,
            amount: request.amount,
            wait: request.wait,
        };
        Ok(match self.bid_logged(auction_id, logged).await? {
            BidReply::Accepted {
                try_seq,
                try_index,
                duplicate,
                ..
            } => {
                let at = TryAt::new(try_seq, try_index);
                let (at, duplicate, outcome) = match request.wait {
                    true => match self.outcome_of(auction_id, &bid_id, at).await {
                        // A resend this gateway did not know: the verifier
                        // decided the bid by an earlier try, the original.
                        Some((first, outcome)) if first != at => (first, true, outcome),
                        Some((_, outcome)) => (at, duplicate, outcome),
                        None => (at, duplicate, None),
                    },
                    false => (at, duplicate, None),
                };
                decided(request.bid_id, auction_id, at, duplicate, outcome)
            }
            BidReply::Rejected { reason, .. } => BidReply::Rejected {
                bid_id: request.bid_id,
                auction_id: auction_id.to_string(),
                reason,
            },
            other => other,
        })
    }

    /// The try that decided the bid whose try is at `at` (that one, or
    /// an earlier try of the same bid id), once the verifier has decided
    /// it through `at`, with the bid's outcome (`None` for a held bid of a
    /// ranked auction, decided only at its close); `None` if the verifier
    /// does not answer in time.
    async fn outcome_of(
        &self,
        auction_id: &str,
        bid_id: &str,
        at: TryAt,
    ) -> Option<(TryAt, Option<OutcomeEvent>)> {
        let subject = self.streams.subjects.decided(auction_id);
        let body = serde_json::to_vec(&DecidedRequest {
            bid_id: bid_id.to_string(),
            outcome: true,
            wait_for: Some(at.seq),
        })
        .expect("requests serialize");
        let asked =
            tokio::time::timeout(DECIDED_TIMEOUT, self.client.request(subject, body.into())).await;
        match asked {
            Ok(Ok(reply)) => {
                let reply = serde_json::from_slice::<DecidedReply>(&reply.payload).ok()?;
                let first = TryAt::new(reply.try_seq?, reply.try_index);
                let outcome = reply
                    .outcome
                    .filter(|o| TryAt::new(o.try_seq, o.try_index) == first);
                Some((first, outcome))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot ask the verifier for a bid's outcome");
                None
            }
            Err(_) => None,
        }
    }

    /// A bid with its ids as the log keeps them: the resend gate's steps,
    /// carried out (see `gate.rs`).
    async fn bid_logged(
        &self,
        auction_id: &str,
        request: BidRequest,
    ) -> Result<BidReply, RequestError> {
        let _handling = self.view.bids.handle(auction_id, &request.bid_id).await;
        let mut gate = BidGate::new(request.amount);
        // What the steps so far found, for the later ones.
        let mut appending = None;
        let mut tried_at = None;
        loop {
            let fact = match gate.step() {
                Step::LookUpSpec => match self.spec(auction_id).await? {
                    Some(spec) => Fact::Auction {
                        min_amount: spec.min_amount,
                    },
                    None => Fact::NoAuction,
                },
                Step::AskVerifier { through } => {
                    Fact::Verifier(self.decided(auction_id, &request.bid_id, through).await)
                }
                Step::BeginAppend => {
                    appending = Some(self.view.appends.start(auction_id));
                    tried_at = Some(timestamp::now());
                    self.look(auction_id)
                }
                Step::ReadStatus => {
                    let status = &self.streams.status;
                    self.view.read_status(status, auction_id).await?;
                    Fact::StatusRead
                }
                Step::CheckView => self.look(auction_id),
                Step::Drain => {
                    let ticket = appending
                        .take()
                        .map(|appending| appending.ticket)
                        .expect("the gate drains only a bid it counts as appending");
                    Fact::Drained(self.view.appends.drained(auction_id, ticket).await)
                }
                Step::Settle => Fact::Settled(self.settled(auction_id).await?),
                Step::Append => {
                    if let Some(at) = self.remembered(auction_id, &request.bid_id).await {
                        appending = None;
                        Fact::Appended {
                            at,
                            duplicate: true,
                        }
                    } else {
                        let t = TryEvent {
                            bid_id: request.bid_id.clone(),
                            auction_id: auction_id.to_string(),
                            bidder_id: request.bidder_id.clone(),
                            amount: request.amount,
                            tried_at: tried_at.expect("taken when the append began"),
                        };
                        let (at, duplicate) = self.tries.append(t).await.map_err(internal)?;
                        appending = None;
                        self.recent.insert(auction_id, &request.bid_id, at);
                        Fact::Appended { at, duplicate }
                    }
                }
                Step::Answer(answer) => return self.answer(auction_id, &request, answer).await,
            };
            gate.handle(fact);
        }
    }

    /// Where this gateway appended the bid's try before, if it remembers
    /// and the log confirms it: the try there is this bid's.
    async fn remembered(&self, auction_id: &str, bid_id: &str) -> Option<TryAt> {
        let at = self.recent.get(auction_id, bid_id)?;
        match self.streams.try_at(at).await {
            Ok(Some(t)) if t.auction_id == auction_id && t.bid_id == bid_id => Some(at),
            Ok(_) => None,
            // Not readable yet from the replica asked: append again; the
            // verifier gives the second try no outcome.
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a remembered try");
                None
            }
        }
    }

    /// What the view says of a bid to `auction_id`. A close counts once the
    /// verifier has decided it, never by this gateway's clock: the log's
    /// clock decides the close (`Ledger::apply_entry`), and a refusal is
    /// final, so a gateway whose clock runs ahead must not refuse a bid that
    /// another gateway's try would still win. Until the close is decided,
    /// a late bid's try is written and cancelled `auction_closed`.
    fn look(&self, auction_id: &str) -> Fact {
        Fact::View {
            blocked: self.view.blocked(auction_id),
            current: self.view.freshness.current(),
        }
    }

    /// The reply the gate's answer makes.
    async fn answer(
        &self,
        auction_id: &str,
        request: &BidRequest,
        answer: Answer,
    ) -> Result<BidReply, RequestError> {
        match answer {
            Answer::Accepted { at } => Ok(BidReply::Accepted {
                bid_id: request.bid_id.clone(),
                auction_id: auction_id.to_string(),
                try_seq: at.seq,
                try_index: at.index,
                duplicate: false,
            }),
            Answer::Duplicate { at } => self.duplicate(auction_id, request, at).await,
            Answer::Rejected(reason) => Ok(BidReply::Rejected {
                bid_id: request.bid_id.clone(),
                auction_id: auction_id.to_string(),
                reason,
            }),
            Answer::Unavailable {
                blocked,
                retry_after_ms,
            } => Err(unavailable(
                format!(
                    "auction {auction_id:?} is {}, and its verifier has not yet decided all of its tries, so bid_id {:?} cannot be told from a resend of an accepted bid; resend it in {retry_after_ms} ms",
                    match blocked {
                        RejectReason::AuctionClosed => "closed",
                        _ => "sold out",
                    },
                    unqualified(&request.bid_id)
                ),
                retry_after_ms,
            )),
        }
    }

    /// The reply to a bid id already in the log at `at`.
    pub(super) async fn duplicate(
        &self,
        auction_id: &str,
        request: &BidRequest,
        at: TryAt,
    ) -> Result<BidReply, RequestError> {
        let first = self
            .streams
            .try_at(at)
            .await
            .map_err(|e| unreadable_try(e, &request.bid_id))?;
        match first {
            Some(t) => resend(auction_id, request, at, &t.bidder_id, t.amount),
            None => Err(RequestError::new(
                ErrorCode::Internal,
                format!("log entry {at} is not a try"),
            )),
        }
    }

    /// What the verifier knows of a bid: asked, since it holds every
    /// decided bid id. `New` only when it has decided the log through
    /// `through_at_least`, so that no try before that is missed.
    pub(super) async fn decided(
        &self,
        auction_id: &str,
        bid_id: &str,
        through_at_least: u64,
    ) -> Known {
        let subject = self.streams.subjects.decided(auction_id);
        let body = serde_json::to_vec(&DecidedRequest {
            bid_id: bid_id.to_string(),
            outcome: false,
            wait_for: None,
        })
        .expect("requests serialize");
        let asked =
            tokio::time::timeout(DECIDED_TIMEOUT, self.client.request(subject, body.into())).await;
        let reply = match asked {
            Ok(Ok(reply)) => serde_json::from_slice::<DecidedReply>(&reply.payload),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot ask the verifier about a bid");
                return Known::Unknown;
            }
            Err(_) => return Known::Unknown,
        };
        match reply {
            Ok(DecidedReply {
                try_seq: Some(seq),
                try_index,
                ..
            }) => Known::Decided(TryAt::new(seq, try_index)),
            Ok(DecidedReply { through, .. }) if through >= through_at_least => Known::New,
            Ok(_) => Known::Unknown,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable answer from the verifier");
                Known::Unknown
            }
        }
    }

    /// The sequence of the auction's last try in the log (0 if none), once
    /// the verifier has decided it, so that a bid id it has not decided is
    /// new. Waits a little for the verifier to catch up; `None` if it does not.
    pub(super) async fn settled(&self, auction_id: &str) -> Result<Option<u64>, RequestError> {
        let Some(last_try) = self.streams.last_try(auction_id).await.map_err(internal)? else {
            return Ok(Some(0));
        };
        // The verifier acks a try only after its outcome is stored, so its ack floor tells what is decided.
        let consumer = crate::wire::names::verifier_consumer(
            &self.config.verifier_consumer,
            self.streams.subjects.partition(auction_id),
        );
        for _ in 0..25 {
            match self
                .view
                .decided_through(&self.streams.log, &consumer)
                .await
            {
                Some(floor) if floor >= last_try => return Ok(Some(last_try)),
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                None => return Ok(None),
            }
        }
        Ok(None)
    }
}

/// The error for a resent bid whose first try cannot be read. The append's
/// ack named the entry, so it is stored: "not found" means the replica
/// that answered the direct get has not caught up with the leader yet,
/// which passes.
fn unreadable_try(e: DirectGetError, bid_id: &str) -> RequestError {
    if e.kind() == DirectGetErrorKind::NotFound {
        return unavailable(
            format!(
                "bid_id {:?} was accepted before, but the log's copy of its try is not readable here yet; send it again in {CATCH_UP_RETRY_MS} ms",
                unqualified(bid_id)
            ),
            CATCH_UP_RETRY_MS,
        );
    }
    internal(e)
}

/// The reply to an accepted bid, with its decision when there is one
/// (a bid that asked to wait).
fn decided(
    bid_id: String,
    auction_id: &str,
    at: TryAt,
    duplicate: bool,
    outcome: Option<OutcomeEvent>,
) -> BidReply {
    let auction_id = auction_id.to_string();
    let (try_seq, try_index) = (at.seq, at.index);
    match outcome {
        Some(OutcomeEvent {
            kind: OutcomeKind::Confirmed,
            rank: Some(rank),
            ..
        }) => BidReply::Confirmed {
            bid_id,
            auction_id,
            try_seq,
            try_index,
            duplicate,
            rank,
        },
        Some(OutcomeEvent {
            kind: OutcomeKind::Cancelled,
            reason: Some(reason),
            ..
        }) => BidReply::Cancelled {
            bid_id,
            auction_id,
            try_seq,
            try_index,
            duplicate,
            reason,
        },
        _ => BidReply::Accepted {
            bid_id,
            auction_id,
            try_seq,
            try_index,
            duplicate,
        },
    }
}

/// How long a gateway waits for the verifier to say whether it decided a bid.
const DECIDED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The reply to a resent bid id whose first try is at `at`: the
/// original acceptance if the body is the same, a conflict if not. The
/// conflict names neither the bidder nor the amount of the bid that holds
/// the id: in the open mode anyone can send any bid id.
fn resend(
    auction_id: &str,
    request: &BidRequest,
    at: TryAt,
    bidder_id: &str,
    amount: u64,
) -> Result<BidReply, RequestError> {
    if request.bidder_id != bidder_id || request.amount != amount {
        return Err(RequestError::new(
            ErrorCode::Conflict,
            format!(
                "bid_id {:?} was already used in auction {auction_id:?} for a different bid; use a new bid_id",
                unqualified(&request.bid_id)
            ),
        ));
    }
    Ok(BidReply::Accepted {
        bid_id: request.bid_id.clone(),
        auction_id: auction_id.to_string(),
        try_seq: at.seq,
        try_index: at.index,
        duplicate: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resend's first try not yet on the replica that answered is a
    /// moment's wait, not a fault (seen in the fault campaign as 500s).
    #[test]
    fn a_try_not_yet_readable_is_unavailable_with_a_hint() {
        let e = unreadable_try(DirectGetError::new(DirectGetErrorKind::NotFound), "b1@A/u");
        assert_eq!(
            (e.code, e.retry_after_ms),
            (ErrorCode::Unavailable, Some(CATCH_UP_RETRY_MS))
        );
        assert!(e.message.contains("\"b1\""), "{}", e.message);
        let e = unreadable_try(
            DirectGetError::new(DirectGetErrorKind::InvalidSubject),
            "b1",
        );
        assert_eq!(e.code, ErrorCode::Internal);
    }
}
