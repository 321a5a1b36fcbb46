//! Who sends a bid, withdraw or raise: in the open mode whoever the body
//! claims, in the bound mode whoever NATS vouches for.
//!
//! In the bound mode bidders reach the service through a service import
//! with `share: true`, and nats-server stamps each such request with a
//! `Nats-Request-Info` header naming the importing account (`acc`) and
//! the authenticated user (`user`): a username, an NKey or a JWT user key.
//! The server replaces any header of that name that the client set
//! (since 2.11.15 and 2.12.6; CVE-2026-33223), so it cannot be forged by a
//! client of an importing account. The service's own account must hold no
//! user that may publish bids: a header sent inside that account crosses
//! no import and is not stamped.
//!
//! An identity acts in one of two ways:
//! - a **bidder** (a user of any other account): the body's `bidder_id`
//!   must be the user's own id ([`bidder_id_for_user`]);
//! - a **backend** (a user of an account named as a backend account): it
//!   bids for many end users and may send any `bidder_id`; its bidders are
//!   its own, and no other backend can act for them.
//!
//! Either way the log records ids qualified with the identity's scope
//! (`<id>@<scope>`, [`qualify`]), so that bid ids, ownership, bidder
//! limits and de-duplication are per identity: nobody can squat another
//! identity's bid id, withdraw or raise its bids, or learn of them through
//! a conflict. Replies carry the ids as the client sent them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use serde::Deserialize;

use crate::wire::{valid_id, ErrorCode, RequestError, MAX_ID_LEN};

/// The header nats-server stamps on a request that crosses a service import.
pub const REQUEST_INFO: &str = "Nats-Request-Info";

/// Oldest nats-server releases, per minor version, that replace a
/// client-set `Nats-Request-Info` header (CVE-2026-33223); every minor
/// version after the last one listed does too.
const FIXED_RELEASES: [(u64, u64, u64); 2] = [(2, 11, 15), (2, 12, 6)];

/// How requests are tied to bidders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Bidders are who the body says: for demos, tests and trusted
    /// networks. The `Nats-Request-Info` header is ignored.
    #[default]
    Open,
    /// Bidders are who NATS says they are: a request without a
    /// server-stamped identity is refused.
    Bound,
}

/// Identity settings of the gateway. Plain data with defaults.
#[derive(Clone, Debug, Default)]
pub struct IdentityConfig {
    /// Open or bound.
    pub mode: Mode,
    /// Accounts whose users are backends acting for many bidders.
    pub backend_accounts: Vec<String>,
    /// Most requests per second from one bidder identity (bound mode
    /// only; backends are not limited). `None`: no limit.
    pub bidder_rate: Option<u32>,
}

/// Default of `serve --bidder-rate`: more than any person clicks, fewer
/// than a bot needs.
pub const DEFAULT_BIDDER_RATE: u32 = 20;

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// Open mode: ids are taken as sent.
    Anyone,
    /// A bidder's own connection.
    Bidder {
        /// Qualifies the ids this bidder writes.
        scope: String,
        /// The only `bidder_id` it may send.
        own_id: String,
    },
    /// A backend bidding for its own end users.
    Backend {
        /// Qualifies the ids this backend writes.
        scope: String,
    },
}

impl Actor {
    /// The bid and bidder ids to write to the log for a request that
    /// names them, or a `forbidden` error for a bidder acting as another.
    pub fn log_ids(&self, bid_id: &str, bidder_id: &str) -> Result<(String, String), RequestError> {
        match self {
            Actor::Anyone => Ok((bid_id.to_string(), bidder_id.to_string())),
            Actor::Bidder { scope, own_id } => {
                if bidder_id != own_id {
                    return Err(RequestError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "field \"bidder_id\" must be your own bidder id {own_id:?}: this connection bids for itself only"
                        ),
                    ));
                }
                Ok((qualify(bid_id, scope), qualify(bidder_id, scope)))
            }
            Actor::Backend { scope } => Ok((qualify(bid_id, scope), qualify(bidder_id, scope))),
        }
    }

    /// The bid id to look up in the log for a request that names only a
    /// bid: this actor's own.
    pub fn log_bid_id(&self, bid_id: &str) -> String {
        match self {
            Actor::Anyone => bid_id.to_string(),
            Actor::Bidder { scope, .. } | Actor::Backend { scope } => qualify(bid_id, scope),
        }
    }

    /// The key its rate is limited by, if it is limited.
    fn limited_as(&self) -> Option<&str> {
        match self {
            Actor::Bidder { scope, .. } => Some(scope),
            Actor::Anyone | Actor::Backend { .. } => None,
        }
    }
}

