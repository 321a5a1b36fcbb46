//! Withdrawals, raises and closes: each is appended to the log like a try,
//! and decided by the verifier in log order. A withdraw or a raise is
//! answered with what the verifier made of it; a close, once it is in the
//! log.

use async_nats::jetstream::message::PublishMessage;
use async_nats::Message;

use super::{internal, Gateway};
use crate::wire::{
    decode_close, decode_raise, decode_withdraw, timestamp, CloseEvent, CloseReply, ClosedBy,
    CommandReply, CommandRequest, CommandResult, ErrorCode, LogEvent, RaiseEvent, RaiseReply,
    RequestError, WithdrawEvent, WithdrawReply,
};

/// How long a gateway waits for the verifier to decide a withdraw or a
/// raise before telling the bidder to ask again.
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Gateway {
    /// A withdraw: appended, then answered with the verifier's decision.
    pub(super) async fn withdraw(&self, message: &Message) -> Result<WithdrawReply, RequestError> {
        let auction_id = self
            .streams
            .subjects
            .auction_in(&message.subject, "withdraw")?;
        let request = decode_withdraw(&message.payload, auction_id)?;
        self.known_auction(auction_id).await?;
        let msg_id = WithdrawEvent::msg_id(auction_id, &request.bid_id, &request.bidder_id);
        let event = LogEvent::Withdraw(WithdrawEvent {
            bid_id: request.bid_id.clone(),
            auction_id: auction_id.to_string(),
            bidder_id: request.bidder_id,
            withdrawn_at: timestamp::now(),
        });
        let (seq, _) = self.append_event(auction_id, msg_id, &event).await?;
        let (bid_id, auction_id) = (request.bid_id, auction_id.to_string());
        Ok(match self.command_result(&auction_id, seq).await? {
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

    /// A raise: appended, then answered with the verifier's decision.
    pub(super) async fn raise(&self, message: &Message) -> Result<RaiseReply, RequestError> {
        let auction_id = self
            .streams
            .subjects
            .auction_in(&message.subject, "raise")?;
        let request = decode_raise(&message.payload, auction_id)?;
        self.known_auction(auction_id).await?;
        let msg_id = RaiseEvent::msg_id(auction_id, &request);
        let event = LogEvent::Raise(RaiseEvent {
            bid_id: request.bid_id.clone(),
            auction_id: auction_id.to_string(),
            bidder_id: request.bidder_id,
            amount: request.amount,
            expected_amount: request.expected_amount,
            raised_at: timestamp::now(),
        });
        let (seq, _) = self.append_event(auction_id, msg_id, &event).await?;
        let (bid_id, auction_id) = (request.bid_id, auction_id.to_string());
        Ok(match self.command_result(&auction_id, seq).await? {
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
        let (close_seq, duplicate) = self
            .append_event(auction_id, CloseEvent::msg_id(auction_id), &event)
            .await?;
        Ok(CloseReply::Closing {
            auction_id: auction_id.to_string(),
            close_seq,
            duplicate,
        })
    }

    async fn known_auction(&self, auction_id: &str) -> Result<(), RequestError> {
        match self.spec(auction_id).await? {
            Some(_) => Ok(()),
            None => Err(RequestError::new(
                ErrorCode::UnknownAuction,
                format!("no auction {auction_id:?} has been opened"),
            )),
        }
    }

    /// Appends an event on the auction's subject; its log sequence (the
    /// first copy's, for a resend JetStream de-duplicated) and whether it
    /// was a resend.
    async fn append_event(
        &self,
        auction_id: &str,
        msg_id: String,
        event: &LogEvent,
    ) -> Result<(u64, bool), RequestError> {
        let ack = self
            .streams
            .js
            .send_publish(
                self.streams.subjects.auction_event(auction_id),
                PublishMessage::build()
                    .message_id(msg_id)
                    .payload(serde_json::to_vec(event).expect("events serialize").into()),
            )
            .await
            .map_err(internal)?
            .await
            .map_err(internal)?;
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
        Err(RequestError::new(
            ErrorCode::Internal,
            format!(
                "the request is in the log at sequence {seq}, but the verifier has not decided it yet; send the same request again to learn the result"
            ),
        ))
    }
}

/// Pause before asking the verifier again about a command.
const COMMAND_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

fn not_a(seq: u64, what: &str) -> RequestError {
    RequestError::new(
        ErrorCode::Internal,
        format!("log entry {seq} was decided, but not as a {what}"),
    )
}
