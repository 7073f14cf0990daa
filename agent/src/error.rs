//! The agent's error type.

use std::path::PathBuf;
use std::time::Duration;

use crate::host::ExitStatus;

/// Everything that can go wrong in the agent's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program of a command does not exist on the host. Distinct from a non-zero exit: a
    /// missing sentinel command must never read as "reboot required".
    #[error("command not found on the host: {program}")]
    CommandNotFound {
        /// The program (argv\[0\]).
        program: String,
    },
    /// The command ran longer than its timeout and was killed.
    #[error("command {program} timed out after {timeout:?}")]
    CommandTimedOut {
        /// The program (argv\[0\]).
        program: String,
        /// The timeout it exceeded.
        timeout: Duration,
    },
    /// The command ran and failed (non-zero exit or killed by a signal).
    #[error("command {command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, for humans.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its standard error.
        stderr: String,
    },
    /// The command could not be started at all.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program (argv\[0\]).
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file operation on the host failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted (read, write, ...).
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Output of a host tool or a host file could not be understood.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was parsed.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// The request is not possible on this host or would break a rule (holds, pinned
    /// Kubernetes packages, an unsupported reboot method, an unknown OS).
    #[error("refused: {0}")]
    Refused(String),
    /// The persisted agent state could not be read or written.
    #[error("agent state {path}: {detail}")]
    State {
        /// The host path of the state file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A call to the coordinator failed.
    #[error("coordinator: {0}")]
    Rpc(#[from] Box<tonic::Status>),
    /// The connection to the coordinator could not be made.
    #[error("coordinator connection: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A connection to the coordinator failed before gRPC began (TCP, TLS, the CA bundle).
    #[error("connecting to the coordinator: {0}")]
    Connect(String),
}

impl Error {
    /// Whether this is a "file does not exist" error.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// Helper to build an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Helper to build an [`Error::Parse`].
    pub(crate) fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// The agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
