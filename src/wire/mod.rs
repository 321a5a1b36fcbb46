//! The wire contract: every subject and every JSON message, exactly as in
//! `schemas/`. Requests from the outside are decoded field by field, so that
//! each error names the field at fault; events written by allot itself are
//! read tolerantly (unknown fields are ignored) so that older readers survive
//! newer writers.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod lifecycle;
pub mod names;
mod outcome_entry;
mod request;
mod result;
mod subjects;
pub mod timestamp;

pub use lifecycle::*;
pub use outcome_entry::{
    outcome_entries, outcomes_in, OutcomesEntry, OutcomesKind, UnreadableOutcomes,
    MAX_OUTCOMES_PER_ENTRY, MAX_OUTCOME_ENTRY_BYTES, OUTCOMES_FORMAT, RECORD_FORMAT,
};
pub use request::{
    decode_bid, decode_close, decode_open, decode_raise, decode_result, decode_withdraw, ErrorCode,
    RequestError,
};
pub use result::{ResultReply, ResultRequest};
pub use subjects::{partition_of, Subjects, DEFAULT_PARTITIONS, MAX_PARTITIONS};

/// Longest `auction_id`, `bid_id` or `bidder_id`.
pub const MAX_ID_LEN: usize = 64;
/// Largest amount: integers above 2^53-1 cannot round-trip through JSON
/// numbers in most languages.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;
/// Largest request body. A bid is well under 300 bytes; anything much larger
/// is a mistake or an attack, and is refused before it is parsed.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// NATS micro error headers, set on every error reply.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// The JSON name of a unit enum value (`sold_out`, `capacity_full`, ...),
/// for human-readable output.
pub fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

/// 32-bit FNV-1a of `s`: fixed in every process and version, and the hash
/// nats-server's `partition()` mapping uses.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// True when `s` is a valid id: 1 to 64 characters of `[A-Za-z0-9_-]`.
/// This also makes every id a single, wildcard-free NATS subject token.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True when `s` is a bid or bidder id as the log may hold it: a valid id,
/// or in the bound identity mode one qualified with its sender's scope,
/// `<id>@<account>/<user>` or `<id>@#<32 hex digits>` (see `identity`).
pub fn valid_logged_id(s: &str) -> bool {
    let Some((id, scope)) = s.split_once('@') else {
        return valid_id(s);
    };
    let scope_ok = match scope.strip_prefix('#') {
        Some(digest) => {
            digest.len() == 32
                && digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        None => scope
            .split_once('/')
            .is_some_and(|(account, user)| valid_id(account) && valid_id(user)),
    };
    valid_id(id) && scope_ok
}

/// The rules an auction is opened with. Immutable once opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionSpec {
    /// Number of winning slots: at least one, by its type (an open
    /// event with 0 is not an open event).
    pub capacity: NonZeroU32,
    /// Smallest amount that can win, in minor units.
    #[serde(default)]
    pub min_amount: u64,
    /// Tries with `tried_at` at or after this instant are cancelled.
    #[serde(
        default,
        with = "timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub closes_at: Option<DateTime<Utc>>,
    /// Most slots one bidder may win.
    #[serde(default = "one")]
    pub max_wins_per_bidder: u32,
    /// Who wins: the first N eligible tries, or the N highest amounts at
    /// close. Absent means `first_n`, as before policies existed.
    #[serde(default, skip_serializing_if = "Policy::is_default")]
    pub policy: Policy,
}

crate::closed::closed_enum! {
    /// How an auction's N slots are given out. Every rule that depends on
    /// it matches it exhaustively, so that a new policy stops compiling
    /// until each rule says what it does.
    #[derive(Default)]
    pub enum Policy {
        /// The first N eligible tries in log order win, each at once.
        #[default]
        FirstN = "first_n",
        /// The N highest amounts are held until the close, then confirmed;
        /// ties go to the earlier try.
        TopAmount = "top_amount",
    }
}

