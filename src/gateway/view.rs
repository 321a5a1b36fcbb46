//! What the gateway knows about auctions: their specs, which are sold out,
//! how far the verifier has decided, and its own appends in progress.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use foldhash::fast::RandomState;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use futures::StreamExt;
use tokio::sync::Notify;

use super::Gateway;
use crate::wire::{AuctionSpec, AuctionView};

/// What the gateway knows about auctions, for fast rejects.
#[derive(Default)]
pub(super) struct View {
    /// Specs of auctions seen open. Specs never change once opened, so a
    /// cached one is never stale; auctions not found are not cached.
    pub(super) specs: RwLock<HashMap<String, Arc<AuctionSpec>, RandomState>>,
    /// Auctions the verifier has reported sold out. In first-come, first-N
    /// allocation a sold-out auction stays sold out.
    pub(super) sold_out: RwLock<HashSet<String, RandomState>>,
    /// Auctions whose close event the verifier has decided. Closed stays
    /// closed.
    pub(super) closed: RwLock<HashSet<String, RandomState>>,
    /// Each partition's verifier consumer's ack floor and when it was read.
    /// An async lock, held across the read, so that concurrent requests
    /// share one consumer-info request per interval instead of each sending
    /// its own.
    ack_floor: tokio::sync::Mutex<std::collections::HashMap<String, (Instant, u64)>>,
    /// Try appends in progress in this gateway, per auction.
    pub(super) appends: Appends,
    /// Bids being handled, by auction and bid id.
    pub(super) bids: OneAtATime,
}

/// Lets one request at a time handle a given (auction, bid id) in this
/// gateway, so that a bid and its resend, arriving together, get the same
/// answer. Different bids never wait for each other.
///
/// Bids are known by a hash of (auction, bid id): no allocation per bid,
/// and two bids whose hashes collide merely take turns.
#[derive(Default)]
pub(super) struct OneAtATime {
    busy: Mutex<HashSet<u64, RandomState>>,
    hasher: RandomState,
    /// Woken whenever a bid is released...
    released: Notify,
    /// ... if anyone waits: nearly always no one does.
    waiting: AtomicUsize,
}

/// A bid being handled, until dropped.
pub(super) struct Handling<'a> {
    owner: &'a OneAtATime,
    key: u64,
}

impl OneAtATime {
    pub(super) async fn handle(&self, auction_id: &str, bid_id: &str) -> Handling<'_> {
        let key = self.hasher.hash_one((auction_id, bid_id));
        if self.busy.lock().unwrap().insert(key) {
            return Handling { owner: self, key };
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let handling = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.busy.lock().unwrap().insert(key) {
                break Handling { owner: self, key };
            }
            released.await;
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        handling
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.owner.busy.lock().unwrap().remove(&self.key);
        if self.owner.waiting.load(Ordering::SeqCst) > 0 {
            self.owner.released.notify_waiters();
        }
    }
}

/// The try appends in progress per auction, each with a ticket in the order
/// they began, so that a resend that finds its auction sold out or closed
/// can wait for the appends that began before it: one of them may be its
/// own original.
///
/// Auctions are known by a hash of their id: two auctions whose hashes
/// collide share one order, and a resend may wait for the other's appends
/// too, which is slower but never wrong.
#[derive(Default)]
pub(super) struct Appends {
    /// Per auction: the next ticket, and the tickets still appending.
    tickets: Mutex<HashMap<u64, (u64, BTreeSet<u64>), RandomState>>,
    hasher: RandomState,
    /// Woken whenever an append ends...
    ended: Notify,
    /// ... if anyone waits.
    waiting: AtomicUsize,
}

/// One append in progress, until dropped.
pub(super) struct Appending<'a> {
    /// The appends this one is part of.
    appends: &'a Appends,
    /// Its auction's hash.
    auction: u64,
    /// Its place in the order appends began.
    pub(super) ticket: u64,
}

impl Appends {
    pub(super) fn start(&self, auction_id: &str) -> Appending<'_> {
        let auction = self.hasher.hash_one(auction_id);
        let mut tickets = self.tickets.lock().unwrap();
        let (next, in_flight) = tickets.entry(auction).or_default();
        let ticket = *next;
        *next += 1;
        in_flight.insert(ticket);
        Appending {
            appends: self,
            auction,
            ticket,
        }
    }

    /// Waits until every append on the auction that began before `ticket`
    /// has ended. False if that takes too long (an append ends with its ack
    /// or its timeout, so this is a safety net).
    pub(super) async fn drained(&self, auction_id: &str, ticket: u64) -> bool {
        let auction = self.hasher.hash_one(auction_id);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let drained = self.wait_for_earlier(auction, ticket).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        drained
    }

    async fn wait_for_earlier(&self, auction: u64, ticket: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            // Registered before the check, so an end in between still wakes us.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let earlier = self
                .tickets
                .lock()
                .unwrap()
                .get(&auction)
                .and_then(|(_, in_flight)| in_flight.first().copied())
                .is_some_and(|first| first < ticket);
            if !earlier {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        if let Some((_, in_flight)) = self.appends.tickets.lock().unwrap().get_mut(&self.auction) {
            in_flight.remove(&self.ticket);
        }
        if self.appends.waiting.load(Ordering::SeqCst) > 0 {
            self.appends.ended.notify_waiters();
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
        let mut cached = self.ack_floor.lock().await;
        if let Some((at, floor)) = cached.get(consumer) {
            if at.elapsed() < FRESH {
                return Some(*floor);
            }
        }
        let floor = log
            .consumer_info(consumer)
            .await
            .ok()?
            .ack_floor
            .stream_sequence;
        cached.insert(consumer.to_string(), (Instant::now(), floor));
        Some(floor)
    }
}

/// Follows the status bucket, so fast rejects see what the verifier decided.
/// `caught_up` is told once the view holds everything the bucket held when
/// the watch began.
pub(super) async fn watch_fill(gateway: Arc<Gateway>, caught_up: tokio::sync::oneshot::Sender<()>) {
    let mut caught_up = Some(caught_up);
    loop {
        let empty = gateway
            .streams
            .status
            .status()
            .await
            .is_ok_and(|s| s.values() == 0);
        match gateway.streams.status.watch_with_history(">").await {
            Ok(mut entries) => {
                if empty {
                    caught_up.take().map(|tx| tx.send(()));
                }
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { break };
                    if let Ok(view) = serde_json::from_slice::<AuctionView>(&entry.value) {
                        if view.closed {
                            let closed = entry.key.clone();
                            gateway.view.closed.write().unwrap().insert(closed);
                        }
                        if view.sold_out {
                            gateway.view.sold_out.write().unwrap().insert(entry.key);
                        }
                    }
                    if entry.delta == 0 {
                        caught_up.take().map(|tx| tx.send(()));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the status bucket; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
