//! `allot serve` as a library call: connect, create the streams, run the
//! gateway and the verifier until shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use tokio::sync::watch;

use crate::client::{connect, flush};
use crate::error::{Error, ErrorKind, Result};
use crate::gateway::{self, GatewayConfig};
use crate::identity;
use crate::observe::{dashboard, http, micro, Metrics};
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
    /// Where to serve the HTTP page (`/metrics`, `/healthz`, `/readyz`),
    /// if anywhere.
    pub http_addr: Option<SocketAddr>,
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
            http_addr: None,
        }
    }
}

/// Runs the service until `shutdown` completes, then stops taking bids,
/// finishes in-flight work, flushes and closes the snapshot.
pub async fn run(mut config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    // The gateway watches the verifier's progress through its consumer.
    config.gateway.verifier_consumer = config.verifier.consumer.clone();
    let role = config.role;
    // Bound first, so that a taken address fails the start, not a scrape.
    let http_listener = match config.http_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            Error::with_source(ErrorKind::Config, e)
                .context(format!("cannot serve --http-addr / --metrics-addr {addr}"))
        })?),
        None => None,
    };
    let client = connect(&config.nats_url).await?;
    if role != Role::Verifier && config.gateway.identity.mode == identity::Mode::Bound {
        let version = client.server_info().version;
        if !identity::server_stamps_identity(&version) {
            return Err(Error::new(ErrorKind::Config, format!(
                "--identity bound needs a nats-server that stamps Nats-Request-Info itself (2.11.15, 2.12.6 or newer; CVE-2026-33223), and this one is {version}"
            ),
            ));
        }
    }
    let js = async_nats::jetstream::new(client.clone());
    let streams = Streams::ensure(js, config.subjects.clone(), &config.streams).await?;
    tracing::info!(url = %crate::client::redact(&config.nats_url), role = ?config.role, "allot serving");

    // One shutdown signal, seen by both halves. It fires on `shutdown`, or
    // when either half fails, so that the other half stops too and the
    // process exits with the error instead of running on half-alive.
    let (stop, stopped) = watch::channel(());
    let signal = |mut rx: watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let metrics = Arc::new(Metrics::default());
    let registration = micro::Registration {
        subjects: config.subjects.clone(),
        serves_requests: role != Role::Verifier,
        metadata: HashMap::from([
            ("role".to_string(), format!("{role:?}").to_lowercase()),
            ("prefix".to_string(), config.subjects.prefix().to_string()),
            (
                micro::LOG_FORMAT.to_string(),
                crate::wire::RECORD_FORMAT.to_string(),
            ),
        ]),
    };
    let micro = tokio::spawn(micro::serve(
        client.clone(),
        registration,
        metrics.clone(),
        signal(stopped.clone()),
    ));
    let page = http_listener.map(|listener| {
        let dashboard = Arc::new(dashboard::Dashboard::new(
            streams.clone(),
            config.verifier.consumer.clone(),
            metrics.clone(),
            format!("{role:?}").to_lowercase(),
        ));
        tokio::spawn(dashboard.clone().run(signal(stopped.clone())));
        let page = Arc::new(http::Page {
            metrics: metrics.clone(),
            lag: http::Lag {
                streams: streams.clone(),
                consumer: config.verifier.consumer.clone(),
            },
            health: http::Health {
                streams: streams.clone(),
                metrics: metrics.clone(),
                verifies: role != Role::Gateway,
            },
            dashboard: Some(dashboard),
        });
        tokio::spawn(http::serve(listener, page, signal(stopped.clone())))
    });
    // Each half runs as its own task, on its own connection: a connection
    // is served by one task in the client, and the gateway's requests and
    // the verifier's deliveries and acks then use both cores.
    let gateway = {
        let (client, streams, metrics) = (client.clone(), streams.clone(), metrics.clone());
        let (stop, url) = (stop.clone(), config.nats_url.clone());
        let (config, stopped) = (config.gateway.clone(), stopped.clone());
        tokio::spawn(async move {
            if role == Role::Verifier {
                return Ok(());
            }
            let result = gateway::run(
                &url,
                client.clone(),
                streams,
                config,
                metrics,
                signal(stopped),
            )
            .await;
            // The last replies; in this task, so that it overlaps the
            // verifier's own stopping.
            let flushed = flush(&client).await;
            stop_on_error(&stop, result)?;
            flushed
        })
    };
    let verifier = {
        let (stopped, stop, metrics) = (stopped.clone(), stop.clone(), metrics.clone());
        let (url, subjects) = (config.nats_url.clone(), config.subjects.clone());
        let (streams_config, config) = (config.streams.clone(), config.verifier.clone());
        tokio::spawn(async move {
            if role == Role::Gateway {
                return Ok(());
            }
            let result = async {
                let client = connect(&url).await?;
                let js = async_nats::jetstream::new(client.clone());
                let streams = Streams::ensure(js, subjects, &streams_config).await?;
                let result = verifier::run(streams, config, metrics, signal(stopped)).await;
                let flushed = flush(&client).await;
                result?;
                flushed
            };
            stop_on_error(&stop, result.await)
        })
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
    // Both stop on the same signal; a failure to answer stats is no
    // failure of the service.
    if let Ok(Err(e)) = micro.await {
        tracing::warn!(error = %e, "micro service answers stopped");
    }
    if let Some(page) = page {
        let _ = page.await;
    }
    gateway.map_err(panicked)??;
    verifier.map_err(panicked)??;
    Ok(())
}

/// Stops the other half when one fails, so that the process exits with
/// the error instead of running on half-alive.
fn stop_on_error(stop: &watch::Sender<()>, result: Result<()>) -> Result<()> {
    if result.is_err() {
        let _ = stop.send(());
    }
    result
}

/// A half that panicked: reported as an error of the service.
fn panicked(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Setup, format!("service task failed: {e}"))
}
