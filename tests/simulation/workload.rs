//! What the gateways write to the log, as a seeded stream of entries:
//! opens of both policies (some with a deadline), tries (some resent with
//! the same bid id after the de-duplication window), withdraws by owners
//! and others, raises from right and stale amounts, closes, and garbage.

use allot::wire::{timestamp, Subjects};
use serde_json::{json, Value};

use crate::world::{Millis, Rng};

/// Auctions of the simulated partition, and of another one (their entries
/// are gaps in the partition's sequence).
pub struct Workload {
    pub subjects: Subjects,
    pub partition: u32,
    ours: Vec<Auction>,
    theirs: Vec<String>,
    next_bid: u64,
}

struct Auction {
    id: String,
    opened: bool,
    /// Bids tried: (bid id, bidder, amount as last raised).
    bids: Vec<(String, String, u64)>,
}

const BIDDERS: u64 = 5;

impl Workload {
    pub fn new(rng: &mut Rng) -> Workload {
        let subjects = Subjects::default();
        let partition = subjects.partition("sim-a0");
        let ids = (0..200).map(|i| format!("sim-a{i}"));
        let (ours, theirs): (Vec<String>, Vec<String>) =
            ids.partition(|id| subjects.partition(id) == partition);
        let n = 2 + rng.below(3) as usize;
        Workload {
            ours: ours
                .into_iter()
                .take(n)
                .map(|id| Auction {
                    id,
                    opened: false,
                    bids: Vec::new(),
                })
                .collect(),
            theirs: theirs.into_iter().take(2).collect(),
            subjects,
            partition,
            next_bid: 0,
        }
    }

    /// The next entry: (subject, payload, whether it is of the partition).
    pub fn next(&mut self, rng: &mut Rng, now: Millis) -> (String, Vec<u8>, bool) {
        // Stamped by one of several gateways whose clocks are up to 5 s
        // off: `tried_at` decides nothing, the log's storage time does.
        let skew = chrono::Duration::milliseconds(rng.below(10_001) as i64 - 5_000);
        let at = timestamp::format(&(now.at() + skew));
        if rng.chance(150) {
            // Another partition's entry: a gap for ours.
            let id = &self.theirs[rng.below(self.theirs.len() as u64) as usize];
            let body = json!({"type": "try", "bid_id": "x", "auction_id": id, "bidder_id": "u0", "amount": 1, "tried_at": at});
            if rng.chance(500) {
                let p = self.subjects.partition(id);
                let entry = json!({"type": "tries", "v": 2, "tries": [body]});
                return (self.subjects.tries_entry(p), bytes(&entry), false);
            }
            return (self.subjects.try_event(id), bytes(&body), false);
        }
        let i = rng.below(self.ours.len() as u64) as usize;
        let subjects = &self.subjects;
        let a = &mut self.ours[i];
        let id = a.id.clone();
        if !a.opened && rng.chance(800) {
            a.opened = true;
            let ranked = rng.chance(400);
            let mut open = json!({
                "type": "open",
                "auction_id": id,
                "opened_at": at,
                "capacity": 1 + rng.below(4),
                "max_wins_per_bidder": 1 + rng.below(2),
                "min_amount": rng.below(3),
            });
            if ranked {
                open["policy"] = json!("top_amount");
            }
            if rng.chance(300) {
                let closes = Millis(now.0 + 500 + rng.below(20_000));
                open["closes_at"] = json!(timestamp::format(&closes.at()));
            }
            return (subjects.auction_event(&id), bytes(&open), true);
        }
        let bidder = |rng: &mut Rng| format!("u{}", rng.below(BIDDERS));
        let roll = rng.below(100);
        let body = match roll {
            // A resend of an earlier try, appended again.
            0..=7 if !a.bids.is_empty() => {
                let (bid, who, amount) = a.bids[rng.below(a.bids.len() as u64) as usize].clone();
                json!({"type": "try", "bid_id": bid, "auction_id": id, "bidder_id": who, "amount": amount, "tried_at": at})
            }
            8..=15 => {
                let (bid, who) = self.known_or_new(i, rng);
                let who = if rng.chance(300) { bidder(rng) } else { who };
                json!({"type": "withdraw", "bid_id": bid, "auction_id": id, "bidder_id": who, "withdrawn_at": at})
            }
            16..=25 if !self.ours[i].bids.is_empty() => {
                let a = &mut self.ours[i];
                let k = rng.below(a.bids.len() as u64) as usize;
                let (bid, who, amount) = a.bids[k].clone();
                let expected = if rng.chance(800) {
                    amount
                } else {
                    rng.below(50)
                };
                let raised = expected + rng.below(30);
                if expected == amount && raised > amount {
                    a.bids[k].2 = raised;
                }
                json!({"type": "raise", "bid_id": bid, "auction_id": id, "bidder_id": who, "amount": raised, "expected_amount": expected, "raised_at": at})
            }
            26..=28 => json!({"type": "close", "auction_id": id, "closed_at": at, "by": "request"}),
            29 => {
                // Garbage: a try that names its bid but is not valid, or
                // nothing readable at all.
                let garbage = match rng.chance(500) {
                    true => bytes(&json!({"bid_id": format!("g{}", rng.below(5)), "amount": "x"})),
                    false => b"not json".to_vec(),
                };
                return (self.subjects.try_event(&id), garbage, true);
            }
            _ => {
                self.next_bid += 1;
                let bid = format!("b{}", self.next_bid);
                let who = bidder(rng);
                let amount = rng.below(60);
                self.ours[i].bids.push((bid.clone(), who.clone(), amount));
                json!({"type": "try", "bid_id": bid, "auction_id": id, "bidder_id": who, "amount": amount, "tried_at": at})
            }
        };
        if body["type"] == "try" && rng.chance(600) {
            return self.entry(body, rng, &at);
        }
        let subject = match body["type"] == "try" {
            true => self.subjects.try_event(&id),
            false => self.subjects.auction_event(&id),
        };
        (subject, bytes(&body), true)
    }