impl Policy {
    /// Left out of open events and replies: absent means the default, as
    /// before policies existed.
    fn is_default(&self) -> bool {
        *self == Policy::default()
    }
}

fn one() -> u32 {
    1
}

impl AuctionSpec {
    /// An auction with `capacity` slots and default rules.
    ///
    /// # Panics
    ///
    /// On 0, which no caller should pass: requests are decoded (and a 0
    /// refused) by [`decode_open`], and the command line refuses one.
    pub fn with_capacity(capacity: u32) -> Self {
        AuctionSpec {
            capacity: NonZeroU32::new(capacity).expect("an auction has at least one slot"),
            min_amount: 0,
            closes_at: None,
            max_wins_per_bidder: 1,
            policy: Policy::FirstN,
        }
    }

    /// True when a try at `at` is too late.
    pub fn is_closed_at(&self, at: DateTime<Utc>) -> bool {
        self.closes_at.is_some_and(|closes| at >= closes)
    }
}

/// A bid command, as decoded from `<prefix>.bid.<auction_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidRequest {
    pub bid_id: String,
    pub bidder_id: String,
    pub amount: u64,
    /// Reply once the bid is decided, `confirmed` or `cancelled`, rather
    /// than `accepted` once its try is in the log: one round trip instead
    /// of a reply and a watch. A ranked auction decides at its close, so
    /// its bids are answered `accepted` all the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,
}

/// Why the gateway refused a bid without writing a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    UnknownAuction,
    AuctionClosed,
    SoldOut,
    BelowMinimum,
}

/// The reply to a bid request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BidReply {
    /// The try is in the log at `try_seq`; its outcome follows on the
    /// outcome subjects.
    Accepted {
        bid_id: String,
        auction_id: String,
        try_seq: u64,
        /// The try's place in its log entry (see [`TryAt`]).
        #[serde(default)]
        try_index: u32,
        /// Set when this `bid_id` had already been accepted; the reply is
        /// the original one.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// A bid that asked to wait: its try is in the log at `try_seq` and
    /// confirmed, with its rank.
    Confirmed {
        bid_id: String,
        auction_id: String,
        try_seq: u64,
        #[serde(default)]
        try_index: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
        rank: u32,
    },
    /// A bid that asked to wait: its try is in the log at `try_seq` and
    /// cancelled, with the reason.
    Cancelled {
        bid_id: String,
        auction_id: String,
        try_seq: u64,
        #[serde(default)]
        try_index: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
        reason: CancelReason,
    },
    /// Refused before any try was written.
    Rejected {
        bid_id: String,
        auction_id: String,
        reason: RejectReason,
    },
    Error {
        error: ErrorCode,
        message: String,
        /// When to send the request again, for an error that passes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl BidReply {
    /// Reads a bid reply. An acceptance, by far the most common, is read
    /// straight into its fields; serde reads an internally tagged enum
    /// through a buffer first.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<BidReply> {
        #[derive(Deserialize)]
        struct Accepted<'a> {
            #[serde(borrow)]
            status: std::borrow::Cow<'a, str>,
            bid_id: String,
            auction_id: String,
            try_seq: u64,
            #[serde(default)]
            try_index: u32,
            #[serde(default)]
            duplicate: bool,
        }
        match serde_json::from_slice::<Accepted>(bytes) {
            Ok(a) if a.status == "accepted" => Ok(BidReply::Accepted {
                bid_id: a.bid_id,
                auction_id: a.auction_id,
                try_seq: a.try_seq,
                try_index: a.try_index,
                duplicate: a.duplicate,
            }),
            _ => serde_json::from_slice(bytes),
        }
    }
}

/// An auction-open request, as decoded from `<prefix>.admin.open.<auction_id>`.
pub type OpenRequest = AuctionSpec;

/// The reply to an auction-open request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OpenReply {
    Opened {
        auction_id: String,
        #[serde(flatten)]
        spec: AuctionSpec,
        /// Sequence of the `open` event in the log.
        open_seq: u64,
        /// Set when the auction was already open with these settings.
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

/// Whether an auction still takes bids, as the status reply shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuctionState {
    Open,
    Closed,
    SoldOut,
}

