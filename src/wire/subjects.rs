//! Subject, stream and bucket names, all derived from one prefix.

use super::{valid_id, ErrorCode, OutcomeKind, RequestError};
use crate::error::{Error, ErrorKind};

/// All subject and stream names, derived from one configurable prefix.
#[derive(Clone, Debug)]
pub struct Subjects {
    /// First subject token, `allot` by default.
    prefix: String,
    /// How many partitions the log is divided into: fixed when the log
    /// stream is created, and read back from it (see [`crate::streams`]).
    partitions: u32,
}

/// Partitions of a new log unless told otherwise.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// Most partitions a log may have: each costs a verifier consumer, a lease
/// and a snapshot, and fences of [`crate::verifier`]'s lanes.
pub const MAX_PARTITIONS: u32 = 1024;

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: "allot".into(),
            partitions: DEFAULT_PARTITIONS,
        }
    }
}

/// The partition of an auction: 32-bit FNV-1a of its id, modulo the
/// number of partitions. This is the hash of nats-server's subject
/// mapping function `partition(P, n)` over the one token holding the
/// auction id, so a server-side mapping and every allot process agree.
pub fn partition_of(auction_id: &str, partitions: u32) -> u32 {
    super::fnv1a32(auction_id) % partitions.max(1)
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
            partitions: DEFAULT_PARTITIONS,
        })
    }

    /// The same subjects over a log of `partitions` partitions.
    pub fn with_partitions(self, partitions: u32) -> Result<Self, Error> {
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{partitions} partitions: use 1 to {MAX_PARTITIONS}"),
            ));
        }
        Ok(Subjects { partitions, ..self })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many partitions the log has.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition holding an auction's events.
    pub fn partition(&self, auction_id: &str) -> u32 {
        partition_of(auction_id, self.partitions)
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
    /// (see [`crate::wire::CommandRequest`]):
    /// `<prefix>.verifier.command.<partition>.<auction_id>`, so that only
    /// the partition's verifier hears it.
    pub fn command(&self, auction_id: &str) -> String {
        let p = self.partition(auction_id);
        format!("{}.verifier.command.{p}.{auction_id}", self.prefix)
    }

    /// A bidder's requests for its own bids' outcomes:
    /// `<prefix>.result.<auction_id>`.
    pub fn result_request(&self, auction_id: &str) -> String {
        format!("{}.result.{auction_id}", self.prefix)
    }

    /// Auction status requests: `<prefix>.status.<auction_id>`.
    pub fn status_request(&self, auction_id: &str) -> String {
        format!("{}.status.{auction_id}", self.prefix)
    }

    /// Try events in the log: `<prefix>.try.<partition>.<auction_id>`.
    pub fn try_event(&self, auction_id: &str) -> String {
        let p = self.partition(auction_id).to_string();
        join(&[&self.prefix, ".try.", &p, ".", auction_id])
    }

    /// Auction lifecycle events (`open`, `close`) and the bidders'
    /// `withdraw` and `raise` in the log:
    /// `<prefix>.auction.<partition>.<auction_id>`.
    pub fn auction_event(&self, auction_id: &str) -> String {
        let p = self.partition(auction_id);
        format!("{}.auction.{p}.{auction_id}", self.prefix)
    }

    /// Every log event of one partition, tries and auction events:
    /// `<prefix>.*.<partition>.*` (the log holds nothing else).
    pub fn log_partition(&self, partition: u32) -> String {
        format!("{}.*.{partition}.*", self.prefix)
    }

    /// One outcome subject: `<prefix>.outcome.<auction_id>.confirmed|cancelled`.
    /// No bid id in it: a subject per bid would cost NATS memory for every
    /// bid ever decided.
    pub fn outcome(&self, auction_id: &str, kind: OutcomeKind) -> String {
        join(&[&self.prefix, ".outcome.", auction_id, ".", kind.as_str()])
    }

    /// Where an outcome is sent live once the entry holding it is stored
    /// (format 3): `<prefix>.outcome.<auction_id>.confirmed|cancelled.live`.
    /// Not captured by the outcome stream, which stores the entry; under
    /// `<prefix>.outcome.<auction_id>.>` with the stored outcomes of
    /// earlier versions, so one subscription follows both.
    pub fn outcome_live(&self, auction_id: &str, kind: OutcomeKind) -> String {
        join(&[
            &self.prefix,
            ".outcome.",
            auction_id,
            ".",
            kind.as_str(),
            ".live",
        ])
    }

    /// A live follower's subscription: one auction's outcomes, or every
    /// auction's, as stored by earlier versions and as sent live.
    pub fn outcomes_followed(&self, auction_id: Option<&str>) -> String {
        format!("{}.outcome.{}.>", self.prefix, auction_id.unwrap_or("*"))
    }

    /// A partition's entries of outcomes in the outcome stream (format 3):
    /// `<prefix>.outcomes.<partition>`.
    pub fn outcomes_entry(&self, partition: u32) -> String {
        format!("{}.outcomes.{partition}", self.prefix)
    }

    /// Whether `subject` is an entry of outcomes.
    pub fn is_outcomes_entry(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(".outcomes."))
            .is_some_and(|p| p.parse::<u32>().is_ok())
    }

    /// What a reader of the outcome stream filters on for one auction's
    /// outcomes (stored alone, or in its partition's entries), or for all.
    pub fn outcome_filters(&self, auction_id: Option<&str>) -> Vec<String> {
        let entries = match auction_id {
            Some(a) => self.outcomes_entry(self.partition(a)),
            None => format!("{}.outcomes.*", self.prefix),
        };
        vec![self.outcomes(auction_id), entries]
    }

    /// Where the verifier answers which try decided a bid (see
    /// [`crate::wire::DecidedRequest`]):
    /// `<prefix>.verifier.decided.<partition>.<auction_id>`.
    pub fn decided(&self, auction_id: &str) -> String {
        let p = self.partition(auction_id);
        format!("{}.verifier.decided.{p}.{auction_id}", self.prefix)
    }

    /// Where the verifier of a partition says how many tries each of its
    /// auctions has in the log (see [`crate::wire::TriesReply`]):
    /// `<prefix>.verifier.tries.<partition>`, or with `.<auction_id>` for
    /// one auction.
    pub fn tries_count(&self, partition: u32, auction_id: Option<&str>) -> String {
        match auction_id {
            Some(a) => format!("{}.verifier.tries.{partition}.{a}", self.prefix),
            None => format!("{}.verifier.tries.{partition}", self.prefix),
        }
    }

    /// The decided-bid, command and try-count requests for one
    /// partition's auctions.
    pub fn lookups(&self, partition: u32) -> [String; 4] {
        [
            format!("{}.verifier.decided.{partition}.*", self.prefix),
            format!("{}.verifier.command.{partition}.*", self.prefix),
            self.tries_count(partition, None),
            self.tries_count(partition, Some("*")),
        ]
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

    /// Every subject the outcome stream captures: outcomes stored alone
    /// (format 1 and 2, still written beside an older allot), entries of
    /// outcomes (format 3), and fences.
    pub fn outcome_stream_subjects(&self) -> Vec<String> {
        vec![
            self.outcomes(None),
            format!("{}.fence.*.*", self.prefix),
            format!("{}.outcomes.*", self.prefix),
        ]
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

    /// A gateway's entries of several tries (format 2) for one partition:
    /// `<prefix>.tries.<partition>.v2`.
    pub fn tries_entry(&self, partition: u32) -> String {
        format!("{}.tries.{partition}.v2", self.prefix)
    }

    /// The partition of a tries entry's subject; `None` for any other
    /// subject.
    pub fn parse_tries_subject(&self, subject: &str) -> Option<u32> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".tries.")?;
        let (partition, format) = rest.split_once('.')?;
        let partition = partition.parse::<u32>().ok()?;
        (format == "v2" && partition < self.partitions).then_some(partition)
    }

    /// Every subject the log stream captures.
    pub fn log_subjects(&self) -> Vec<String> {
        vec![
            format!("{}.try.*.*", self.prefix),
            format!("{}.tries.*.*", self.prefix),
            format!("{}.auction.*.*", self.prefix),
        ]
    }

    /// The kind and auction id of an event subject in the log; `None`
    /// unless the partition token is the auction's partition.
    pub fn parse_log_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (kind, rest) = rest.split_once('.')?;
        let (partition, auction_id) = rest.split_once('.')?;
        (partition.parse::<u32>().ok()? == self.partition(auction_id)).then_some((kind, auction_id))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_fnv1a_of_the_auction_id() {
        // FNV-1a 32 of "" is its offset basis, of "a" a published test vector.
        assert_eq!(partition_of("", u32::MAX), 0x811c_9dc5);
        assert_eq!(partition_of("a", u32::MAX), 0xe40c_292c);
        assert_eq!(partition_of("anything", 1), 0);
        let s = Subjects::default().with_partitions(8).unwrap();
        let spread: std::collections::BTreeSet<u32> =
            (0..64).map(|i| s.partition(&format!("a{i}"))).collect();
        assert_eq!(spread.len(), 8, "64 auctions reach every partition");
    }

    #[test]
    fn log_subjects_carry_the_partition_and_parse_back() {
        let s = Subjects::default().with_partitions(8).unwrap();
        let p = s.partition("x-1");
        assert_eq!(s.try_event("x-1"), format!("allot.try.{p}.x-1"));
        assert_eq!(s.auction_event("x-1"), format!("allot.auction.{p}.x-1"));
        assert_eq!(
            s.parse_log_subject(&s.try_event("x-1")),
            Some(("try", "x-1"))
        );
        let wrong = format!("allot.try.{}.x-1", (p + 1) % 8);
        assert_eq!(
            s.parse_log_subject(&wrong),
            None,
            "an auction in another partition's subject"
        );
        assert_eq!(s.parse_log_subject("allot.try.x-1"), None);
        assert!(Subjects::default().with_partitions(0).is_err());
        assert!(Subjects::default()
            .with_partitions(MAX_PARTITIONS + 1)
            .is_err());
    }
}

