//! What the gateway knows about auctions: their specs, which are sold out,
//! how far the verifier has decided, and its own appends in progress; and
//! whether that view is current enough to refuse bids from.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use foldhash::fast::RandomState;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use futures::StreamExt;
use tokio::sync::Notify;

use super::failure::{unavailable, ELECTION_RETRY_MS};
use super::Gateway;
use crate::wire::{AuctionSpec, AuctionView, RejectReason, RequestError};

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
    /// Whether `sold_out` and `closed` hold everything the status bucket
    /// held a moment ago.
    pub(super) freshness: Freshness,
    /// While they may not: the reads of each auction's status entry.
    reads: Mutex<HashMap<String, Arc<StatusRead>, RandomState>>,
}

/// When the last read of an auction's status entry began. An async lock,
/// held across the read, so that the bids arriving meanwhile share the
/// next read instead of each sending its own.
type StatusRead = tokio::sync::Mutex<Option<Instant>>;

/// How often the view is checked against the status bucket.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long a check waits for the bucket's stream leader to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a check then waits for the watch to deliver what the bucket
/// holds: a live watch takes milliseconds.
const CATCH_UP: Duration = Duration::from_millis(250);
/// How long a check vouches for the view. The bound on how long a watch
/// that stalls without a word can go unnoticed.
const FRESH_FOR: Duration = Duration::from_millis(750);
/// A watch that is behind and delivers nothing for this long is started
/// again: its consumer is gone (it lived on a node that was lost), and the
/// client would only notice after two missed heartbeats, 10 s.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// How long a bid's read of its auction's status entry may wait.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A read begun this recently is shared by the bids that waited for it.
const READ_SHARED: Duration = Duration::from_millis(10);

/// Whether the view of sold-out and closed auctions can be answered from.
///
/// The watch of the status bucket can stall without a word: its consumer
/// lost with the node that held it, or its connection cut off. Then the
/// view misses sell-outs and closes, and a gateway answering from it would
/// accept a bid that another gateway has refused. So the gateway checks
/// the view every [`PROBE_EVERY`]: it asks the bucket's stream leader for
/// the bucket's last entry, and vouches for the view once the watch has
/// delivered that entry. The view counts as current for [`FRESH_FOR`]
/// after the check began; a bid the view does not refuse while it is not
/// current reads its auction's entry first.
pub(super) struct Freshness {
    /// When this gateway started; the times below count from it.
    origin: Instant,
    /// The highest revision of the bucket the watch has applied to the
    /// view. Revisions are stream sequences, delivered in order, and the
    /// view only ever adds, so the view holds every entry up to it.
    seen: AtomicU64,
    /// Woken when `seen` grows, if anyone waits.
    delivered: Notify,
    /// When (ms after `origin`, plus one; 0 for never) the last check that
    /// vouched for the view began.
    vouched: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            origin: Instant::now(),
            seen: AtomicU64::new(0),
            delivered: Notify::new(),
            vouched: AtomicU64::new(0),
        }
    }
}

impl Freshness {
    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    /// True when a check that began at most [`FRESH_FOR`] ago found the
    /// view holding everything in the bucket.
    pub(super) fn current(&self) -> bool {
        let vouched = self.vouched.load(Ordering::Acquire);
        vouched != 0
            && self.millis(Instant::now()).saturating_sub(vouched) <= FRESH_FOR.as_millis() as u64
    }

    /// Waits until the view is current, at most `patience`; false if it is not.
    pub(super) async fn wait_current(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while !self.current() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// A check that began at `began` found the view holding everything.
    fn vouch(&self, began: Instant) {
        self.vouched
            .fetch_max(self.millis(began), Ordering::Release);
    }

    /// A check found the view behind.
    fn doubt(&self) {
        self.vouched.store(0, Ordering::Release);
    }

    /// The watch applied the entry at `revision`.
    fn saw(&self, revision: u64) {
        self.seen.fetch_max(revision, Ordering::Release);
        self.delivered.notify_waiters();
    }

    /// Waits until the watch has applied `revision`; false after `patience`.
    async fn reached(&self, revision: u64, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check, so a delivery in between still wakes us.
            let delivered = self.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            if self.seen.load(Ordering::Acquire) >= revision {
                return true;
            }
            if tokio::time::timeout_at(deadline, delivered).await.is_err() {
                return false;
            }
        }
    }
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

impl View {
    /// Why a bid to `auction_id` cannot win, as far as the view knows:
    /// closed (its close decided by the verifier), or sold out.
    pub(super) fn blocked(&self, auction_id: &str) -> Option<RejectReason> {
        if self.closed.read().unwrap().contains(auction_id) {
            Some(RejectReason::AuctionClosed)
        } else if self.sold_out.read().unwrap().contains(auction_id) {
            Some(RejectReason::SoldOut)
        } else {
            None
        }
    }