/// The reply to a status request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StatusReply {
    Ok {
        auction_id: String,
        #[serde(flatten)]
        spec: AuctionSpec,
        state: AuctionState,
        /// Tries in the log.
        tries: u64,
        confirmed: u64,
        cancelled: u64,
        /// Tries the verifier has not reached yet (held tries of a ranked
        /// auction, reached but decided at the close, are not pending).
        pending: u64,
    },
    Error {
        error: ErrorCode,
        message: String,
        /// When to send the request again, for an error that passes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// An event in the ordered log (stream `<PREFIX>_TRIES`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    Open(OpenEvent),
    Try(TryEvent),
    Withdraw(WithdrawEvent),
    Raise(RaiseEvent),
    Close(CloseEvent),
}

impl LogEvent {
    /// The auction the event belongs to.
    pub fn auction_id(&self) -> &str {
        match self {
            LogEvent::Open(e) => &e.auction_id,
            LogEvent::Try(e) => &e.auction_id,
            LogEvent::Withdraw(e) => &e.auction_id,
            LogEvent::Raise(e) => &e.auction_id,
            LogEvent::Close(e) => &e.auction_id,
        }
    }

    /// The JetStream de-duplication id it is appended with: a resend of
    /// the same event is the same message. An `open` has none: it must be
    /// its auction's first event instead (see `Streams::append`).
    pub fn msg_id(&self) -> Option<String> {
        match self {
            LogEvent::Open(_) => None,
            LogEvent::Try(t) => Some(TryEvent::msg_id(&t.auction_id, &t.bid_id)),
            LogEvent::Withdraw(w) => Some(WithdrawEvent::msg_id(
                &w.auction_id,
                &w.bid_id,
                &w.bidder_id,
            )),
            LogEvent::Raise(r) => Some(r.msg_id()),
            LogEvent::Close(c) => Some(CloseEvent::msg_id(&c.auction_id)),
        }
    }

    /// Ids in the event that must be valid, and the amounts in range.
    fn well_formed(&self) -> bool {
        match self {
            // The gateway never writes these, but a hand-written one must
            // not reach the core: no slot to hold, no win allowed.
            LogEvent::Open(o) => o.spec.max_wins_per_bidder >= 1,
            LogEvent::Close(_) => true,
            LogEvent::Try(t) => t.well_formed(),
            LogEvent::Withdraw(w) => valid_logged_id(&w.bid_id) && valid_logged_id(&w.bidder_id),
            LogEvent::Raise(r) => {
                valid_logged_id(&r.bid_id)
                    && valid_logged_id(&r.bidder_id)
                    && r.amount <= MAX_AMOUNT
                    && r.expected_amount <= MAX_AMOUNT
            }
        }
    }
}

/// One entry of the log, as the verifier reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// A well-formed event on its own subject.
    Event(LogEvent),
    /// An entry on a try subject that is not a valid try but names a valid
    /// bid id (hand-written, or from a buggy client with stream access).
    /// It is decided like any try, as cancelled `invalid_event`, so the bid
    /// still gets exactly one outcome and the auction is never blocked.
    /// Missing or invalid fields are filled in: bidder `unknown`, amount 0,
    /// the entry's storage time as `tried_at`.
    InvalidTry(TryEvent),
    /// Nothing to decide: no bid id to give an outcome to.
    Unreadable(String),
    /// An entry in a format newer than this build reads: a reader must
    /// stop there rather than skip tries it cannot see.
    NewerFormat(u32),
}

impl LogEntry {
    /// Reads the entries of one log message from its subject, payload and
    /// storage time: one for an event on its own subject (format 1), one
    /// per try for a [`TriesEntry`] (format 2), in order. Pure: the
    /// verifier and any replay of the log read messages the same way.
    pub fn read(
        subjects: &Subjects,
        subject: &str,
        payload: &[u8],
        stored_at: DateTime<Utc>,
    ) -> Vec<LogEntry> {
        match subjects.parse_tries_subject(subject) {
            Some(partition) => read_tries(subjects, partition, payload, stored_at),
            None => vec![LogEntry::read_event(subjects, subject, payload, stored_at)],
        }
    }

