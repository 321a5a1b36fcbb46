//! The crate's error: a kind to branch on, a line of context, and the
//! underlying cause, in the manner of async-nats' `Error<Kind>`.

use std::fmt;

/// What went wrong, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// NATS could not be reached.
    Connect,
    /// A stream, consumer or bucket could not be created or read.
    Setup,
    /// A NATS request, publish or ack failed.
    Nats,
    /// The SQLite snapshot failed.
    Snapshot,
    /// A reply or event did not have the expected shape.
    Protocol,
    /// Waited too long for an answer.
    Timeout,
    /// The local `nats-server` could not be found or started.
    NatsServer,
    /// Bad configuration or arguments.
    Config,
    /// The log and the published outcomes disagree.
    Integrity,
    /// Another verifier has taken the lease.
    Superseded,
    /// JetStream refused an outcome: another verifier's fence is newer.
    Fenced,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Connect => "cannot reach NATS",
            ErrorKind::Setup => "cannot set up JetStream",
            ErrorKind::Nats => "NATS request failed",
            ErrorKind::Snapshot => "snapshot failed",
            ErrorKind::Protocol => "unexpected message",
            ErrorKind::Timeout => "timed out",
            ErrorKind::NatsServer => "cannot run nats-server",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Integrity => "log and outcomes disagree",
            ErrorKind::Superseded => "another verifier took over",
            ErrorKind::Fenced => "fenced out by another verifier",
        })
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with its kind, the thing it concerns, and its cause.
#[derive(Debug)]
pub struct Error {
    /// What went wrong, for callers that branch on it.
    kind: ErrorKind,
    /// What the failing operation was about (a URL, a stream, a file).
    context: Option<String>,
    /// The underlying error, if any.
    source: Option<Source>,
}

impl Error {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: Some(context.into()),
            source: None,
        }
    }

    pub fn with_source(kind: ErrorKind, source: impl Into<Source>) -> Self {
        Error {
            kind,
            context: None,
            source: Some(source.into()),
        }
    }

    /// A `map_err` adapter: wraps any error as `kind`, about `context`.
    pub fn wrap<E: Into<Source>>(
        kind: ErrorKind,
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> Error {
        let context = context.into();
        move |e| Error::with_source(kind, e).context(context)
    }

    /// Names what the error concerns.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.context) {
            (ErrorKind::Connect, Some(url)) => write!(f, "cannot reach NATS at {url}")?,
            (kind, Some(context)) => write!(f, "{kind} ({context})")?,
            (kind, None) => write!(f, "{kind}")?,
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::snapshot::SnapshotError> for Error {
    fn from(e: crate::snapshot::SnapshotError) -> Self {
        Error::with_source(ErrorKind::Snapshot, e)
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
