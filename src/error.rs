//! The library's error type. Every message names the file and, where it applies, the row or line
//! and the column, so a user can find the bad cell without reading the source.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in qrm's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Table {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },

    #[error("{path}: the input is empty")]
    EmptyInput { path: PathBuf },

    #[error("{path}: the input has columns ({columns}) but no rows")]
    NoRows { path: PathBuf, columns: String },

    #[error("{path}: missing column `{column}` (columns present: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },

    #[error("{path}: column `{column}` has type {found}, expected {expected}")]
    ColumnType {
        path: PathBuf,
        column: String,
        expected: String,
        found: String,
    },

    #[error("{path}: row {row}, column `{column}`: {message}")]
    BadValue {
        path: PathBuf,
        row: usize,
        column: String,
        message: String,
    },

    #[error("{path}: line {line}: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },

    #[error("{0}")]
    Usage(String),

    #[error("model: {0}")]
    Model(String),

    #[error("server: {0}")]
    Server(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// `BadValue` for a cell, with the row counted from 1 as editors and spreadsheets do.
    pub fn bad_value(
        path: impl Into<PathBuf>,
        row_index: usize,
        column: &str,
        message: impl Into<String>,
    ) -> Self {
        Error::BadValue {
            path: path.into(),
            row: row_index + 1,
            column: column.to_owned(),
            message: message.into(),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a polars error with the path it concerns.
    pub fn table(path: impl Into<PathBuf>, source: polars::error::PolarsError) -> Self {
        Error::Table {
            path: path.into(),
            source,
        }
    }

    /// True when the error is a closed pipe on output, which tools treat as a normal exit.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::BrokenPipe,
            Error::Table { source, .. } => source.to_string().contains("Broken pipe"),
            _ => false,
        }
    }
}
