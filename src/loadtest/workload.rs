//! The bidding workload: which bid goes where, derived from a seed so that
//! every strategy in one run sees exactly the same bids in the same order.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::wire::{AuctionSpec, BidRequest, Policy, RaiseRequest, WithdrawRequest};

/// The knobs of a load test.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workload {
    /// Auctions to spread bids over.
    pub auctions: u32,
    /// Winning slots per auction.
    pub capacity: u32,
    /// Smallest amount that can win; amounts drawn are 1..=1000.
    pub min_amount: u64,
    /// Most slots one bidder may win per auction.
    pub max_wins_per_bidder: u32,
    /// Distinct bidders.
    pub bidders: u32,
    /// Bid requests to send (duplicates included); `None` with a duration.
    pub requests: Option<u64>,
    /// Send for this long instead of a count.
    pub duration_secs: Option<f64>,
    /// Requests in flight at once (closed loop), or at most (open loop).
    pub concurrency: usize,
    /// Open loop: requests per second, on a fixed schedule.
    pub rate: Option<f64>,
    /// Fraction of requests that resend an earlier, recent bid (same
    /// `bid_id`, same content), as a client retrying would.
    pub duplicates: f64,
    /// Fraction of requests that go to the first auction (the hot one); the
    /// rest spread uniformly over all of them.
    pub hot: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Prefix of this run's auction ids, so runs never share an auction.
    pub run_id: String,
    /// Bids ask to wait for their decision (`"wait": true`): a reply is
    /// then `confirmed` or `cancelled`, and its latency the decision's.
    #[serde(default)]
    pub wait: bool,
    /// How each auction's slots are given out.
    #[serde(default)]
    pub policy: Policy,
    /// Fraction of bids the bidder withdraws once the bid is accepted
    /// (drawn among the bids not withdrawn early).
    #[serde(default)]
    pub withdraws: f64,
    /// Fraction of bids whose withdraw is sent just before the bid itself,
    /// racing it: the empty-rollback and anti-hanging path.
    #[serde(default)]
    pub early_withdraws: f64,
    /// Fraction of bids the bidder raises once accepted (`top_amount` only:
    /// only held bids can be raised).
    #[serde(default)]
    pub raises: f64,
    /// Every auction's `closes_at` is this many seconds after it is opened,
    /// so that the deadline can fall inside the run.
    #[serde(default)]
    pub close_after_secs: Option<f64>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            auctions: 10,
            capacity: 100,
            min_amount: 0,
            max_wins_per_bidder: 1,
            bidders: 10_000,
            requests: Some(20_000),
            duration_secs: None,
            concurrency: 256,
            rate: None,
            duplicates: 0.01,
            hot: 0.0,
            seed: 1,
            run_id: "lt".into(),
            wait: false,
            policy: Policy::FirstN,
            withdraws: 0.0,
            early_withdraws: 0.0,
            raises: 0.0,
            close_after_secs: None,
        }
    }
}

/// One bid request of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Index of the bid: for a duplicate, the index of the bid it resends.
    pub bid: u64,
    /// True when this request resends an earlier bid.
    pub duplicate: bool,
    pub auction: u32,
    pub bidder: u32,
    pub amount: u64,
    /// Whether, and when, the bidder withdraws the bid.
    pub withdraw: Option<WithdrawWhen>,
    /// The bidder raises the bid once it is accepted.
    pub raise: bool,
    /// How much this request's raise adds to the amount it knows. Drawn
    /// per request, not per bid: a resend raises by another step from the
    /// same expected amount, so two raises of one bid can conflict.
    pub raise_by: u64,
}

/// When a planned withdraw is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WithdrawWhen {
    /// Just before the bid, racing it.
    Early,
    /// Once the bid is accepted (and raised, if it is to be).
    Late,
}

impl Workload {
    /// The auction id of auction `i`.
    pub fn auction_id(&self, i: u32) -> String {
        format!("{}-a{i}", self.run_id)
    }

    /// The auction index of an auction id of this run.
    pub fn auction_index(&self, auction_id: &str) -> Option<u32> {
        auction_id
            .strip_prefix(self.run_id.as_str())?
            .strip_prefix("-a")?
            .parse()
            .ok()
            .filter(|&i| i < self.auctions)
    }

