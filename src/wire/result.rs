//! A bidder asks what became of one of its own bids: on
//! `<prefix>.result.<auction_id>`, so that under access control, where
//! the outcome feed is the operators' alone, each bidder still learns its
//! own outcomes and nobody else's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{timestamp, CancelReason, ErrorCode};

/// A result request, as decoded from `<prefix>.result.<auction_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRequest {
    pub bid_id: String,
}

/// The reply to a result request. Ids are as the client sent them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ResultReply {
    /// The bid won a slot.
    Confirmed {
        bid_id: String,
        auction_id: String,
        try_seq: u64,
        #[serde(default)]
        try_index: u32,
        amount: u64,
        rank: u32,
        #[serde(with = "timestamp")]
        decided_at: DateTime<Utc>,
    },
    /// The bid did not win, for `reason`.
    Cancelled {
        bid_id: String,
        auction_id: String,
        try_seq: u64,
        #[serde(default)]
        try_index: u32,
        amount: u64,
        reason: CancelReason,
        #[serde(with = "timestamp")]
        decided_at: DateTime<Utc>,
    },
    /// No outcome for this bid id from this bidder yet: not decided yet
    /// (a ranked auction decides held bids at its close), or never
    /// accepted. Ask again later.
    Undecided { bid_id: String, auction_id: String },
    Error {
        error: ErrorCode,
        message: String,
        /// When to send the request again, for an error that passes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}
