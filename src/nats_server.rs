//! A private `nats-server` child process on 127.0.0.1, for `allot demo`
//! and the tests: a free port, its own store directory, stopped on drop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// Oldest `nats-server` allot supports.
pub const MIN_VERSION: (u64, u64) = (2, 12);

const INSTALL_HINT: &str =
    "install it with scripts/install-nats-server, or set NATS_SERVER_BIN to its path";

/// Finds `nats-server`: `NATS_SERVER_BIN`, then `.tools/nats/bin/` in the
/// current directory, its parents or the project this binary was built
/// from, then `PATH`.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::new(
                ErrorKind::NatsServer,
                format!("NATS_SERVER_BIN={} is not a file", path.display()),
            ))
        };
    }
    let local = Path::new(".tools/nats/bin/nats-server");
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Some(found) = roots.iter().map(|r| r.join(local)).find(|p| p.is_file()) {
        return Ok(found);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NatsServer,
                format!("nats-server not found: {INSTALL_HINT}"),
            )
        })
}

/// Parses `major.minor` out of a version string such as `v2.15.1`.
pub fn parse_version(text: &str) -> Option<(u64, u64)> {
    let v = text.trim().trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A running `nats-server` child.
pub struct NatsServer {
    /// The running server; `None` after [`NatsServer::kill`].
    child: Option<Child>,
    /// Client URL, `nats://127.0.0.1:<port>`.
    url: String,
    /// JetStream store, ports file and log; removed on drop.
    dir: tempfile::TempDir,
    /// The `nats-server` executable.
    binary: PathBuf,
    /// A configuration file given with `-c`, if any.
    config: Option<PathBuf>,
    /// More arguments for every start (a cluster node's name and routes).
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free 127.0.0.1 port and a new
    /// temporary store.
    pub fn start() -> Result<NatsServer> {
        NatsServer::start_with(None)
    }

    /// As [`NatsServer::start`], with a configuration file (users and
    /// permissions, say); the address, port and store given here win over
    /// the file's.
    pub fn start_with_config(config: &Path) -> Result<NatsServer> {
        NatsServer::start_with(Some(config.to_path_buf()))
    }

    fn start_with(config: Option<PathBuf>) -> Result<NatsServer> {
        NatsServer::start_node(config, Vec::new())
    }

    fn start_node(config: Option<PathBuf>, extra: Vec<String>) -> Result<NatsServer> {
        let binary = find_binary()?;
        check_version(&binary)?;
        let dir = tempfile::Builder::new()
            .prefix("allot-nats-")
            .tempdir()
            .map_err(|e| Error::with_source(ErrorKind::NatsServer, e).context("temp dir"))?;
        let mut server = NatsServer {
            child: None,
            url: String::new(),
            dir,
            binary,
            config,
            extra,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server (as a crash would) without removing its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server as an operator would (SIGTERM, so it flushes its
    /// store), waiting up to 10 s before killing it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a stopped (or killed) server again, on the same port and
    /// store, as an operator restarting it would.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)
            .map_err(|e| Error::with_source(ErrorKind::NatsServer, e).context("ports dir"))?;
        let log_path = self.dir.path().join("nats-server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::with_source(ErrorKind::NatsServer, e).context("log file"))?;
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        // A restart keeps the port, so that clients reconnect by themselves.
        let port = self
            .url
            .rsplit(':')
            .next()
            .filter(|p| !p.is_empty())
            .unwrap_or("-1")
            .to_string();
        let child = command
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                log.try_clone()
                    .map_err(|e| Error::with_source(ErrorKind::NatsServer, e))?,
            )
            .spawn()
            .map_err(|e| {
                Error::with_source(ErrorKind::NatsServer, e)
                    .context(self.binary.display().to_string())
            })?;
        self.child = Some(child);
        let port = self.wait_for_port(&ports_dir, &log_path)?;
        self.url = format!("nats://127.0.0.1:{port}");
        Ok(())
    }

    /// Reads the client port from the ports file the server writes once it
    /// listens.
    fn wait_for_port(&mut self, ports_dir: &Path, log_path: &Path) -> Result<u16> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::new(
                        ErrorKind::NatsServer,
                        format!("nats-server exited ({status}): {}", tail(log_path)),
                    ));
                }
            }
            let port = std::fs::read_dir(ports_dir)
                .into_iter()
                .flatten()
                .flatten()
                .find_map(|entry| {
                    let text = std::fs::read_to_string(entry.path()).ok()?;
                    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
                    let url = json["nats"][0].as_str()?.to_string();
                    url.rsplit(':').next()?.parse::<u16>().ok()
                });
            if let Some(port) = port {
                return Ok(port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::new(
            ErrorKind::NatsServer,
            format!("nats-server did not start within 15 s: {}", tail(log_path)),
        ))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of `nats-server` nodes on 127.0.0.1, each with its
/// own store, routed to each other; killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes. Their route ports are picked free beforehand,
    /// since every node must name every other's at start.
    pub fn start(size: usize) -> Result<NatsCluster> {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_>>()?;
        let route_urls: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let nodes = routes
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let extra = vec![
                    "--name".into(),
                    format!("n{}", i + 1),
                    "--cluster_name".into(),
                    "allot".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".into(),
                    route_urls.join(","),
                ];
                NatsServer::start_node(None, extra)
            })
            .collect::<Result<_>>()?;
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated, as `--nats-url` takes them.
    pub fn urls(&self) -> String {
        let urls: Vec<&str> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }
}

/// A 127.0.0.1 port that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| {
        Error::with_source(ErrorKind::NatsServer, e).context("picking a route port")
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::with_source(ErrorKind::NatsServer, e).context("picking a route port"))
}

fn check_version(binary: &Path) -> Result<()> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| {
            Error::with_source(ErrorKind::NatsServer, e).context(binary.display().to_string())
        })?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let version = text.split_whitespace().last().unwrap_or_default();
    match parse_version(version) {
        Some(v) if v >= MIN_VERSION => Ok(()),
        _ => Err(Error::new(
            ErrorKind::NatsServer,
            format!(
                "{} reports {:?}; allot needs nats-server {}.{} or newer: {INSTALL_HINT}",
                binary.display(),
                text.trim(),
                MIN_VERSION.0,
                MIN_VERSION.1
            ),
        )),
    }
}

/// The end of the server's log, for error messages.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
