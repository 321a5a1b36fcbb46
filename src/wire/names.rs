//! Every name the service gives that is not a subject (those are
//! [`super::Subjects`]'): consumers, keys of the leases bucket, queue and
//! priority groups, and the snapshot's directories. The gateway, the
//! verifier, `allot status`, the metrics page and `allot audit` all read
//! them from here, so none reaches into another's module for a name.

use std::path::{Path, PathBuf};

/// Default name of the verifiers' durable consumers; each partition's is
/// [`verifier_consumer`] of it.
pub const VERIFIER_CONSUMER: &str = "allot-verifier";

/// Queue group shared by every gateway, so that each request is served once.
pub const GATEWAY_QUEUE: &str = "allot-gateway";

/// Queue group of the verifiers' lookup subscriptions (decided bids and
/// command results).
pub const VERIFIER_QUEUE: &str = "allot-verifier";

/// The verifier consumer's priority group: the server delivers to the one
/// client pinned in it.
pub const PULL_GROUP: &str = "verifier";

/// Prefix of the verifiers' member entries in the leases bucket.
pub const MEMBER_PREFIX: &str = "member.";

/// The durable consumer deciding one partition: `<consumer>-<partition>`.
pub fn verifier_consumer(consumer: &str, partition: u32) -> String {
    format!("{consumer}-{partition}")
}

/// The key of a partition's lease in the leases bucket.
pub fn lease_key(partition: u32) -> String {
    format!("verifier.{partition}")
}

/// The key of a verifier's member entry in the leases bucket: its owner
/// name, hashed (FNV-1a 64) to a key-safe token.
pub fn member_key(owner: &str) -> String {
    let hash = owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{MEMBER_PREFIX}{hash:016x}")
}

/// Where a verifier keeps one partition's snapshot: `<data_dir>/partition-<p>`.
pub fn partition_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join(format!("partition-{partition}"))
}
