//! `allot loadtest`: drives a bidding workload through one of three
//! strategies, measures it, and checks the invariants.

pub mod check;
pub mod html;
pub mod report;
pub mod workload;