    /// The rules every auction of the run is opened with.
    ///
    /// # Panics
    ///
    /// On a capacity of 0, which the run refuses before it opens anything.
    pub fn spec(&self) -> AuctionSpec {
        AuctionSpec {
            capacity: NonZeroU32::new(self.capacity).expect("a capacity of 0 is refused first"),
            min_amount: self.min_amount,
            closes_at: None,
            max_wins_per_bidder: self.max_wins_per_bidder,
            policy: self.policy,
        }
    }

    /// Whether the run's auctions hold bids until their close: their
    /// bidders get held notices and may raise, and without a deadline the
    /// run closes them after the last bid, since only the close decides a
    /// held bid. The load test's one question about a policy outside its
    /// check, so that a new policy is answered here once.
    pub fn holds_until_close(&self) -> bool {
        match self.policy {
            Policy::FirstN => false,
            Policy::TopAmount => true,
        }
    }

    /// True when any knob beyond plain `first_n` bidding is set: what the
    /// optimistic and locking alternatives do not support.
    pub fn lifecycle(&self) -> bool {
        // Their aggregates decide each bid on its request, as `first_n` does.
        let decided_at_once = match self.policy {
            Policy::FirstN => true,
            Policy::TopAmount => false,
        };
        !decided_at_once
            || self.withdraws > 0.0
            || self.early_withdraws > 0.0
            || self.raises > 0.0
            || self.close_after_secs.is_some()
    }

    /// The `n`th request. Pure: the same `n` always gives the same request.
    pub fn request(&self, n: u64) -> Planned {
        let h = mix(self.seed, n);
        if n > 0 && unit(h) < self.duplicates {
            // Resend one of the last 64 bids: recent enough that it is
            // often still in flight, which is the case that matters.
            let back = 1 + mix(h, 1) % n.min(64);
            let mut original = self.request(n - back);
            original.duplicate = true;
            original.raise_by = raise_step(h);
            return original;
        }
        let pick = mix(h, 2);
        let auction = if unit(mix(h, 3)) < self.hot {
            0
        } else {
            (pick % u64::from(self.auctions.max(1))) as u32
        };
        Planned {
            bid: n,
            duplicate: false,
            auction,
            bidder: (mix(h, 4) % u64::from(self.bidders.max(1))) as u32,
            amount: 1 + mix(h, 5) % 1000,
            withdraw: if unit(mix(h, 6)) < self.early_withdraws {
                Some(WithdrawWhen::Early)
            } else if unit(mix(h, 7)) < self.withdraws {
                Some(WithdrawWhen::Late)
            } else {
                None
            },
            raise: self.holds_until_close() && unit(mix(h, 8)) < self.raises,
            raise_by: raise_step(h),
        }
    }

    /// The wire form of a planned request.
    pub fn bid_request(&self, p: &Planned) -> BidRequest {
        BidRequest {
            bid_id: bid_id(p.bid),
            bidder_id: format!("u{}", p.bidder),
            amount: p.amount,
            wait: self.wait,
        }
    }

    /// The wire form of a planned request's withdraw.
    pub fn withdraw_request(&self, p: &Planned) -> WithdrawRequest {
        WithdrawRequest {
            bid_id: bid_id(p.bid),
            bidder_id: format!("u{}", p.bidder),
        }
    }

    /// The wire form of a planned request's raise, from the amount the
    /// bidder last knew.
    pub fn raise_request(&self, p: &Planned, expected_amount: u64) -> RaiseRequest {
        RaiseRequest {
            bid_id: bid_id(p.bid),
            bidder_id: format!("u{}", p.bidder),
            amount: expected_amount + p.raise_by,
            expected_amount,
        }
    }
}

/// A raise's step: 1 to 100, small beside the amounts bid (1 to 1000), so
/// that a raised bid can still be outbid.
fn raise_step(h: u64) -> u64 {
    1 + mix(h, 9) % 100
}

/// The bid id of bid `i`.
pub fn bid_id(i: u64) -> String {
    format!("b{i}")
}

/// The bid index of a bid id.
pub fn bid_index(bid_id: &str) -> Option<u64> {
    bid_id.strip_prefix('b')?.parse().ok()
}

