//! Publishing decisions: outcome events and bids-bucket entries, and the
//! sold-out notices the gateways read.

use async_nats::jetstream::message::PublishMessage;

use crate::core::Ledger;
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::StoredOutcome;
use crate::streams::Streams;
use crate::wire::{AuctionView, OutcomeEvent};

/// Publishes outcomes, and their entries in the bids bucket, pipelined;
/// waits for every ack.
pub(super) async fn publish(streams: &Streams, outcomes: &[StoredOutcome]) -> Result<()> {
    let subjects = &streams.subjects;
    let nats = || Error::wrap(ErrorKind::Nats, "publish outcome");
    let mut acks = Vec::with_capacity(outcomes.len() * 2);
    for d in outcomes {
        let o = &d.outcome;
        let payload = d.payload.clone();
        let outcome = PublishMessage::build()
            .message_id(OutcomeEvent::msg_id(&o.auction_id, &o.bid_id))
            .payload(payload.clone());
        let subject = subjects.outcome(&o.auction_id, o.kind);
        acks.push(
            streams
                .js
                .send_publish(subject, outcome)
                .await
                .map_err(nats())?,
        );
        let index = PublishMessage::build().payload(payload);
        let subject = subjects.bid_index_subject(&o.auction_id, &o.bid_id);
        acks.push(
            streams
                .js
                .send_publish(subject, index)
                .await
                .map_err(nats())?,
        );
    }
    let acks = acks.into_iter().map(std::future::IntoFuture::into_future);
    for ack in futures::future::join_all(acks).await {
        ack.map_err(nats())?;
    }
    Ok(())
}

/// Tells the gateways which auctions these confirmations filled.
pub(super) async fn announce_sold_out<'o>(
    streams: &Streams,
    ledger: &Ledger,
    outcomes: impl Iterator<Item = &'o OutcomeEvent>,
) -> Result<()> {
    for o in outcomes {
        let Some(fill) = ledger.fill(&o.auction_id) else {
            continue;
        };
        if o.rank.is_some_and(|rank| rank >= fill.capacity) {
            let view = AuctionView {
                confirmed: fill.confirmed,
                sold_out: fill.sold_out(),
            };
            streams
                .status
                .put(
                    &o.auction_id,
                    serde_json::to_vec(&view).expect("views serialize").into(),
                )
                .await
                .map_err(|e| Error::with_source(ErrorKind::Nats, e).context("status bucket"))?;
        }
    }
    Ok(())
}