#[cfg(test)]
mod nats_mapping {
    use super::partition_of;
    use crate::nats_server::NatsServer;
    use futures::StreamExt;

    /// A server-side subject mapping with nats-server's own `partition()`
    /// puts every id in the partition allot computes.
    #[tokio::test]
    async fn partition_of_is_the_servers_partition_function() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mapping.conf");
        std::fs::write(
            &config,
            "mappings = { \"in.*\": \"out.{{partition(8,1)}}.{{wildcard(1)}}\" }\n",
        )
        .unwrap();
        let server = NatsServer::start_with_config(&config).unwrap();
        let client = crate::client::connect(server.url()).await.unwrap();
        let mut mapped = client.subscribe("out.*.*").await.unwrap();
        let ids: Vec<String> = (0..200).map(|i| format!("auction-{i}")).collect();
        for id in &ids {
            client.publish(format!("in.{id}"), "".into()).await.unwrap();
        }
        client.flush().await.unwrap();
        for _ in &ids {
            let m = tokio::time::timeout(std::time::Duration::from_secs(5), mapped.next())
                .await
                .expect("mapped")
                .unwrap();
            let mut tokens = m.subject.split('.').skip(1);
            let (p, id) = (tokens.next().unwrap(), tokens.next().unwrap());
            assert_eq!(p.parse::<u32>().unwrap(), partition_of(id, 8), "{id}");
        }
    }
}
