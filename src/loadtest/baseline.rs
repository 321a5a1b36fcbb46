//! `--baseline`: raw pipelined JetStream publishes on the same server, the
//! ceiling any pipeline built on it is measured against.

use std::time::Instant;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::{self, stream};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::report::Baseline;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{timestamp, Subjects, TryEvent};

/// Publishes `count` try-sized messages, each with its own `Nats-Msg-Id`
/// (as tries have), with up to `in_flight` acks outstanding, into a scratch
/// stream stored like the log. Deletes the stream afterwards.
pub async fn measure(
    client: async_nats::Client,
    subjects: &Subjects,
    count: u64,
    in_flight: usize,
) -> Result<Baseline> {
    let js = jetstream::new(client);
    let name = format!("{}_BASELINE", subjects.prefix().to_uppercase());
    let subject = format!("{}.baseline", subjects.prefix());
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(Error::wrap(ErrorKind::Setup, name.clone()))?;

    let payload: bytes::Bytes = serde_json::to_vec(&TryEvent {
        bid_id: "b1000000".into(),
        auction_id: "lt0123456789-a1000".into(),
        bidder_id: "u1000000".into(),
        amount: 1000,
        tried_at: timestamp::now(),
    })
    .expect("tries serialize")
    .into();
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    let mut done = 0u64;
    for i in 0..count {
        if acks.len() >= in_flight.max(1) {
            let ack: std::result::Result<_, PublishError> =
                acks.next().await.expect("acks pending");
            ack.map_err(Error::wrap(ErrorKind::Nats, subject.clone()))?;
            done += 1;
        }
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, format!("baseline:{i}").as_str());
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.clone())
            .await
            .map_err(Error::wrap(ErrorKind::Nats, subject.clone()))?;
        acks.push(async move { ack.await });
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(Error::wrap(ErrorKind::Nats, subject.clone()))?;
        done += 1;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let _ = js.delete_stream(&name).await;
    Ok(Baseline {
        publishes: done,
        payload_bytes: payload.len(),
        in_flight,
        per_sec: done as f64 / secs,
    })
}
