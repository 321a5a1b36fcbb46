//! A private `nats-server` with the service running in-process, for
//! `allot demo` and `allot loadtest --embedded`. Stopping it stops both.

use crate::client::{connect, AllotClient};
use crate::nats_server::NatsServer;
use crate::service::{self, Config};
use crate::verifier::VerifierConfig;
use crate::wire::Subjects;

pub struct Embedded {
    /// A client of the private service.
    pub client: AllotClient,
    server: NatsServer,
    stop: tokio::sync::oneshot::Sender<()>,
    service: tokio::task::JoinHandle<crate::error::Result<()>>,
    /// The verifier's snapshot; removed on drop.
    _data_dir: tempfile::TempDir,
}

impl Embedded {
    pub async fn start(subjects: Subjects) -> anyhow::Result<Embedded> {
        eprintln!("starting a private nats-server on 127.0.0.1 ...");
        // Starting the server waits on the child process: keep that off the
        // async threads.
        let server = tokio::task::spawn_blocking(NatsServer::start).await??;
        let data_dir = tempfile::Builder::new().prefix("allot-").tempdir()?;
        let config = Config {
            nats_url: server.url().to_string(),
            subjects: subjects.clone(),
            verifier: VerifierConfig {
                data_dir: data_dir.path().to_path_buf(),
                ..VerifierConfig::default()
            },
            ..Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(service::run(config, async {
            let _ = stopped.await;
        }));
        let client = AllotClient::new(connect(server.url()).await?, subjects);
        Ok(Embedded {
            client,
            server,
            stop,
            service,
            _data_dir: data_dir,
        })
    }

    /// Stops the service, then the server.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.service.await??;
        drop(self.server);
        Ok(())
    }
}