    /// Reads a message holding one event, on its auction's subject.
    fn read_event(
        subjects: &Subjects,
        subject: &str,
        payload: &[u8],
        stored_at: DateTime<Utc>,
    ) -> LogEntry {
        let Some((kind, auction_id)) = subjects
            .parse_log_subject(subject)
            .filter(|(_, auction_id)| valid_id(auction_id))
        else {
            return LogEntry::Unreadable(format!("unexpected subject {subject:?}"));
        };
        if kind == "try" {
            if let Some(t) = read_try(payload) {
                if t.auction_id == auction_id && t.well_formed() {
                    return LogEntry::Event(LogEvent::Try(t));
                }
            }
        }
        let problem = match serde_json::from_slice::<LogEvent>(payload) {
            // Tries on the try subject; every other event on the auction's.
            Ok(event)
                if (kind == "try") == matches!(event, LogEvent::Try(_))
                    && event.auction_id() == auction_id
                    && event.well_formed() =>
            {
                return LogEntry::Event(event)
            }
            Ok(_) => "event does not match its subject, or has invalid fields".to_string(),
            Err(e) => format!("not an event: {e}"),
        };
        if kind != "try" {
            return LogEntry::Unreadable(problem);
        }
        let body: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        invalid_try(&body, auction_id, stored_at, problem)
    }
}

/// A try that is not valid but names a valid bid id: decided as
/// [`LogEntry::InvalidTry`]; with no bid id, [`LogEntry::Unreadable`].
fn invalid_try(
    body: &serde_json::Value,
    auction_id: &str,
    stored_at: DateTime<Utc>,
    problem: String,
) -> LogEntry {
    let field = |name: &str| {
        body.get(name)
            .and_then(|v| v.as_str())
            .filter(|s| valid_logged_id(s))
    };
    let Some(bid_id) = field("bid_id") else {
        return LogEntry::Unreadable(problem);
    };
    LogEntry::InvalidTry(TryEvent {
        bid_id: bid_id.to_string(),
        auction_id: auction_id.to_string(),
        bidder_id: field("bidder_id").unwrap_or("unknown").to_string(),
        amount: body
            .get("amount")
            .and_then(|v| v.as_u64())
            .filter(|a| *a <= MAX_AMOUNT)
            .unwrap_or(0),
        tried_at: timestamp::micros(stored_at),
    })
}

/// The entry format this build writes tries in, and the newest it reads.
/// Format 1 is one try per message on `<prefix>.try.<partition>.<auction>`,
/// still read (logs written before format 2); format 2 is [`TriesEntry`].
pub const TRIES_FORMAT: u32 = 2;

/// Most tries a gateway puts in one entry. A message of this many tries
/// of the longest ids stays under nats-server's default 1 MiB payload.
pub const MAX_TRIES_PER_ENTRY: usize = 2048;

/// Most tries read from one entry; any after them (no gateway writes so
/// many) are unreadable, with no outcome. Keeps a try's place in 16 bits
/// in the verifier's memory.
pub const MAX_TRIES_READ: usize = 1 << 16;

/// Where a try is in the log, and so its identity for the reply, the
/// outcome and the audit: the stream sequence of the message holding it
/// (`try_seq`) and its place in that message (`try_index`, from 0). Tries
/// are decided in this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TryAt {
    pub seq: u64,
    pub index: u32,
}

impl TryAt {
    pub fn new(seq: u64, index: u32) -> TryAt {
        TryAt { seq, index }
    }
}

/// A try alone in its message (format 1).
impl From<u64> for TryAt {
    fn from(seq: u64) -> TryAt {
        TryAt::new(seq, 0)
    }
}

impl std::fmt::Display for TryAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.seq, self.index)
    }
}

