//! The bid path: validate, refuse early what can never win, else append
//! the try; and give a resent bid its original reply.

use async_nats::Message;

use super::failure::{unavailable, CATCH_UP_RETRY_MS};
use super::{internal, Gateway};
use crate::identity::unqualified;
use crate::wire::{
    decode_bid, timestamp, BidReply, BidRequest, DecidedReply, DecidedRequest, ErrorCode, LogEvent,
    RejectReason, RequestError, TryEvent,
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
            bid_id,
            bidder_id,
            amount: request.amount,
        };
        Ok(match self.bid_logged(auction_id, logged).await? {
            BidReply::Accepted {
                try_seq, duplicate, ..
            } => BidReply::Accepted {
                bid_id: request.bid_id,
                auction_id: auction_id.to_string(),
                try_seq,
                duplicate,
            },
            BidReply::Rejected { reason, .. } => BidReply::Rejected {
                bid_id: request.bid_id,
                auction_id: auction_id.to_string(),
                reason,
            },
            error @ BidReply::Error { .. } => error,
        })
    }

    /// A bid with its ids as the log keeps them.
    async fn bid_logged(
        &self,
        auction_id: &str,
        request: BidRequest,
    ) -> Result<BidReply, RequestError> {
        let reject = |reason| BidReply::Rejected {
            bid_id: request.bid_id.clone(),
            auction_id: auction_id.to_string(),
            reason,
        };
        let _handling = self.view.bids.handle(auction_id, &request.bid_id).await;
        let Some(spec) = self.spec(auction_id).await? else {
            return Ok(reject(RejectReason::UnknownAuction));
        };
        // An accepted bid met the minimum, so this is no resend of one, but
        // its id may have been used with another amount: a conflict. (Seen
        // once that bid is decided; until then the reply is below_minimum.)
        if request.amount < spec.min_amount {
            return match self.decided(auction_id, &request.bid_id, 0).await {
                Known::Decided(try_seq) => self.duplicate(auction_id, &request, try_seq).await,
                Known::New | Known::Unknown => Ok(reject(RejectReason::BelowMinimum)),
            };
        }
        // Counted before the fill and close checks, so that a resend seeing
        // the auction sold out or closed can wait for this append.
        let appending = self.view.appends.start(auction_id);
        let now = timestamp::now();
        let mut blocked = self.view.blocked(auction_id, spec.is_closed_at(now));
        // A view that cannot vouch for itself (its watch lost, restarted or
        // behind) may lack a sell-out or close for which another gateway
        // has refused bids already: read the auction's status instead.
        if blocked.is_none() && !self.view.freshness.current() {
            let status = &self.streams.status;
            self.view.read_status(status, auction_id).await?;
            blocked = self.view.blocked(auction_id, spec.is_closed_at(now));
        }
        if let Some(reason) = blocked {
            // The bid may be a resend of one accepted before the auction
            // filled or closed: that one gets its original reply. Once the
            // verifier has decided all of the auction's tries, it knows
            // every such bid. Until then (or if the verifier cannot be
            // asked) the bid cannot be proven new, and gets an error to
            // resend it. Writing its try instead would answer a resend
            // without the verifier, but a bid already refused here as new
            // would then be accepted on its next resend, and cancelled:
            // two answers for one bid.
            let ticket = appending.ticket;
            drop(appending);
            let drained = self.view.appends.drained(auction_id, ticket).await;
            let settled = match drained {
                true => self.settled(auction_id).await?,
                false => None,
            };
            if let Some(last_try) = settled {
                match self.decided(auction_id, &request.bid_id, last_try).await {
                    Known::Decided(try_seq) => {
                        return self.duplicate(auction_id, &request, try_seq).await
                    }
                    Known::New => return Ok(reject(reason)),
                    Known::Unknown => {}
                }
            }
            return Err(unavailable(
                format!(
                    "auction {auction_id:?} is {}, and its verifier has not yet decided all of its tries, so bid_id {:?} cannot be told from a resend of an accepted bid; resend it in {CATCH_UP_RETRY_MS} ms",
                    match reason {
                        RejectReason::AuctionClosed => "closed",
                        _ => "sold out",
                    },
                    unqualified(&request.bid_id)
                ),
                CATCH_UP_RETRY_MS,
            ));
        }
        let event = LogEvent::Try(TryEvent {
            bid_id: request.bid_id.clone(),
            auction_id: auction_id.to_string(),
            bidder_id: request.bidder_id.clone(),
            amount: request.amount,
            tried_at: now,
        });
        let ack = self.streams.append(&event).await.map_err(internal)?;
        drop(appending);
        if ack.duplicate {
            return self.duplicate(auction_id, &request, ack.sequence).await;
        }
        Ok(BidReply::Accepted {
            bid_id: request.bid_id,
            auction_id: auction_id.to_string(),
            try_seq: ack.sequence,
            duplicate: false,
        })
    }

    /// The reply to a bid id already in the log at `try_seq`.
    pub(super) async fn duplicate(
        &self,
        auction_id: &str,
        request: &BidRequest,
        try_seq: u64,
    ) -> Result<BidReply, RequestError> {
        let stored = self.streams.entry(try_seq).await.map_err(internal)?;
        match serde_json::from_slice::<LogEvent>(&stored.payload) {
            Ok(LogEvent::Try(t)) => resend(auction_id, request, try_seq, &t.bidder_id, t.amount),
            _ => Err(RequestError::new(
                ErrorCode::Internal,
                format!("log entry {try_seq} is not a try"),
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
                try_seq: Some(seq), ..
            }) => Known::Decided(seq),
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

/// How long a gateway waits for the verifier to say whether it decided a bid.
const DECIDED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the verifier knows of a bid.
pub(super) enum Known {
    /// Decided by the try at this log sequence.
    Decided(u64),
    /// Not decided, and the verifier has decided every try it needs to know.
    New,
    /// No answer, or the verifier is behind: the bid cannot be proven new.
    Unknown,
}

/// The reply to a resent bid id whose first try is at `try_seq`: the
/// original acceptance if the body is the same, a conflict if not. The
/// conflict names neither the bidder nor the amount of the bid that holds
/// the id: in the open mode anyone can send any bid id.
fn resend(
    auction_id: &str,
    request: &BidRequest,
    try_seq: u64,
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
        try_seq,
        duplicate: true,
    })
}
