//! Withdrawals, raises and closes: each is appended to the log like a try,
//! and decided by the verifier in log order. A withdraw or a raise is
//! answered with what the verifier made of it; a close, once it is in the
//! log.

use async_nats::Message;

use super::bid::Known;
use super::failure::{unavailable, VERIFIER_RETRY_MS};
use super::{internal, Gateway};
use crate::wire::{
    decode_close, decode_raise, decode_withdraw, timestamp, CloseEvent, CloseReply, ClosedBy,
    CommandReply, CommandRequest, CommandResult, ErrorCode, LogEvent, RaiseEvent, RaiseReply,
    RefuseReason, RequestError, TryEvent, WithdrawEvent, WithdrawReply,
};

/// How long a gateway waits for the verifier to decide a withdraw or a
/// raise before telling the bidder to ask again.
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Gateway {
    /// A withdraw by whoever the gate says sent it: appended, then
    /// answered with the verifier's decision. Withdraws that change nothing
    /// are in the log too: only the verifier, in log order, can tell.
    pub(super) async fn withdraw(&self, message: &Message) -> Result<WithdrawReply, RequestError> {
        let actor = self.gate.admit(message.headers.as_ref())?;
        let auction_id = self
            .streams
            .subjects
            .auction_in(&message.subject, "withdraw")?;
        let request = decode_withdraw(&message.payload, auction_id)?;
        let (logged_bid, logged_bidder) = actor.log_ids(&request.bid_id, &request.bidder_id)?;
        self.known_auction(auction_id).await?;
        let event = LogEvent::Withdraw(WithdrawEvent {
            bid_id: logged_bid.clone(),
            auction_id: auction_id.to_string(),
            bidder_id: logged_bidder.clone(),
            withdrawn_at: timestamp::now(),
        });
        let (seq, resent) = self.append(&event).await?;
        let mut result = self.command_result(auction_id, seq).await?;
        if resent
            && result
                == (CommandResult::Withdrawn {
                    empty_rollback: true,
                })
        {
            result = self
                .since_empty_rollback(auction_id, &logged_bid, &logged_bidder, result)
                .await;
        }
        let (bid_id, auction_id) = (request.bid_id, auction_id.to_string());
        Ok(match result {
            CommandResult::Refused {
                reason: RefuseReason::UnknownAuction,
                ..
            } => return Err(no_auction(&auction_id)),
            CommandResult::Withdrawn { empty_rollback } => WithdrawReply::Withdrawn {
                bid_id,
                auction_id,
                withdraw_seq: seq,
                empty_rollback,
            },
            CommandResult::Refused { reason, .. } => WithdrawReply::Refused {
                bid_id,
                auction_id,
                withdraw_seq: seq,
                reason,
            },
            CommandResult::Raised { .. } => return Err(not_a(seq, "withdraw")),
        })
    }

    /// A raise by whoever the gate says sent it: appended, then answered
    /// with the verifier's decision (refused raises are in the log too).
    pub(super) async fn raise(&self, message: &Message) -> Result<RaiseReply, RequestError> {
        let actor = self.gate.admit(message.headers.as_ref())?;
        let auction_id = self
            .streams
            .subjects
            .auction_in(&message.subject, "raise")?;
        let request = decode_raise(&message.payload, auction_id)?;
        let (bid_id, bidder_id) = actor.log_ids(&request.bid_id, &request.bidder_id)?;
        self.known_auction(auction_id).await?;
        let event = LogEvent::Raise(RaiseEvent {
            bid_id,
            auction_id: auction_id.to_string(),
            bidder_id,
            amount: request.amount,
            expected_amount: request.expected_amount,
            raised_at: timestamp::now(),
        });
        let (seq, _) = self.append(&event).await?;
        let (bid_id, auction_id) = (request.bid_id, auction_id.to_string());
        Ok(match self.command_result(&auction_id, seq).await? {
            CommandResult::Refused {
                reason: RefuseReason::UnknownAuction,
                ..
            } => return Err(no_auction(&auction_id)),
            CommandResult::Raised { amount } => RaiseReply::Raised {
                bid_id,
                auction_id,
                raise_seq: seq,
                amount,
            },
            CommandResult::Refused {
                reason,
                current_amount,
            } => RaiseReply::Refused {
                bid_id,
                auction_id,
                raise_seq: seq,
                reason,
                current_amount,
            },
            CommandResult::Withdrawn { .. } => return Err(not_a(seq, "raise")),
        })
    }

    /// A close request: one close event per auction, whoever asks (and the
    /// deadline) writing it with the same message id.
    pub(super) async fn close(&self, message: &Message) -> Result<CloseReply, RequestError> {
        let auction_id = self
            .streams
            .subjects
            .auction_in(&message.subject, "admin.close")?;
        decode_close(&message.payload, auction_id)?;
        self.known_auction(auction_id).await?;
        let event = LogEvent::Close(CloseEvent {
            auction_id: auction_id.to_string(),
            closed_at: timestamp::now(),
            by: ClosedBy::Request,
        });
        let (close_seq, duplicate) = self.append(&event).await?;
        Ok(CloseReply::Closing {
            auction_id: auction_id.to_string(),
            close_seq,
            duplicate,
        })
    }

    async fn known_auction(&self, auction_id: &str) -> Result<(), RequestError> {
        match self.spec(auction_id).await? {
            Some(_) => Ok(()),
            None => Err(no_auction(auction_id)),
        }
    }

    /// What a resent withdraw that found no try (an empty rollback) means
    /// now: if a try of that bid id has since arrived from another bidder,
    /// the withdraw did not touch it, and saying "withdrawn" would be a
    /// lie. (Its own try was cancelled by the withdraw: still withdrawn.)
    async fn since_empty_rollback(
        &self,
        auction_id: &str,
        bid_id: &str,
        bidder_id: &str,
        result: CommandResult,
    ) -> CommandResult {
        let Known::Decided(at) = self.decided(auction_id, bid_id, 0).await else {
            return result;
        };
        let tried_by = match self.streams.try_at(at).await {
            Ok(Some(TryEvent { bidder_id, .. })) => bidder_id,
            Ok(None) => return result,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the try of a withdrawn bid");
                return result;
            }
        };
        if tried_by == bidder_id {
            return result;
        }
        CommandResult::Refused {
            reason: RefuseReason::NotOwner,
            current_amount: None,
        }
    }

    /// Appends an event; its log sequence (the first copy's, for a resend
    /// JetStream de-duplicated) and whether it was a resend.
    async fn append(&self, event: &LogEvent) -> Result<(u64, bool), RequestError> {
        let ack = self.streams.append(event).await.map_err(internal)?;
        Ok((ack.sequence, ack.duplicate))
    }

    /// Asks the verifier what the withdraw or raise at `seq` did. The
    /// verifier answers once it has decided it; asked again if that answer
    /// is lost (a verifier restarting) or says "not yet" (one with too many
    /// requests waiting).
    async fn command_result(
        &self,
        auction_id: &str,
        seq: u64,
    ) -> Result<CommandResult, RequestError> {
        let subject = self.streams.subjects.command(auction_id);
        let body: bytes::Bytes = serde_json::to_vec(&CommandRequest { seq })
            .expect("requests serialize")
            .into();
        let deadline = tokio::time::Instant::now() + COMMAND_WAIT;
        loop {
            let asked = tokio::time::timeout_at(
                deadline,
                self.client.request(subject.clone(), body.clone()),
            )
            .await;
            match asked {
                Err(_) => break,
                Ok(Ok(reply)) => {
                    if let Ok(CommandReply {
                        result: Some(result),
                        ..
                    }) = serde_json::from_slice(&reply.payload)
                    {
                        return Ok(result);
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot ask the verifier about a command")
                }
            }
            if tokio::time::Instant::now() + COMMAND_RETRY >= deadline {
                break;
            }
            tokio::time::sleep(COMMAND_RETRY).await;
        }
        Err(unavailable(
            format!(
                "the request is in the log at sequence {seq}, but the verifier has not decided it yet; send the same request again in {VERIFIER_RETRY_MS} ms to learn its result"
            ),
            VERIFIER_RETRY_MS,
        ))
    }
}

/// Pause before asking the verifier again about a command.
const COMMAND_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The one answer for an auction never opened: an error, never a refusal.
fn no_auction(auction_id: &str) -> RequestError {
    RequestError::new(
        ErrorCode::UnknownAuction,
        format!("no auction {auction_id:?} has been opened"),
    )
}

fn not_a(seq: u64, what: &str) -> RequestError {
    RequestError::new(
        ErrorCode::Internal,
        format!("log entry {seq} was decided, but not as a {what}"),
    )
}