/// splitmix64 of `a` and `b`: cheap, well mixed, no state.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_follow_the_knobs() {
        let w = Workload {
            auctions: 10,
            duplicates: 0.1,
            hot: 0.5,
            ..Workload::default()
        };
        let plan: Vec<_> = (0..10_000).map(|n| w.request(n)).collect();
        assert_eq!(plan, (0..10_000).map(|n| w.request(n)).collect::<Vec<_>>());
        let dups = plan.iter().filter(|p| p.duplicate).count();
        assert!((800..1200).contains(&dups), "about 10% duplicates: {dups}");
        for (n, p) in plan.iter().enumerate() {
            if p.duplicate {
                let original = &plan[p.bid as usize];
                assert!(!original.duplicate && p.bid < n as u64);
                assert_eq!(
                    (original.auction, original.bidder, original.amount),
                    (p.auction, p.bidder, p.amount)
                );
            }
        }
        let hot = plan.iter().filter(|p| p.auction == 0).count();
        assert!(
            (5000..6000).contains(&hot),
            "half plus a tenth on the hot auction: {hot}"
        );
        assert_eq!(w.auction_index(&w.auction_id(7)), Some(7));
        assert_eq!(w.auction_index("other-a1"), None);
        assert_eq!(bid_index(&bid_id(42)), Some(42));
        assert!(!w.lifecycle());
        assert!(plan.iter().all(|p| p.withdraw.is_none() && !p.raise));
    }

    #[test]
    fn a_report_from_before_the_lifecycle_knobs_still_reads() {
        let old = r#"{"auctions":10,"capacity":100,"min_amount":0,"max_wins_per_bidder":1,
            "bidders":10000,"requests":20000,"duration_secs":null,"concurrency":256,"rate":null,
            "duplicates":0.01,"hot":0.0,"seed":1,"run_id":"lt-tcc"}"#;
        let w: Workload = serde_json::from_str(old).unwrap();
        assert!(!w.lifecycle());
        assert_eq!((w.policy, w.close_after_secs), (Policy::FirstN, None));
        let verdict = r#"{"ok":true,"auctions":1,"bids":2,"violation_count":0,"violations":[]}"#;
        let v: crate::loadtest::check::Verdict = serde_json::from_str(verdict).unwrap();
        assert_eq!((v.replayed, v.not_replayed), (0, 0));
    }

    #[test]
    fn lifecycle_knobs_pick_bids_without_moving_the_plain_plan() {
        let plain = Workload {
            duplicates: 0.1,
            ..Workload::default()
        };
        let w = Workload {
            policy: Policy::TopAmount,
            withdraws: 0.2,
            early_withdraws: 0.1,
            raises: 0.3,
            ..plain.clone()
        };
        assert!(w.lifecycle());
        let plan: Vec<_> = (0..10_000).map(|n| w.request(n)).collect();
        for (n, p) in plan.iter().enumerate() {
            let q = plain.request(n as u64);
            assert_eq!(
                (p.bid, p.duplicate, p.auction, p.bidder, p.amount),
                (q.bid, q.duplicate, q.auction, q.bidder, q.amount),
                "the knobs leave every bid where it was"
            );
            assert!((1..=100).contains(&p.raise_by));
            if p.duplicate {
                let original = &plan[p.bid as usize];
                assert_eq!((p.withdraw, p.raise), (original.withdraw, original.raise));
            }
        }
        let count =
            |f: &dyn Fn(&Planned) -> bool| plan.iter().filter(|p| !p.duplicate && f(p)).count();
        let bids = count(&|_| true);
        let early = count(&|p| p.withdraw == Some(WithdrawWhen::Early));
        let late = count(&|p| p.withdraw == Some(WithdrawWhen::Late));
        let raised = count(&|p| p.raise);
        assert!(
            (bids / 10 - 150..bids / 10 + 150).contains(&early),
            "{early}"
        );
        // Late withdraws are drawn among the 90% not withdrawn early.
        assert!(
            (bids * 18 / 100 - 200..bids * 18 / 100 + 200).contains(&late),
            "{late}"
        );
        assert!(
            (bids * 3 / 10 - 200..bids * 3 / 10 + 200).contains(&raised),
            "{raised}"
        );
        // Raises only apply to ranked auctions.
        let first_n = Workload {
            policy: Policy::FirstN,
            ..w.clone()
        };
        assert!((0..1000).all(|n| !first_n.request(n).raise));
        let p = plan.iter().find(|p| p.raise).unwrap();
        let r = w.raise_request(p, 500);
        assert_eq!((r.expected_amount, r.amount), (500, 500 + p.raise_by));
        assert_eq!(w.withdraw_request(p).bidder_id, format!("u{}", p.bidder));
    }
}
