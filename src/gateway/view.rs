//! What the gateway knows about auctions: their specs, which are sold out,
//! how far the verifier has decided, and its own appends in progress.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;

use futures::StreamExt;

use super::Gateway;
use crate::wire::{AuctionSpec, AuctionView};

/// What the gateway knows about auctions, for fast rejects.
#[derive(Default)]
pub(super) struct View {
    /// Specs of auctions seen open. Specs never change once opened, so a
    /// cached one is never stale; auctions not found are not cached.
    pub(super) specs: RwLock<HashMap<String, Arc<AuctionSpec>>>,
    /// Auctions the verifier has reported sold out. In first-come, first-N
    /// allocation a sold-out auction stays sold out.
    pub(super) sold_out: RwLock<HashSet<String>>,
    /// The verifier consumer's ack floor and when it was read. Shared by
    /// all requests, so that a burst of bids on a sold-out auction costs
    /// JetStream at most one consumer-info request per interval.
    ack_floor: Mutex<Option<(Instant, u64)>>,
    /// Try appends in progress in this gateway, per auction.
    pub(super) appends: Appends,
}

/// Counts the try appends in progress per auction, so that a resend that
/// finds its auction sold out or closed first waits for the appends that
/// began before: one of them may be its own original.
#[derive(Default)]
pub(super) struct Appends(Mutex<HashMap<String, usize>>);

/// One append in progress; counted until dropped.
pub(super) struct Appending<'a> {
    /// The counts this append is part of.
    pub(super) appends: &'a Appends,
    /// Whose count to decrement on drop.
    auction_id: String,
}

impl Appends {
    pub(super) fn start(&self, auction_id: &str) -> Appending<'_> {
        *self
            .0
            .lock()
            .unwrap()
            .entry(auction_id.to_string())
            .or_default() += 1;
        Appending {
            appends: self,
            auction_id: auction_id.to_string(),
        }
    }

    /// Waits until no append is in progress for the auction (bounded: an
    /// append ends with its ack or its timeout).
    pub(super) async fn drained(&self, auction_id: &str) {
        for _ in 0..5000 {
            if !self.0.lock().unwrap().contains_key(auction_id) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        let mut counts = self.appends.0.lock().unwrap();
        if let Some(n) = counts.get_mut(&self.auction_id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.auction_id);
            }
        }
    }
}

impl View {
    /// How far the verifier has decided the log; `None` when its consumer
    /// cannot be read (no verifier yet).
    pub(super) async fn decided_through(
        &self,
        log: &stream::Stream,
        consumer: &str,
    ) -> Option<u64> {
        const FRESH: Duration = Duration::from_millis(10);
        if let Some((at, floor)) = *self.ack_floor.lock().unwrap() {
            if at.elapsed() < FRESH {
                return Some(floor);
            }
        }
        let floor = log
            .consumer_info(consumer)
            .await
            .ok()?
            .ack_floor
            .stream_sequence;
        *self.ack_floor.lock().unwrap() = Some((Instant::now(), floor));
        Some(floor)
    }
}

/// Follows the status bucket, so fast rejects see what the verifier decided.
pub(super) async fn watch_fill(gateway: Arc<Gateway>) {
    loop {
        match gateway.streams.status.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { break };
                    if let Ok(view) = serde_json::from_slice::<AuctionView>(&entry.value) {
                        if view.sold_out {
                            gateway.view.sold_out.write().unwrap().insert(entry.key);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the status bucket; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
