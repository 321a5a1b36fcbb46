//! The gateway's intake: takes requests off NATS, and either hands each to
//! the service's runtime with one of the gateway's slots or refuses it at
//! once, `unavailable` with a retry hint.
//!
//! Under overload the runtime's worker threads are busy deciding bids. A
//! loop on those threads takes requests only as fast as they are served,
//! so the excess waits where nothing looks at its age (the client
//! library's subscription buffer, the socket, nats-server's outbound
//! buffer) and is answered seconds late, or never. The intake therefore
//! has a thread and a connection of its own: it does little per request,
//! so the OS runs it promptly, and what it cannot place is refused while
//! refusing is still useful. A request handed on that then waits in the
//! runtime's queue longer than [`super::GatewayConfig::max_queued`] is
//! refused too, before any work is done for it (`Gateway::handle`).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::{oneshot, Semaphore};

use super::{Gateway, DRAIN_LIMIT};
use crate::error::{Error, ErrorKind, Result};
use crate::observe::Endpoint;
use crate::wire::names;

/// A running intake; [`Intake::stop`] ends it.
pub(super) struct Intake {
    stop: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

impl Intake {
    /// Connects to `url` on a thread of its own and subscribes to every
    /// endpoint; returns once requests are taken, or with why they cannot
    /// be.
    pub(super) async fn start(
        url: String,
        gateway: Arc<Gateway>,
        permits: Arc<Semaphore>,
    ) -> Result<Intake> {
        let thread_error = |e: std::io::Error| {
            Error::with_source(ErrorKind::Setup, e).context("the gateway's intake thread")
        };
        let own = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(thread_error)?;
        let (ready, started) = oneshot::channel();
        let (stop, stopped) = oneshot::channel();
        let (finished, done) = oneshot::channel();
        // Admitted requests start on the service's runtime straight from
        // this thread. Not through a task there that starts them: such a
        // task waits its turn among the requests in hand, and so takes
        // them only as fast as they are served (measured under overload:
        // about half the bids decided).
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("allot-intake".into())
            .spawn(move || {
                own.block_on(serve(url, gateway, permits, runtime, ready, stopped));
                let _ = finished.send(());
            })
            .map_err(thread_error)?;
        match started.await {
            Ok(Ok(())) => Ok(Intake { stop, done }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::new(
                ErrorKind::Setup,
                "the gateway's intake thread ended while starting",
            )),
        }
    }

    /// Stops taking new requests, hands on or refuses those already
    /// buffered (for at most [`DRAIN_LIMIT`]), and returns once the intake
    /// has flushed its refusals.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// The intake's loop, on its own thread and runtime, until `stop`.
async fn serve(
    url: String,
    gateway: Arc<Gateway>,
    permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    ready: oneshot::Sender<Result<()>>,
    stop: oneshot::Receiver<()>,
) {
    let subscribed = async {
        let client = crate::client::connect(&url).await?;
        let subjects = &gateway.streams.subjects;
        let mut requests = futures::stream::SelectAll::new();
        for endpoint in Endpoint::ALL {
            let subject = subjects.request_wildcard(endpoint.kind());
            let sub = client
                .queue_subscribe(subject.clone(), names::GATEWAY_QUEUE.into())
                .await
                .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
            requests.push(sub);
        }
        // Subscribed only once the server has the subscriptions.
        crate::client::flush(&client).await?;
        Ok::<_, Error>((client, requests))
    };
    let (client, mut requests) = match subscribed.await {
        Ok(subscribed) => {
            let _ = ready.send(Ok(()));
            subscribed
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tracing::info!(
        prefix = gateway.streams.subjects.prefix(),
        "gateway serving requests"
    );
    tokio::pin!(stop);
    // Once stopping: until when buffered requests are still taken.
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        let message = tokio::select! {
            _ = &mut stop, if draining.is_none() => {
                // Stop new deliveries; what is already buffered is still
                // taken. Bounded: with NATS gone, a drain never completes
                // and the subscriptions never end.
                let drains = futures::future::join_all(requests.iter_mut().map(|s| s.drain()));
                let _ = tokio::time::timeout(DRAIN_LIMIT, drains).await;
                draining = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                continue;
            }
            _ = tokio::time::sleep_until(draining.unwrap_or_else(tokio::time::Instant::now)), if draining.is_some() => break,
            message = requests.next() => message,
        };
        let Some(message) = message else { break };
        let received = Instant::now();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            gateway.overloaded(&client, message, received).await;
            continue;
        };
        let gateway = gateway.clone();
        // Boxed: the task then holds a pointer, where tokio would copy the
        // whole future (3.4 kB in a release build; `Gateway::handle` keeps
        // its rare large arms boxed) into the task and over it again as the
        // task finishes.
        runtime.spawn(Box::pin(async move {
            gateway.handle(message, received).await;
            drop(permit);
        }));
    }
    if let Err(e) = crate::client::flush(&client).await {
        tracing::warn!(error = %e, "cannot flush the intake's last refusals");
    }
}