    /// A gateway's entry of several tries (format 2), starting with
    /// `first`: new bids and resends across the partition's auctions,
    /// now and then one that is not valid.
    fn entry(&mut self, first: Value, rng: &mut Rng, at: &str) -> (String, Vec<u8>, bool) {
        let mut tries = vec![first];
        for _ in 0..rng.below(8) {
            let i = rng.below(self.ours.len() as u64) as usize;
            let a = &mut self.ours[i];
            let id = a.id.clone();
            let t = if rng.chance(30) {
                json!({"bid_id": format!("g{}", rng.below(5)), "auction_id": id, "amount": "x"})
            } else if !a.bids.is_empty() && rng.chance(150) {
                let (bid, who, amount) = a.bids[rng.below(a.bids.len() as u64) as usize].clone();
                json!({"bid_id": bid, "auction_id": id, "bidder_id": who, "amount": amount, "tried_at": at})
            } else {
                self.next_bid += 1;
                let bid = format!("b{}", self.next_bid);
                let who = format!("u{}", rng.below(BIDDERS));
                let amount = rng.below(60);
                a.bids.push((bid.clone(), who.clone(), amount));
                json!({"bid_id": bid, "auction_id": id, "bidder_id": who, "amount": amount, "tried_at": at})
            };
            tries.push(t);
        }
        if let Some(t) = tries[0].as_object_mut() {
            t.remove("type");
        }
        let body = json!({"type": "tries", "v": 2, "tries": tries});
        (
            self.subjects.tries_entry(self.partition),
            bytes(&body),
            true,
        )
    }

    /// A bid id tried in auction `i` with its bidder, or one not tried yet.
    fn known_or_new(&mut self, i: usize, rng: &mut Rng) -> (String, String) {
        let a = &self.ours[i];
        if !a.bids.is_empty() && rng.chance(700) {
            let (bid, who, _) = &a.bids[rng.below(a.bids.len() as u64) as usize];
            return (bid.clone(), who.clone());
        }
        // Withdrawn before its try (an empty rollback); the try may follow.
        (
            format!("b{}", self.next_bid + 1 + rng.below(3)),
            format!("u{}", rng.below(BIDDERS)),
        )
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}