/// What the server says of the request's sender, from `Nats-Request-Info`.
#[derive(Debug, Deserialize)]
struct RequestInfo {
    #[serde(default)]
    acc: String,
    #[serde(default)]
    user: String,
}

/// Tells who sent a request, and holds each bidder to its rate.
#[derive(Debug, Default)]
pub struct Gate {
    config: IdentityConfig,
    /// Token buckets per limited identity.
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Tokens left and when they were last counted.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Identities whose buckets are kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl Gate {
    pub fn new(config: IdentityConfig) -> Gate {
        Gate {
            config,
            buckets: Mutex::default(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// Who sent a request with these headers, and whether it may act now.
    pub fn admit(&self, headers: Option<&HeaderMap>) -> Result<Actor, RequestError> {
        let actor = self.actor(headers)?;
        if let (Some(rate), Some(key)) = (self.config.bidder_rate, actor.limited_as()) {
            self.take(key, rate, Instant::now())?;
        }
        Ok(actor)
    }

    fn actor(&self, headers: Option<&HeaderMap>) -> Result<Actor, RequestError> {
        if self.config.mode == Mode::Open {
            return Ok(Actor::Anyone);
        }
        let unauthenticated = |why: &str| {
            RequestError::new(
                ErrorCode::Unauthenticated,
                format!("this service binds bidders to their NATS identity, and {why}; connect as a user of a bidder or backend account, whose requests reach the service through its service import"),
            )
        };
        let info = headers.and_then(|h| h.get(REQUEST_INFO)).ok_or_else(|| {
            unauthenticated("the request carries no identity stamped by the server")
        })?;
        let info: RequestInfo = serde_json::from_str(info.as_str())
            .map_err(|_| unauthenticated("the request's identity header is unreadable"))?;
        if info.acc.is_empty() || info.user.is_empty() {
            return Err(unauthenticated(
                "the server named no user for this request (is the import `share: true`?)",
            ));
        }
        let scope = scope(&info.acc, &info.user);
        if self.config.backend_accounts.contains(&info.acc) {
            Ok(Actor::Backend { scope })
        } else {
            let own_id = bidder_id_for_user(&info.user);
            Ok(Actor::Bidder { scope, own_id })
        }
    }

    /// Takes a token from `key`'s bucket (`rate` per second, bursts of
    /// twice that), or says when to come back.
    fn take(&self, key: &str, rate: u32, now: Instant) -> Result<(), RequestError> {
        let rate = f64::from(rate.max(1));
        let burst = 2.0 * rate;
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // A full bucket is as good as none.
            let full =
                |b: &Bucket| b.tokens + now.duration_since(b.at).as_secs_f64() * rate >= burst;
            buckets.retain(|_, b| !full(b));
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        let retry_after_ms = (wait.as_millis() as u64).max(1);
        Err(RequestError::new(
            ErrorCode::RateLimited,
            format!(
                "more than {rate} requests per second from this bidder; send it again in {retry_after_ms} ms"
            ),
        )
        .retry_after(retry_after_ms))
    }
}

/// The scope of an authenticated identity: `<account>/<user>` when both
/// are plain ids, else `#` and 32 hex digits of a SHA-256 of the two (an
/// NKey or JWT user key is a plain id; a username may be anything).
pub fn scope(account: &str, user: &str) -> String {
    if valid_id(account) && valid_id(user) {
        return format!("{account}/{user}");
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}\n{account}{user}", account.len()).as_bytes(),
    );
    format!("#{}", hex(&digest.as_ref()[..16]))
}

/// A bid or bidder id as the log keeps it for an identity's scope.
pub fn qualify(id: &str, scope: &str) -> String {
    format!("{id}@{scope}")
}

/// The id a client sent, from an id in the log (the same id in the open mode).
pub fn unqualified(id: &str) -> &str {
    id.split_once('@').map_or(id, |(id, _)| id)
}

/// The bidder id of a user bidding for itself: its name when that is a
/// valid id, else `u-` and 40 hex digits of a SHA-256 of it. (Two users
/// who map to the same id are still two bidders: the log keys them by
/// their scopes.)
pub fn bidder_id_for_user(user: &str) -> String {
    if valid_id(user) {
        return user.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, user.as_bytes());
    let id = format!("u-{}", hex(&digest.as_ref()[..20]));
    debug_assert!(id.len() <= MAX_ID_LEN);
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a nats-server of this version stamps `Nats-Request-Info`
/// itself, replacing what a client set.
pub fn server_stamps_identity(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let v = (major, minor, patch);
    let last = FIXED_RELEASES[FIXED_RELEASES.len() - 1];
    if (major, minor) > (last.0, last.1) {
        return true;
    }
    FIXED_RELEASES
        .iter()
        .any(|&(ma, mi, pa)| (major, minor) == (ma, mi) && v >= (ma, mi, pa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::valid_logged_id;

    fn bound(backends: &[&str], rate: Option<u32>) -> Gate {
        Gate::new(IdentityConfig {
            mode: Mode::Bound,
            backend_accounts: backends.iter().map(|s| s.to_string()).collect(),
            bidder_rate: rate,
        })
    }

    fn stamped(info: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_INFO, info);
        headers
    }

    #[test]
    fn the_open_mode_ignores_the_header() {
        let gate = Gate::default();
        let headers = stamped(r#"{"acc":"BIDDERS","user":"mallory"}"#);
        assert_eq!(gate.admit(Some(&headers)).unwrap(), Actor::Anyone);
        assert_eq!(gate.admit(None).unwrap(), Actor::Anyone);
        assert_eq!(
            Actor::Anyone.log_ids("b1", "alice").unwrap(),
            ("b1".to_string(), "alice".to_string())
        );
    }

    #[test]
    fn the_bound_mode_refuses_a_request_without_a_stamped_user() {
        let gate = bound(&[], None);
        for headers in [
            None,
            Some(HeaderMap::new()),
            Some(stamped("not json")),
            Some(stamped(r#"{"acc":"BIDDERS","rtt":1000}"#)),
        ] {
            let e = gate.admit(headers.as_ref()).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthenticated, "{e}");
        }
    }

    #[test]
    fn a_bidder_bids_for_itself_only() {
        let gate = bound(&["BACKENDS"], None);
        let alice = gate
            .admit(Some(&stamped(
                r#"{"acc":"BIDDERS","user":"alice","rtt":1}"#,
            )))
            .unwrap();
        assert_eq!(
            alice.log_ids("b1", "alice").unwrap(),
            ("b1@BIDDERS/alice".into(), "alice@BIDDERS/alice".into())
        );
        let e = alice.log_ids("b1", "bob").unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(!e.message.contains("bob"), "{e}");
    }

    #[test]
    fn backends_scope_the_bidders_they_send() {
        let gate = bound(&["BACKENDS"], Some(1));
        let shop = |user: &str| {
            let info = format!(r#"{{"acc":"BACKENDS","user":"{user}"}}"#);
            gate.admit(Some(&stamped(&info))).unwrap()
        };
        let (a, b) = (shop("shop-a"), shop("shop-b"));
        let (a_ids, b_ids) = (
            a.log_ids("b1", "alice").unwrap(),
            b.log_ids("b1", "alice").unwrap(),
        );
        assert_ne!(a_ids, b_ids);
        assert_eq!(unqualified(&a_ids.0), "b1");
        // Backends are not rate limited.
        for _ in 0..10 {
            shop("shop-a");
        }
    }

    #[test]
    fn usernames_that_are_not_ids_map_to_ids_and_to_distinct_scopes() {
        let id = bidder_id_for_user("alice@example.com");
        assert!(valid_id(&id) && id.starts_with("u-"), "{id}");
        assert_eq!(id, bidder_id_for_user("alice@example.com"));
        assert_ne!(scope("A", "x y"), scope("A x", "y"));
        assert_ne!(scope("AB", "c d"), scope("A", "Bc d"));
        for s in [
            scope("BIDDERS", "alice"),
            scope("BIDDERS", "alice@example.com"),
        ] {
            let q = qualify("b-1", &s);
            assert!(valid_logged_id(&q), "{q}");
            assert_eq!(unqualified(&q), "b-1");
        }
        for bad in ["b@", "b@x", "b@#12", "@A/b", "b@A/b c", "b@A/b/c"] {
            assert!(!valid_logged_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_bidder_over_its_rate_is_told_when_to_come_back() {
        let gate = bound(&[], Some(10));
        let start = Instant::now();
        for _ in 0..20 {
            gate.take("BIDDERS/alice", 10, start).unwrap();
        }
        let e = gate.take("BIDDERS/alice", 10, start).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after_ms, Some(100));
        // Another bidder has its own bucket; time refills this one.
        gate.take("BIDDERS/bob", 10, start).unwrap();
        gate.take("BIDDERS/alice", 10, start + Duration::from_millis(100))
            .unwrap();
    }

    #[test]
    fn only_releases_with_the_fix_stamp_identities() {
        for v in [
            "2.11.15",
            "2.11.20",
            "2.12.6",
            "2.12.10",
            "2.13.0",
            "2.15.1",
            "3.0.0",
            "2.14.0-beta.1",
        ] {
            assert!(server_stamps_identity(v), "{v}");
        }
        for v in ["2.10.29", "2.11.14", "2.12.5", "2.12", "garbage", ""] {
            assert!(!server_stamps_identity(v), "{v}");
        }
    }
}
