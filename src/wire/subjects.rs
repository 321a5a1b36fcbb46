//! Subject, stream and bucket names, all derived from one prefix.

use super::{valid_id, ErrorCode, OutcomeKind, RequestError};
use crate::error::{Error, ErrorKind};

/// All subject and stream names, derived from one configurable prefix.
#[derive(Clone, Debug)]
pub struct Subjects {
    /// First subject token, `allot` by default.
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: "allot".into(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix`, which must itself be a valid id.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        if !valid_id(prefix) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("subject prefix {prefix:?}: use 1 to 64 characters of [A-Za-z0-9_-]"),
            ));
        }
        Ok(Subjects {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Bid requests: `<prefix>.bid.<auction_id>`.
    pub fn bid(&self, auction_id: &str) -> String {
        format!("{}.bid.{auction_id}", self.prefix)
    }

    /// Auction-open requests (admin): `<prefix>.admin.open.<auction_id>`.
    pub fn open_request(&self, auction_id: &str) -> String {
        format!("{}.admin.open.{auction_id}", self.prefix)
    }

    /// Withdraw requests: `<prefix>.withdraw.<auction_id>`.
    pub fn withdraw(&self, auction_id: &str) -> String {
        format!("{}.withdraw.{auction_id}", self.prefix)
    }

    /// Raise requests: `<prefix>.raise.<auction_id>`.
    pub fn raise(&self, auction_id: &str) -> String {
        format!("{}.raise.{auction_id}", self.prefix)
    }

    /// Auction-close requests (admin): `<prefix>.admin.close.<auction_id>`.
    pub fn close_request(&self, auction_id: &str) -> String {
        format!("{}.admin.close.{auction_id}", self.prefix)
    }

    /// `held` notices of ranked auctions: `<prefix>.hold.<auction_id>`.
    pub fn hold(&self, auction_id: &str) -> String {
        format!("{}.hold.{auction_id}", self.prefix)
    }

    /// Where the verifier answers what it made of a withdraw or a raise
    /// (see [`crate::wire::CommandRequest`]): `<prefix>.verifier.command.<auction_id>`.
    pub fn command(&self, auction_id: &str) -> String {
        format!("{}.verifier.command.{auction_id}", self.prefix)
    }

    /// Auction status requests: `<prefix>.status.<auction_id>`.
    pub fn status_request(&self, auction_id: &str) -> String {
        format!("{}.status.{auction_id}", self.prefix)
    }

    /// Try events in the log: `<prefix>.try.<auction_id>`.
    pub fn try_event(&self, auction_id: &str) -> String {
        join(&[&self.prefix, ".try.", auction_id])
    }

    /// Auction lifecycle events (`open`, `close`) and the bidders'
    /// `withdraw` and `raise` in the log: `<prefix>.auction.<auction_id>`.
    pub fn auction_event(&self, auction_id: &str) -> String {
        format!("{}.auction.{auction_id}", self.prefix)
    }

    /// One outcome subject: `<prefix>.outcome.<auction_id>.confirmed|cancelled`.
    /// No bid id in it: a subject per bid would cost NATS memory for every
    /// bid ever decided.
    pub fn outcome(&self, auction_id: &str, kind: OutcomeKind) -> String {
        join(&[&self.prefix, ".outcome.", auction_id, ".", kind.as_str()])
    }

    /// Where the verifier answers which try decided a bid (see
    /// [`crate::wire::DecidedRequest`]): `<prefix>.verifier.decided.<auction_id>`.
    pub fn decided(&self, auction_id: &str) -> String {
        format!("{}.verifier.decided.{auction_id}", self.prefix)
    }

    /// Every outcome of one auction, or of all auctions.
    pub fn outcomes(&self, auction_id: Option<&str>) -> String {
        format!("{}.outcome.{}.*", self.prefix, auction_id.unwrap_or("*"))
    }

    /// One lane of a partition's fence, in the outcome stream: its last
    /// marker is the verifier allowed to publish outcomes.
    pub fn fence(&self, partition: u32, lane: usize) -> String {
        format!("{}.fence.{partition}.{lane}", self.prefix)
    }

    /// Every lane of a partition's fence.
    pub fn fence_lanes(&self, partition: u32) -> String {
        format!("{}.fence.{partition}.*", self.prefix)
    }

    /// Every subject the outcome stream captures: outcomes and fences.
    pub fn outcome_stream_subjects(&self) -> Vec<String> {
        vec![self.outcomes(None), format!("{}.fence.*.*", self.prefix)]
    }

    /// The wildcard a request handler listens on, for one request kind
    /// (`bid`, `admin.open`, `status`). `>` rather than `*`, so that a
    /// subject with extra tokens reaches the handler and gets a clear error
    /// instead of silence.
    pub fn request_wildcard(&self, kind: &str) -> String {
        format!("{}.{kind}.>", self.prefix)
    }

    /// The auction id in a request subject of the given kind.
    pub fn auction_in<'a>(&self, subject: &'a str, kind: &str) -> Result<&'a str, RequestError> {
        let token = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.strip_prefix(kind))
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or("");
        if token.contains('.') || !valid_id(token) {
            return Err(RequestError::new(
                ErrorCode::InvalidSubject,
                format!(
                    "subject {subject:?} must be {}.{kind}.<auction_id>, with an auction_id of 1 to 64 characters of [A-Za-z0-9_-]",
                    self.prefix
                ),
            ));
        }
        Ok(token)
    }

    /// Stream of tries and auction events (the ordered log).
    pub fn tries_stream(&self) -> String {
        format!("{}_TRIES", self.prefix.to_uppercase())
    }

    /// Stream of outcome events.
    pub fn outcomes_stream(&self) -> String {
        format!("{}_OUTCOMES", self.prefix.to_uppercase())
    }

    /// KV bucket holding the verifier's view of each auction for the gateway.
    pub fn status_bucket(&self) -> String {
        format!("{}_STATUS", self.prefix.to_uppercase())
    }

    /// KV bucket of leases: which verifier decides the log.
    pub fn leases_bucket(&self) -> String {
        format!("{}_LEASES", self.prefix.to_uppercase())
    }

    /// Every subject the log stream captures.
    pub fn log_subjects(&self) -> Vec<String> {
        vec![
            format!("{}.try.*", self.prefix),
            format!("{}.auction.*", self.prefix),
        ]
    }

    /// The auction id and kind of an event subject in the log.
    pub fn parse_log_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (kind, auction_id) = rest.split_once('.')?;
        Some((kind, auction_id))
    }
}

/// Concatenates, for the subjects built once or twice per bid: cheaper
/// than `format!`.
pub(crate) fn join(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}
