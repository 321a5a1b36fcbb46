//! Every integration test in one binary: each test file is a module here.
//! One binary links the service and its dependencies once instead of once
//! per file, which took most of a test build's time and disk.

mod common;

mod access;
mod alternatives;
mod auctions;
mod audit;
mod backup;
mod bad_input;
mod bidding;
mod cli;
mod cli_lifecycle;
mod cluster;
mod dashboard;
mod decoder_schema;
mod doc_links;
mod doc_names;
mod examples;
mod faults;
mod lifecycle;
mod loadtest;
mod log_entries;
mod metrics;
mod observability;
mod partitions;
mod recovery;
mod resends;
mod schemas;
mod upgrade;
