//! The client side of the socket protocol, used by the CLI commands. Keeps
//! connect errors apart so the CLI can say "agent not running" (69) or
//! "permission denied" (77).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens at the socket path.
    Unreachable(PathBuf, io::Error),
    /// The socket exists but this user may not open it.
    PermissionDenied(PathBuf),
    /// The connection broke or timed out.
    Io(io::Error),
    /// The agent answered something that is not a JSON object line.
    BadAnswer(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(p, e) => write!(
                f,
                "the agent is not reachable at {} ({e}); is shop-auth-agent running?",
                p.display()
            ),
            ClientError::PermissionDenied(p) => write!(
                f,
                "permission denied opening {}; POS users need to be in the socket's group",
                p.display()
            ),
            ClientError::Io(e) => write!(f, "talking to the agent: {e}"),
            ClientError::BadAnswer(m) => write!(f, "the agent answered something unexpected: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A connection to the agent, for one or more requests.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_owned()),
            _ => ClientError::Unreachable(path.to_owned(), e),
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(ClientError::Io)?;
        let writer = stream.try_clone().map_err(ClientError::Io)?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request line and reads its answer.
    pub fn ask(&mut self, request: &str) -> Result<serde_json::Value, ClientError> {
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(ClientError::Io)?;
        let mut line = String::new();
        // An answer is small; a much longer line means something else talks there.
        let n = (&mut self.reader)
            .take(1 << 20)
            .read_line(&mut line)
            .map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            )));
        }
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(ClientError::BadAnswer(format!(
                "{} bytes that are not a JSON object",
                line.len()
            ))),
        }
    }
}

use std::io::Read;
