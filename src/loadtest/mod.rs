//! `allot loadtest`: drives a bidding workload through one of three
//! strategies (allot's TCC, or one of the [`alternatives`] it is compared
//! with: optimistic concurrency, a lock), measures it, and checks the
//! invariants on what came out.
//!
//! One run of one strategy: open the run's auctions, start reading the
//! outcome stream, send the bids (closed loop: `concurrency` in flight;
//! open loop: on a fixed schedule, latency counted from each bid's due
//! time so that queueing is not hidden), wait until every accepted bid has
//! its outcome and the stream has been read to its end, then check.
//!
//! With the lifecycle knobs (`tcc` only), bidders also withdraw bids
//! (some racing the bid itself) and raise held bids in `top_amount`
//! auctions, and auctions close during the run; the check then covers
//! every withdraw, raise, held notice and close the client saw answered.

pub mod alternatives;
mod baseline;
mod charts;
pub mod check;
mod engine;
mod history;
pub mod html;
mod lifecycle;
mod progress;
mod reader;
pub mod report;
mod run;
mod summary;
pub mod workload;

pub use engine::Strategy;
pub use run::{run, Options, Outcome};
