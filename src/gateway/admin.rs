//! Admin and read requests: opening an auction, reporting its status.

use std::sync::Arc;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::Message;

use super::{internal, Gateway};
use crate::streams::Streams;
use crate::wire::{
    decode_open, timestamp, AuctionState, ErrorCode, LogEvent, OpenEvent, OpenReply, OutcomeKind,
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
        let result = self
            .streams
            .js
            .send_publish(
                subjects.auction_event(auction_id),
                PublishMessage::build()
                    .expected_last_subject_sequence(0)
                    .payload(serde_json::to_vec(&event).expect("events serialize").into()),
            )
            .await
            .map_err(internal)?
            .await;
        let (open_seq, duplicate) = match result {
            Ok(ack) => (ack.sequence, false),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                let stored = self
                    .streams
                    .log
                    .direct_get_first_for_subject(subjects.auction_event(auction_id))
                    .await
                    .map_err(internal)?;
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
        let Some(spec) = self.spec(auction_id).await? else {
            return Err(RequestError::new(
                ErrorCode::UnknownAuction,
                format!("no auction {auction_id:?} has been opened"),
            ));
        };
        let count = |stream, subject: String| async move {
            Streams::count(stream, &subject).await.map_err(internal)
        };
        let tries = count(&self.streams.log, subjects.try_event(auction_id)).await?;
        let confirmed = count(
            &self.streams.outcomes,
            subjects.outcome(auction_id, OutcomeKind::Confirmed),
        )
        .await?;
        let cancelled = count(
            &self.streams.outcomes,
            subjects.outcome(auction_id, OutcomeKind::Cancelled),
        )
        .await?;
        let state = if confirmed >= u64::from(spec.capacity) {
            AuctionState::SoldOut
        } else if spec.is_closed_at(timestamp::now())
            || self.view.closed.read().unwrap().contains(auction_id)
        {
            AuctionState::Closed
        } else {
            AuctionState::Open
        };
        Ok(StatusReply::Ok {
            auction_id: auction_id.to_string(),
            spec: (*spec).clone(),
            state,
            tries,
            confirmed,
            cancelled,
            pending: tries.saturating_sub(confirmed + cancelled),
        })
    }
}
