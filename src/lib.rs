//! allot: competitive bidding for N winning slots, with Try-Confirm-Cancel
//! events on NATS JetStream and no per-auction lock.
//!
//! The flow, and who owns each step:
//!
//! ```text
//! bidder --request--> gateway --try event--> log stream --> verifier --outcome--> outcome stream
//!  allot.bid.<a>     (gateway.rs)  allot.try.<a>  ALLOT_TRIES   (verifier.rs)  allot.outcome.<a>.confirmed
//!                     fast reject                               core.rs decides            .cancelled
//!                     from the fill view  <--status bucket--    snapshot.rs (SQLite)
//! ```
//!
//! - [`wire`]: subjects, JSON messages and request decoding, the public
//!   contract (mirrored by `schemas/`).
//! - [`core`]: the pure, deterministic decision state machine.
//! - [`gateway`]: validates bids, refuses early what can never win, appends
//!   tries without a lock; also opens auctions and reports status.
//! - [`verifier`]: folds the log through the core, keeps the SQLite
//!   [`snapshot`], publishes one outcome per try.
//! - [`streams`]: the JetStream streams and bucket; [`service`] runs it all.
//! - [`client`]: a typed client; [`nats_server`]: a private server for the
//!   demo and tests; [`cmd`]: one module per CLI command.

pub mod client;
pub mod cmd;
pub mod core;
pub mod error;
pub mod faults;
pub mod gateway;
pub mod nats_server;
pub mod service;
pub mod snapshot;
pub mod streams;
pub mod verifier;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
