//! Admin and read requests: opening an auction, reporting its status.

use std::sync::Arc;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::Message;

use super::{internal, Gateway};
use crate::wire::{
    decode_close, decode_open, timestamp, AuctionState, ErrorCode, LogEvent, OpenEvent, OpenReply,
    RequestError, StatusReply,
};

impl Gateway {
    /// Opens an auction by appending its `open` event, expecting no earlier
    /// event on the auction's subject: JetStream itself settles a race
    /// between two opens.
    pub(super) async fn open(&self, message: &Message) -> Result<OpenReply, RequestError> {
        let subjects = &self.streams.subjects;
        let auction_id = subjects.auction_in(&message.subject, "admin.open")?;
        let spec = decode_open(&message.payload, auction_id)?;
        let event = LogEvent::Open(OpenEvent {
            auction_id: auction_id.to_string(),
            spec: spec.clone(),
            opened_at: timestamp::now(),
        });
        let (open_seq, duplicate) = match self.streams.append(&event).await {
            Ok(ack) => (ack.sequence, false),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                let stored = self
                    .streams
                    .first_event(auction_id)
                    .await
                    .map_err(internal)?;
                let Some(stored) = stored else {
                    return Err(internal(
                        "an open was refused as not the first event of an auction with no event",
                    ));
                };
                let Ok(LogEvent::Open(existing)) = serde_json::from_slice(&stored.payload) else {
                    return Err(RequestError::new(
                        ErrorCode::Internal,
                        format!("auction event for {auction_id:?} is not an open event"),
                    ));
                };
                if existing.spec != spec {
                    return Err(RequestError::new(
                        ErrorCode::Conflict,
                        format!(
                            "auction {auction_id:?} is already open with different settings: {}",
                            serde_json::to_string(&existing.spec).expect("specs serialize")
                        ),
                    ));
                }
                (stored.sequence, true)
            }
            Err(e) => return Err(internal(e)),
        };
        self.view
            .specs
            .write()
            .unwrap()
            .insert(auction_id.to_string(), Arc::new(spec.clone()));
        Ok(OpenReply::Opened {
            auction_id: auction_id.to_string(),
            spec,
            open_seq,
            duplicate,
        })
    }

    /// An auction's fill, counted from the streams themselves.
    pub(super) async fn status(&self, message: &Message) -> Result<StatusReply, RequestError> {
        let subjects = &self.streams.subjects;
        let auction_id = subjects.auction_in(&message.subject, "status")?;
        // A status request takes the body of a close request: empty, `{}`,
        // or the subject's `auction_id`.
        decode_close(&message.payload, auction_id)?;
        let Some(spec) = self.spec(auction_id).await? else {
            return Err(RequestError::new(
                ErrorCode::UnknownAuction,
                format!("no auction {auction_id:?} has been opened"),
            ));
        };
        let partition = subjects.partition(auction_id);
        let counts =
            crate::log::try_counts(&self.streams.js, subjects, partition, Some(auction_id))
                .await
                .map_err(internal)?;
        let tries = counts.tries.get(auction_id).copied().unwrap_or(0);
        let undecided = counts.not_reached.get(auction_id).copied().unwrap_or(0);
        let decided = self
            .outcomes
            .lock()
            .await
            .count(&self.streams.js, subjects, Some(auction_id))
            .await
            .map_err(internal)?
            .remove(auction_id)
            .unwrap_or_default();
        let (confirmed, cancelled) = (decided.confirmed, decided.cancelled);
        let closed = spec.is_closed_at(timestamp::now())
            || self.view.closed.read().unwrap().contains(auction_id);
        Ok(StatusReply::Ok {
            auction_id: auction_id.to_string(),
            state: state(closed, confirmed, spec.capacity.get()),
            spec: (*spec).clone(),
            tries,
            confirmed,
            cancelled,
            pending: pending(tries, confirmed + cancelled, undecided),
        })
    }
}

/// An auction's state in the status reply. The close is final, so it comes
/// first: an auction that filled and then closed (every ranked auction that
/// filled does) is `closed`; `sold_out` is an open auction with every slot
/// confirmed.
fn state(closed: bool, confirmed: u64, capacity: u32) -> AuctionState {
    if closed {
        AuctionState::Closed
    } else if confirmed >= u64::from(capacity) {
        AuctionState::SoldOut
    } else {
        AuctionState::Open
    }
}

/// Tries with no outcome yet that the verifier has still to reach. Either
/// count alone overstates it: `tries - outcomes` also holds the tries the
/// verifier passed for good with no outcome of their own (an unreadable
/// entry, a resend written again after the de-duplication window) and the
/// held tries of a ranked auction; `not_reached` also holds the tries whose
/// outcomes are out but not yet acked.
fn pending(tries: u64, outcomes: u64, not_reached: u64) -> u64 {
    tries.saturating_sub(outcomes).min(not_reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_auction_is_closed_even_when_it_filled() {
        assert_eq!(state(true, 2, 2), AuctionState::Closed);
        assert_eq!(state(true, 0, 2), AuctionState::Closed);
        assert_eq!(state(false, 2, 2), AuctionState::SoldOut);
        assert_eq!(state(false, 1, 2), AuctionState::Open);
    }

    #[test]
    fn pending_ends_once_the_verifier_has_passed_every_try() {
        // An entry skipped for good: no outcome, but passed.
        assert_eq!(pending(3, 2, 0), 0);
        // Two held tries of a ranked auction, passed, and one not reached.
        assert_eq!(pending(3, 0, 1), 1);
        // Outcomes out, acks not yet in.
        assert_eq!(pending(3, 3, 2), 0);
        // No verifier yet: every try without an outcome.
        assert_eq!(pending(3, 0, 3), 3);
    }
}
