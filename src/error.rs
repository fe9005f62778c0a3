//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in tilestream. No backend type leaks out of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents are not a valid dataset.
    #[error("{path}: {message}")]
    Format {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A syntax or type error in an expression, with the byte position in its text.
    #[error("expression error at position {position}: {message}: {excerpt}", excerpt = excerpt(text, *position))]
    Expr {
        /// The expression's text (empty when built in code).
        text: String,
        /// Byte offset of the problem.
        position: usize,
        /// What is wrong.
        message: String,
    },
    /// A query that does not make sense for the dataset (unknown column, wrong type, ...).
    #[error("{0}")]
    Plan(String),
    /// A device that is not compiled in or not present on this machine.
    #[error("device {device} is not available: {reason}")]
    BackendUnavailable {
        /// The device asked for.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A device failed while running a query (driver error, lost device, out of memory).
    #[error("device {device} failed: {message}")]
    Device {
        /// The device.
        device: String,
        /// What went wrong.
        message: String,
    },
    /// A device had too little memory for a query's buffers. The streaming driver retries
    /// with smaller tiles before it reports this.
    #[error("device {device} is out of memory: {message}")]
    DeviceOutOfMemory {
        /// The device.
        device: String,
        /// What could not be allocated.
        message: String,
    },
    /// A generated kernel did not compile on a device (a bug in tilestream: please report it).
    #[error("device {device} could not compile the query's kernel: {message}")]
    Compile {
        /// The device.
        device: String,
        /// The compiler's message.
        message: String,
    },
    /// An operation the chosen device cannot run.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A query with no finite value where one is needed (e.g. a histogram range).
    #[error("{0}")]
    NoData(String),
    /// The run was cancelled (e.g. by SIGINT).
    #[error("interrupted")]
    Interrupted,
    /// A fitted-state file that cannot be used.
    #[error("{path}: {message}")]
    Fit {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format { path: path.into(), message: message.into() }
    }
    pub(crate) fn plan(message: impl Into<String>) -> Self {
        Error::Plan(message.into())
    }
}

/// One line showing where in `text` the byte `position` is: the character there in
/// brackets, with up to 30 bytes of context on each side (`f0 > [>] 1`).
fn excerpt(text: &str, position: usize) -> String {
    if text.is_empty() {
        return String::new();
    }
    let pos = (0..=position.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let next = text[pos..].chars().next().map_or(pos, |c| pos + c.len_utf8());
    let start = (0..=pos.saturating_sub(30)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let end = (next.min(text.len())..=(next + 30).min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    let one_line = |s: &str| s.replace(['\n', '\r', '\t'], " ");
    format!(
        "{}{}[{}]{}{}",
        if start > 0 { "..." } else { "" },
        one_line(&text[start..pos]),
        one_line(&text[pos..next]),
        one_line(&text[next..end]),
        if end < text.len() { "..." } else { "" }
    )
}
