//! allot: competitive bidding for N winning slots, with Try-Confirm-Cancel
//! events on NATS JetStream and no per-auction lock.
//!
//! The flow, and who owns each step:
//!
//! ```text
//! bidder ──allot.bid.<a>──► gateway ──allot.tries.<p>.v2─► ALLOT_TRIES ──► verifier ──► ALLOT_OUTCOMES
//!                           gateway/                   (the log)       verifier/    allot.outcomes.<p>, then live
//!                           fast rejects                               core.rs      allot.outcome.<a>.<kind>.live
//!                             ▲                                        snapshot.rs
//!                             ├── ALLOT_STATUS (fill) ◄────────────────────┤
//!                             └── allot.verifier.decided.<p>.<a> (resends) ◄─┘
//! ```
//!
//! - [`wire`]: subjects, JSON messages, request decoding and reading log
//!   entries: the public contract (mirrored by `schemas/`).
//! - [`core`]: the pure, deterministic decision state machine.
//! - [`gateway`]: validates bids, refuses early what can never win, appends
//!   tries without a lock, answers resends; also opens auctions and reports
//!   their status. [`identity`] tells who sent a request: the body's claim
//!   in the open mode, the NATS user in the bound mode.
//! - [`verifier`]: folds the log through the core, keeps the SQLite
//!   [`snapshot`], publishes one outcome per try, recovers after a crash.
//! - [`log`]: the one writer of the log (append an event: subject, message
//!   id and expectations follow from it; tries by group commit, several
//!   to an entry) and of the outcome stream (an entry of outcomes per
//!   batch, under the fence), and reader of both;
//!   [`wire::names`] names every consumer, key and group.
//! - [`streams`]: the JetStream streams and buckets; [`service`] runs the
//!   gateway and the verifier until shutdown.
//! - [`loadtest`]: `allot loadtest`, the workload driver and its invariant
//!   check; its [`alternatives`](loadtest::alternatives): optimistic
//!   concurrency and locking over event-sourced aggregates, what allot is
//!   measured against.
//! - [`audit`]: `allot audit`, an offline replay of the log compared with
//!   the published outcomes and the snapshot.
//! - [`observe`]: counters, `$SRV` answers, the `/metrics` page and
//!   `allot status`.
//! - [`client`]: a typed client; [`nats_server`]: a private server for the
//!   demo and tests; [`faults`]: fault points for fault tests, in test
//!   builds only; [`cmd`]: one module per CLI command.

pub mod audit;
pub mod client;
mod closed;
pub mod cmd;
pub mod core;
pub mod error;
pub mod faults;
pub mod gateway;
mod id_map;
pub mod identity;
pub mod loadtest;
pub mod log;
pub mod nats_server;
pub mod observe;
pub mod service;
pub mod snapshot;
pub mod streams;
pub mod verifier;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