/// A gateway's group commit: the tries of one partition that reached it
/// while its previous entry was being appended, in arrival order, as one
/// message on `<prefix>.tries.<partition>.v2`. No lock and no sequence
/// check, like a single try: the log's order is the order of entries, and
/// inside one the order of its `tries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriesEntry {
    /// Always `tries`.
    #[serde(rename = "type")]
    pub kind: TriesKind,
    /// The entry format, [`TRIES_FORMAT`].
    pub v: u32,
    pub tries: Vec<TryEvent>,
}

/// The one value of [`TriesEntry`]'s `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriesKind {
    Tries,
}

impl TriesEntry {
    pub fn new(tries: Vec<TryEvent>) -> TriesEntry {
        TriesEntry {
            kind: TriesKind::Tries,
            v: TRIES_FORMAT,
            tries,
        }
    }
}

/// Reads a [`TriesEntry`] of `partition`: one log entry per try, a try of
/// an auction outside the partition being unreadable (its verifier never
/// sees it). A format newer than this build's stops the reader rather
/// than be skipped ([`LogEntry::NewerFormat`]).
fn read_tries(
    subjects: &Subjects,
    partition: u32,
    payload: &[u8],
    stored_at: DateTime<Utc>,
) -> Vec<LogEntry> {
    let in_partition =
        |auction_id: &str| valid_id(auction_id) && subjects.partition(auction_id) == partition;
    if let Ok(entry) = serde_json::from_slice::<TriesEntry>(payload) {
        if entry.v > TRIES_FORMAT {
            return vec![LogEntry::NewerFormat(entry.v)];
        }
        if entry.v == TRIES_FORMAT && entry.tries.len() <= MAX_TRIES_READ {
            return entry
                .tries
                .into_iter()
                .map(|t| match (in_partition(&t.auction_id), t.well_formed()) {
                    (true, true) => LogEntry::Event(LogEvent::Try(t)),
                    (true, false) => {
                        let body = serde_json::to_value(&t).unwrap_or_default();
                        let problem = "try has invalid fields".to_string();
                        invalid_try(&body, &t.auction_id, stored_at, problem)
                    }
                    (false, _) => LogEntry::Unreadable(format!(
                        "try for auction {:?} outside partition {partition}",
                        t.auction_id
                    )),
                })
                .collect();
        }
    }
    // Not plainly an entry of this format: each try is read on its own,
    // and one that is not valid but names a valid bid id and an auction of
    // the partition is still decided, cancelled.
    let body: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    if let Some(v) = body.get("v").and_then(|v| v.as_u64()) {
        if v > u64::from(TRIES_FORMAT) {
            return vec![LogEntry::NewerFormat(u32::try_from(v).unwrap_or(u32::MAX))];
        }
    }
    let Some(tries) = body.get("tries").and_then(|t| t.as_array()) else {
        return vec![LogEntry::Unreadable("not a tries entry".to_string())];
    };
    tries
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i >= MAX_TRIES_READ {
                return LogEntry::Unreadable(format!(
                    "more than {MAX_TRIES_READ} tries in one entry"
                ));
            }
            let auction_id = t.get("auction_id").and_then(|a| a.as_str());
            let auction_id = match auction_id {
                Some(a) if in_partition(a) => a,
                _ => return LogEntry::Unreadable("try outside the partition".to_string()),
            };
            match serde_json::from_value::<TryEvent>(t.clone()) {
                Ok(t) if t.well_formed() => LogEntry::Event(LogEvent::Try(t)),
                _ => {
                    let problem = "try has missing or invalid fields".to_string();
                    invalid_try(t, auction_id, stored_at, problem)
                }
            }
        })
        .collect()
}