    /// Adds an auction's status entry to the view.
    fn apply(&self, auction_id: &str, value: &[u8]) {
        let Ok(view) = serde_json::from_slice::<AuctionView>(value) else {
            return;
        };
        if view.closed {
            self.closed.write().unwrap().insert(auction_id.to_string());
        }
        if view.sold_out {
            self.sold_out
                .write()
                .unwrap()
                .insert(auction_id.to_string());
        }
    }

    /// Reads the auction's entry from the status bucket's stream leader
    /// into the view, for a bid that the view cannot vouch for. (Not a
    /// direct get: any replica answers those, one cut off with the gateway
    /// too.) An error, to resend the bid, if the bucket does not answer.
    pub(super) async fn read_status(
        &self,
        status: &kv::Store,
        auction_id: &str,
    ) -> Result<(), RequestError> {
        let slot = self
            .reads
            .lock()
            .unwrap()
            .entry(auction_id.to_string())
            .or_default()
            .clone();
        let mut last = slot.lock().await;
        if last.is_some_and(|began| began.elapsed() < READ_SHARED) {
            return Ok(());
        }
        let began = Instant::now();
        let subject = format!("{}{auction_id}", status.prefix);
        let read = tokio::time::timeout(
            READ_TIMEOUT,
            status.stream.get_last_raw_message_by_subject(&subject),
        )
        .await;
        let failure = match read {
            Ok(Ok(entry)) => {
                self.apply(auction_id, &entry.payload);
                None
            }
            Ok(Err(e)) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {READ_TIMEOUT:?}")),
        };
        if let Some(failure) = failure {
            tracing::debug!(
                auction_id,
                error = failure,
                "cannot read an auction's status"
            );
            return Err(unavailable(
                format!(
                    "this gateway cannot tell yet whether auction {auction_id:?} is sold out or closed: its view of the auctions is catching up, and reading the auction's status failed ({failure}); send the same bid again in {ELECTION_RETRY_MS} ms"
                ),
                ELECTION_RETRY_MS,
            ));
        }
        *last = Some(began);
        Ok(())
    }
}

/// Follows the status bucket, so that fast rejects see what the verifier
/// decided, and checks that the view keeps up (see [`Freshness`]).
pub(super) async fn watch_fill(gateway: Arc<Gateway>) {
    let restart = Notify::new();
    tokio::join!(follow(&gateway, &restart), probe(&gateway, &restart));
}

/// Applies the status bucket's entries to the view: every entry's latest
/// value, then each change. Starts the watch again whenever it fails or
/// `restart` says it has stalled.
async fn follow(gateway: &Gateway, restart: &Notify) {
    let view = &gateway.view;
    loop {
        match gateway.streams.status.watch_with_history(">").await {
            Ok(mut entries) => loop {
                let entry = tokio::select! {
                    entry = entries.next() => entry,
                    _ = restart.notified() => break,
                };
                match entry {
                    Some(Ok(entry)) => {
                        view.apply(&entry.key, &entry.value);
                        view.freshness.saw(entry.revision);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the status bucket's watch failed; watching again");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot watch the status bucket; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks the view against the status bucket every [`PROBE_EVERY`], and
/// vouches for it while the watch keeps up.
async fn probe(gateway: &Gateway, restart: &Notify) {
    let freshness = &gateway.view.freshness;
    let status = &gateway.streams.status;
    let every_key = format!("{}>", status.prefix);
    // Since when the watch has been behind, and what it had seen then.
    let mut behind: Option<(Instant, u64)> = None;
    let mut was_current = false;
    loop {
        let began = Instant::now();
        let last = tokio::time::timeout(
            PROBE_TIMEOUT,
            status.stream.get_last_raw_message_by_subject(&every_key),
        )
        .await;
        let last = match last {
            Ok(Ok(entry)) => Some(entry.sequence),
            Ok(Err(e)) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Some(0),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the status bucket's last entry");
                None
            }
            Err(_) => None,
        };
        if let Some(last) = last {
            if freshness.reached(last, CATCH_UP).await {
                freshness.vouch(began);
                behind = None;
            } else {
                // Known to be behind: not current, at once.
                freshness.doubt();
                let seen = freshness.seen.load(Ordering::Acquire);
                match behind {
                    Some((since, at)) if at == seen => {
                        if since.elapsed() >= RESTART_AFTER {
                            tracing::warn!(
                                seen,
                                last,
                                "the status bucket's watch has stalled; watching again"
                            );
                            restart.notify_waiters();
                            behind = None;
                        }
                    }
                    _ => behind = Some((began, seen)),
                }
            }
        }
        let current = freshness.current();
        if current != was_current {
            match current {
                true => {
                    // Its reads are not needed any more.
                    gateway.view.reads.lock().unwrap().clear();
                    tracing::info!("the auction view is current")
                }
                false => tracing::warn!("the auction view may be behind the status bucket; bids read their auction's status until it catches up"),
            }
            was_current = current;
        }
        tokio::time::sleep_until((began + PROBE_EVERY).into()).await;
    }
}
