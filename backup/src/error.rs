//! The one error type of the tool: every failure ends the command with a
//! message saying what was being done.

use std::io;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("server: {0}")]
    Server(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid(message.into())
    }
}

impl From<postgres::Error> for Error {
    fn from(error: postgres::Error) -> Error {
        // The crate's own Display of a server error is only "db error": the
        // message, detail and hint are what the user needs.
        let text = match error.as_db_error() {
            Some(db) => {
                let mut text = format!("{}: {}", db.severity(), db.message());
                if let Some(detail) = db.detail() {
                    text.push_str(&format!(" (DETAIL: {detail})"));
                }
                if let Some(hint) = db.hint() {
                    text.push_str(&format!(" (HINT: {hint})"));
                }
                text
            }
            None => error.to_string(),
        };
        Error::Server(text)
    }
}

/// Adds "what was being done, on which path" to I/O errors.
pub trait IoContext<T> {
    fn at(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: format!("cannot {what} {}", path.display()),
            source,
        })
    }
}