/// A try event read straight into its fields: most of the log is tries,
/// and serde reads an internally tagged enum through a buffer first.
/// `None` for anything that is not plainly a try; the caller then reads it
/// the general way.
fn read_try(payload: &[u8]) -> Option<TryEvent> {
    #[derive(Deserialize)]
    struct Try<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        bid_id: String,
        auction_id: String,
        bidder_id: String,
        amount: u64,
        #[serde(with = "timestamp")]
        tried_at: DateTime<Utc>,
    }
    let t: Try = serde_json::from_slice(payload).ok()?;
    (t.kind == "try").then_some(TryEvent {
        bid_id: t.bid_id,
        auction_id: t.auction_id,
        bidder_id: t.bidder_id,
        amount: t.amount,
        tried_at: t.tried_at,
    })
}

/// An auction was opened. Written once per auction: the append expects no
/// earlier event on the auction's subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenEvent {
    pub auction_id: String,
    #[serde(flatten)]
    pub spec: AuctionSpec,
    #[serde(with = "timestamp")]
    pub opened_at: DateTime<Utc>,
}

/// A bid's tentative reservation. Appended with no lock and no sequence
/// check; the log's order decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryEvent {
    pub bid_id: String,
    pub auction_id: String,
    pub bidder_id: String,
    pub amount: u64,
    #[serde(with = "timestamp")]
    pub tried_at: DateTime<Utc>,
}

impl TryEvent {
    /// JetStream de-duplication id: one try per (auction, bid).
    pub fn msg_id(auction_id: &str, bid_id: &str) -> String {
        subjects::join(&["try:", auction_id, ":", bid_id])
    }

    /// Valid ids and an amount in range.
    fn well_formed(&self) -> bool {
        valid_logged_id(&self.bid_id)
            && valid_logged_id(&self.bidder_id)
            && self.amount <= MAX_AMOUNT
    }
}

/// Confirmed or cancelled: the two final states of a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Confirmed,
    Cancelled,
}

impl OutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Confirmed => "confirmed",
            OutcomeKind::Cancelled => "cancelled",
        }
    }
}

crate::closed::closed_enum! {
    /// Why the verifier cancelled a try.
    pub enum CancelReason {
        /// All N slots were already confirmed.
        CapacityFull = "capacity_full",
        /// `tried_at` was at or after the auction's `closes_at`.
        AuctionClosed = "auction_closed",
        /// The amount was below the auction's `min_amount`.
        BelowMinimum = "below_minimum",
        /// The bidder already held `max_wins_per_bidder` slots.
        BidderLimit = "bidder_limit",
        /// No `open` event preceded the try in the log.
        UnknownAuction = "unknown_auction",
        /// The try event could not be read (hand-written garbage in the log).
        InvalidEvent = "invalid_event",
        /// The bidder withdrew the bid, before or after its try.
        Withdrawn = "withdrawn",
        /// `top_amount`: N higher bids (or equal, earlier ones) hold the slots.
        Outbid = "outbid",
    }
}

/// The one final decision on one try (stream `<PREFIX>_OUTCOMES`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeEvent {
    #[serde(rename = "type")]
    pub kind: OutcomeKind,
    pub bid_id: String,
    pub auction_id: String,
    pub bidder_id: String,
    pub amount: u64,
    pub try_seq: u64,
    /// The try's place in its log entry (see [`TryAt`]); 0 in outcomes
    /// written before entries held several tries.
    #[serde(default)]
    pub try_index: u32,
    #[serde(with = "timestamp")]
    pub tried_at: DateTime<Utc>,
    #[serde(with = "timestamp")]
    pub decided_at: DateTime<Utc>,
    /// 1..N in order of confirmation; only on `confirmed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// Only on `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<CancelReason>,
}

impl OutcomeEvent {
    /// JetStream de-duplication id: one outcome per (auction, bid).
    pub fn msg_id(auction_id: &str, bid_id: &str) -> String {
        subjects::join(&["outcome:", auction_id, ":", bid_id])
    }
}

/// The verifier's view of an auction that the gateway needs for fast
/// rejects, kept in the status KV bucket under the auction id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionView {
    /// Slots confirmed.
    pub confirmed: u32,
    /// True once every slot is confirmed.
    pub sold_out: bool,
    /// True once the auction's `close` event is decided.
    #[serde(default)]
    pub closed: bool,
}

