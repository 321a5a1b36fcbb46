//! `allot serve` as a library call: connect, create the streams, run the
//! gateway and the verifier until shutdown.

use std::future::Future;

use crate::client::connect;
use crate::error::Result;
use crate::gateway::{self, GatewayConfig};
use crate::streams::{StreamOptions, Streams};
use crate::verifier::{self, VerifierConfig};
use crate::wire::Subjects;

/// Which parts of the service this process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Gateway and verifier.
    #[default]
    All,
    /// Only answer requests and append tries.
    Gateway,
    /// Only decide tries and publish outcomes.
    Verifier,
}

/// Everything `allot serve` needs. Plain data with defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where NATS is.
    pub nats_url: String,
    /// Subject prefix, stream and bucket names.
    pub subjects: Subjects,
    /// Gateway, verifier, or both.
    pub role: Role,
    /// How missing streams are created.
    pub streams: StreamOptions,
    /// Gateway settings.
    pub gateway: GatewayConfig,
    /// Verifier settings.
    pub verifier: VerifierConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats_url: "nats://127.0.0.1:4222".into(),
            subjects: Subjects::default(),
            role: Role::All,
            streams: StreamOptions::default(),
            gateway: GatewayConfig::default(),
            verifier: VerifierConfig::default(),
        }
    }
}

/// Runs the service until `shutdown` completes, then stops taking bids,
/// finishes in-flight work, flushes and closes the snapshot.
pub async fn run(mut config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    // The gateway watches the verifier's progress through its consumer.
    config.gateway.verifier_consumer = config.verifier.consumer.clone();
    let client = connect(&config.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let streams = Streams::ensure(js, config.subjects.clone(), &config.streams).await?;
    tracing::info!(url = %config.nats_url, role = ?config.role, "allot serving");

    // One shutdown signal, seen by both halves. It fires on `shutdown`, or
    // when either half fails, so that the other half stops too and the
    // process exits with the error instead of running on half-alive.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let signal = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let stop_on_error = |result: Result<()>| {
        if result.is_err() {
            let _ = stop.send(());
        }
        result
    };
    let gateway = async {
        if config.role == Role::Verifier {
            return Ok(());
        }
        let gateway = gateway::run(
            client.clone(),
            streams.clone(),
            config.gateway.clone(),
            signal(stopped.clone()),
        );
        stop_on_error(gateway.await)
    };
    let verifier = async {
        if config.role == Role::Gateway {
            return Ok(());
        }
        let verifier = verifier::run(
            streams.clone(),
            config.verifier.clone(),
            signal(stopped.clone()),
        );
        stop_on_error(verifier.await)
    };
    let trigger = async {
        tokio::select! {
            _ = shutdown => {
                tracing::info!("shutting down");
                let _ = stop.send(());
            }
            _ = signal(stopped.clone()) => {}
        }
    };
    let (_, gateway, verifier) = tokio::join!(trigger, gateway, verifier);
    let flushed = client.flush().await;
    gateway?;
    verifier?;
    flushed.map_err(|e| crate::error::Error::with_source(crate::error::ErrorKind::Nats, e))?;
    Ok(())
}
