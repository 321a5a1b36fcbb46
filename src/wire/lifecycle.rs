//! The rest of the Try-Confirm-Cancel lifecycle on the wire: withdrawals,
//! raises and closes (log events, requests, replies) and the `held`
//! notices of ranked auctions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{timestamp, ErrorCode};

/// A bidder withdrew a bid (the bidder's Cancel). In the log on the
/// auction's subject, so that it is ordered with the tries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawEvent {
    pub bid_id: String,
    pub auction_id: String,
    pub bidder_id: String,
    #[serde(with = "timestamp")]
    pub withdrawn_at: DateTime<Utc>,
}

impl WithdrawEvent {
    /// JetStream de-duplication id: a resent withdraw is the same event.
    pub fn msg_id(auction_id: &str, bid_id: &str, bidder_id: &str) -> String {
        format!("withdraw:{auction_id}:{bid_id}:{bidder_id}")
    }
}

/// A bidder raised a held bid in a `top_amount` auction. Applies only if
/// the bid's amount is still `expected_amount` when the verifier reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaiseEvent {
    pub bid_id: String,
    pub auction_id: String,
    pub bidder_id: String,
    pub amount: u64,
    pub expected_amount: u64,
    #[serde(with = "timestamp")]
    pub raised_at: DateTime<Utc>,
}

impl RaiseEvent {
    /// JetStream de-duplication id: a resent raise is the same event, two
    /// different raises (or the same raise by two bidders) are two events.
    pub fn msg_id(&self) -> String {
        // The bidder is part of it: another bidder's identical raise must
        // be its own event (refused `not_owner`), never taken for this one.
        format!(
            "raise:{}:{}:{}:{}:{}",
            self.auction_id, self.bid_id, self.bidder_id, self.expected_amount, self.amount
        )
    }
}

/// The auction closed: by `allot auction close`, or at its `closes_at`.
/// Tries after it are cancelled `auction_closed`; in a `top_amount`
/// auction every held try is confirmed by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseEvent {
    pub auction_id: String,
    /// For a deadline close, the auction's `closes_at` itself, so that
    /// every instance racing to write it writes the same event.
    #[serde(with = "timestamp")]
    pub closed_at: DateTime<Utc>,
    pub by: ClosedBy,
}

impl CloseEvent {
    /// JetStream de-duplication id: one close per auction, whoever writes it.
    pub fn msg_id(auction_id: &str) -> String {
        format!("close:{auction_id}")
    }
}

/// What closed an auction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// An operator's close request.
    Request,
    /// The auction's `closes_at` passed.
    Deadline,
}

/// A notice on `<prefix>.hold.<auction_id>`: in a `top_amount` auction,
/// this try holds a slot now (it is among the N highest). Not final: the
/// try's one outcome (confirmed at close, or cancelled `outbid` or
/// `withdrawn`) follows on the outcome subjects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldEvent {
    #[serde(rename = "type")]
    pub kind: HeldKind,
    pub bid_id: String,
    pub auction_id: String,
    pub bidder_id: String,
    /// The amount held with (after a raise, the raised amount).
    pub amount: u64,
    pub try_seq: u64,
    /// The try's place in its log entry.
    #[serde(default)]
    pub try_index: u32,
    /// Log sequence of the event that made this hold: the try, or a raise.
    pub held_seq: u64,
}

/// The one value of [`HeldEvent`]'s `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldKind {
    Held,
}

crate::closed::closed_enum! {
    /// Why a withdraw or a raise changed nothing.
    pub enum RefuseReason {
        /// The bid is confirmed; it can no longer be withdrawn or raised.
        AlreadyConfirmed = "already_confirmed",
        /// The bid was cancelled for another reason; nothing to withdraw or
        /// raise.
        AlreadyCancelled = "already_cancelled",
        /// The bid belongs to another bidder.
        NotOwner = "not_owner",
        /// Raise: the bid's amount is not `expected_amount` (another raise
        /// came first); the reply carries the current amount to retry with.
        Conflict = "conflict",
        /// Raise: the new amount is not above the current one.
        NotHigher = "not_higher",
        /// Raise: no try for this bid is in the log (yet).
        UnknownBid = "unknown_bid",
        /// Raise: only `top_amount` auctions hold bids that can be raised.
        NotRanked = "not_ranked",
        /// Withdraw or raise at or after the auction's close.
        AuctionClosed = "auction_closed",
        /// No `open` event precedes it in the log.
        UnknownAuction = "unknown_auction",
    }
}

/// What the verifier made of a withdraw or a raise, in log order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResult {
    /// The bid is cancelled `withdrawn`, or will be when its try arrives
    /// (`empty_rollback`: no try was in the log yet).
    Withdrawn { empty_rollback: bool },
    /// The bid now holds its slot with `amount`.
    Raised { amount: u64 },
    /// Nothing changed. `current_amount` is set on a raise refused as
    /// `conflict` or `not_higher`.
    Refused {
        reason: RefuseReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_amount: Option<u64>,
    },
}

/// A withdraw request, as decoded from `<prefix>.withdraw.<auction_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawRequest {
    pub bid_id: String,
    pub bidder_id: String,
}

/// A raise request, as decoded from `<prefix>.raise.<auction_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaiseRequest {
    pub bid_id: String,
    pub bidder_id: String,
    pub amount: u64,
    pub expected_amount: u64,
}

/// The reply to a withdraw request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WithdrawReply {
    /// The bid is cancelled `withdrawn` (or will be, on `empty_rollback`).
    Withdrawn {
        bid_id: String,
        auction_id: String,
        /// Log sequence of the withdraw event that decided this.
        withdraw_seq: u64,
        empty_rollback: bool,
    },
    /// The withdraw changed nothing.
    Refused {
        bid_id: String,
        auction_id: String,
        withdraw_seq: u64,
        reason: RefuseReason,
    },
    Error {
        error: ErrorCode,
        message: String,
        /// When to send the request again, for an error that passes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// The reply to a raise request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RaiseReply {
    /// The bid holds its slot with the new amount.
    Raised {
        bid_id: String,
        auction_id: String,
        raise_seq: u64,
        amount: u64,
    },
    /// The raise changed nothing; on `conflict`, retry with
    /// `expected_amount` = `current_amount`.
    Refused {
        bid_id: String,
        auction_id: String,
        raise_seq: u64,
        reason: RefuseReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_amount: Option<u64>,
    },
    Error {
        error: ErrorCode,
        message: String,
        /// When to send the request again, for an error that passes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// The reply to a close request (`<prefix>.admin.close.<auction_id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CloseReply {
    /// The close event is in the log at `close_seq` (`duplicate`: it was
    /// already, written by an earlier request or at the deadline).
    Closing {
        auction_id: String,
        close_seq: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    Error {
        error: ErrorCode,
        message: String,
        /// When to send the request again, for an error that passes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Asks the verifier what it made of the withdraw or raise at `seq`, on
/// `<prefix>.verifier.command.<auction_id>`. Internal to the service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRequest {
    pub seq: u64,
}

/// The verifier's answer to a [`CommandRequest`]: `None` until it has
/// decided the log through `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    pub result: Option<CommandResult>,
    pub through: u64,
}