/// Asks the verifier which try decided a bid, on
/// `<prefix>.verifier.decided.<partition>.<auction_id>`: how a gateway answers a bid
/// resent after its auction filled or closed. Internal to the service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedRequest {
    pub bid_id: String,
    /// Also send the bid's outcome, if it has one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outcome: bool,
    /// Answer only once the log is decided through this sequence (the
    /// bid's own try, just appended), rather than at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<u64>,
}

/// The verifier's answer to a [`DecidedRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedReply {
    /// Log sequence of the entry holding the try that decided the bid;
    /// `None` when no try up to `through` did.
    pub try_seq: Option<u64>,
    /// That try's place in its entry.
    #[serde(default)]
    pub try_index: u32,
    /// The verifier has decided the log up to this sequence.
    pub through: u64,
    /// The bid's outcome, when asked for and decided (a held bid of a
    /// ranked auction has a try but no outcome until the close).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeEvent>,
}

/// The verifier's answer on [`Subjects::tries_count`]: how many tries
/// each auction of its partition (or the one asked about) has in the log
/// up to `through`. Internal to the service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriesReply {
    /// The verifier has applied the log up to this sequence.
    pub through: u64,
    /// Auction id -> tries; auctions with none are left out.
    pub tries: std::collections::BTreeMap<String, u64>,
}

/// A request's reply: serializable, built from a [`RequestError`], and able
/// to say whether it is an error (for the micro error headers).
pub trait Reply: Serialize + From<RequestError> {
    fn error(&self) -> Option<(ErrorCode, &str)>;
}

macro_rules! reply {
    ($reply:ident) => {
        impl From<RequestError> for $reply {
            fn from(e: RequestError) -> Self {
                $reply::Error {
                    error: e.code,
                    message: e.message,
                    retry_after_ms: e.retry_after_ms,
                }
            }
        }

        impl Reply for $reply {
            fn error(&self) -> Option<(ErrorCode, &str)> {
                match self {
                    $reply::Error { error, message, .. } => Some((*error, message)),
                    _ => None,
                }
            }
        }
    };
}

reply!(BidReply);
reply!(WithdrawReply);
reply!(RaiseReply);
reply!(CloseReply);
reply!(OpenReply);
reply!(StatusReply);
reply!(ResultReply);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bid_replies_read_quickly_read_the_same() {
        let replies = [
            BidReply::Accepted {
                bid_id: "b1".into(),
                auction_id: "a1".into(),
                try_seq: 7,
                try_index: 2,
                duplicate: false,
            },
            BidReply::Accepted {
                bid_id: "b1".into(),
                auction_id: "a1".into(),
                try_seq: 7,
                try_index: 2,
                duplicate: true,
            },
            BidReply::Confirmed {
                bid_id: "b1".into(),
                auction_id: "a1".into(),
                try_seq: 7,
                try_index: 2,
                duplicate: false,
                rank: 3,
            },
            BidReply::Cancelled {
                bid_id: "b1".into(),
                auction_id: "a1".into(),
                try_seq: 7,
                try_index: 2,
                duplicate: true,
                reason: CancelReason::CapacityFull,
            },
            BidReply::Rejected {
                bid_id: "b1".into(),
                auction_id: "a1".into(),
                reason: RejectReason::SoldOut,
            },
            BidReply::Error {
                error: ErrorCode::InvalidField,
                message: "field \"amount\" must not be negative".into(),
                retry_after_ms: None,
            },
            BidReply::Error {
                error: ErrorCode::RateLimited,
                message: "more than 20 requests per second from this bidder".into(),
                retry_after_ms: Some(50),
            },
        ];
        for reply in replies {
            let json = serde_json::to_vec(&reply).unwrap();
            assert_eq!(BidReply::from_json(&json).unwrap(), reply);
        }
        assert!(BidReply::from_json(b"{\"status\":\"accepted\"}").is_err());
    }
}
