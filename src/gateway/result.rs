//! A bidder's question "what became of my bid?": answered from the
//! verifier of the auction's partition, which keeps every decided bid
//! and its outcome, for the asker's own bid ids only.

use async_nats::Message;

use super::failure::{unavailable, VERIFIER_RETRY_MS};
use super::Gateway;
use crate::wire::{
    decode_result, DecidedReply, DecidedRequest, ErrorCode, OutcomeKind, RequestError, ResultReply,
};

/// How long a gateway waits for the verifier's answer.
const RESULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Gateway {
    /// The outcome of one of the sender's own bids.
    pub(super) async fn result(&self, message: &Message) -> Result<ResultReply, RequestError> {
        let actor = self.gate.admit(message.headers.as_ref())?;
        let auction_id = self
            .streams
            .subjects
            .auction_in(&message.subject, "result")?;
        let request = decode_result(&message.payload, auction_id)?;
        let logged = actor.log_bid_id(&request.bid_id);
        let subject = self.streams.subjects.decided(auction_id);
        let body = serde_json::to_vec(&DecidedRequest {
            bid_id: logged,
            outcome: true,
            wait_for: None,
        })
        .expect("requests serialize");
        // No verifier yet (restarting, rebuilding) or a slow one: expected.
        let unanswered = || {
            unavailable(
                format!(
                    "the verifier of auction {auction_id:?} did not answer; ask again in {VERIFIER_RETRY_MS} ms"
                ),
                VERIFIER_RETRY_MS,
            )
        };
        let reply = tokio::time::timeout(RESULT_TIMEOUT, self.client.request(subject, body.into()))
            .await
            .map_err(|_| unanswered())?
            .map_err(|_| unanswered())?;
        let decided: DecidedReply = serde_json::from_slice(&reply.payload).map_err(|e| {
            tracing::error!(error = %e, "unreadable answer from the verifier");
            RequestError::new(
                ErrorCode::Internal,
                format!("unreadable answer from the verifier of auction {auction_id:?}"),
            )
        })?;
        let (bid_id, auction_id) = (request.bid_id, auction_id.to_string());
        let Some(o) = decided.outcome else {
            return Ok(ResultReply::Undecided { bid_id, auction_id });
        };
        Ok(match (o.kind, o.rank, o.reason) {
            (OutcomeKind::Confirmed, Some(rank), _) => ResultReply::Confirmed {
                bid_id,
                auction_id,
                try_seq: o.try_seq,
                try_index: o.try_index,
                amount: o.amount,
                rank,
                decided_at: o.decided_at,
            },
            (OutcomeKind::Cancelled, _, Some(reason)) => ResultReply::Cancelled {
                bid_id,
                auction_id,
                try_seq: o.try_seq,
                try_index: o.try_index,
                amount: o.amount,
                reason,
                decided_at: o.decided_at,
            },
            _ => {
                tracing::error!(
                    try_seq = o.try_seq,
                    "a stored outcome lacks its rank or reason"
                );
                return Err(RequestError::new(
                    ErrorCode::Internal,
                    format!("the outcome of try {} lacks its rank or reason", o.try_seq),
                ));
            }
        })
    }
}
