//! Reading and writing tables: the I/O contract every tool shares.
//!
//! * Inputs are paths or `-` (stdin). The format is detected from the content: Parquet, Arrow
//!   IPC file or stream, JSON Lines (optionally gzip'd); CSV by the `.csv` extension.
//! * Outputs go to `-o PATH` in the format its extension names, or to stdout as an Arrow IPC
//!   stream so that `qrm-a | qrm-b` streams; on a terminal, stdout gets a readable table.
//! * Files are written to a temporary file beside the target and renamed when complete, so a
//!   crash or Ctrl-C never leaves a truncated file that looks finished.

use std::io::{Cursor, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Error, Result};

/// Table formats qrm reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Apache Parquet (zstd).
    Parquet,
    /// Arrow IPC file (Feather v2).
    Arrow,
    /// Arrow IPC stream: what tools write to a pipe.
    Stream,
    /// JSON Lines, one object per row.
    Jsonl,
    /// Comma-separated values (list columns are not representable).
    Csv,
    /// A readable table for people; not meant to be parsed.
    Table,
}

impl Format {
    /// The format a path's extension names, if any.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let extension = name.rsplit('.').next()?;
        match extension {
            "parquet" | "pq" => Some(Format::Parquet),
            "arrow" | "feather" | "ipc" => Some(Format::Arrow),
            "arrows" => Some(Format::Stream),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "txt" => Some(Format::Table),
            _ => None,
        }
    }
}

/// How to read an input table.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Skip malformed JSON lines (counted in [`ReadReport::skipped_lines`]) instead of failing.
    pub skip_bad: bool,
}

/// What reading found besides the table itself.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// 1-based numbers of JSON lines skipped under `skip_bad`.
    pub skipped_lines: Vec<usize>,
}

/// The display name of an input: `<stdin>` for `-`.
pub fn display_path(path: &Path) -> PathBuf {
    if path == Path::new("-") {
        PathBuf::from("<stdin>")
    } else {
        path.to_owned()
    }
}

/// Reads all bytes of a path or `-`, un-gzipping when the content is gzip'd.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let shown = display_path(path);
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&shown, e))?;
    } else {
        bytes = fs_err::read(path).map_err(|e| Error::io(&shown, e))?;
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut decoded)
            .map_err(|e| Error::io(&shown, e))?;
        bytes = decoded;
    }
    Ok(bytes)
}

/// Reads a table from a path or `-`, detecting its format.
pub fn read_table(path: &Path) -> Result<DataFrame> {
    read_table_with(path, &ReadOptions::default()).map(|(frame, _)| frame)
}

/// Reads a table with options, also returning what was skipped.
pub fn read_table_with(path: &Path, options: &ReadOptions) -> Result<(DataFrame, ReadReport)> {
    let shown = display_path(path);
    let bytes = read_bytes(path)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::EmptyInput { path: shown });
    }
    let table_error = |e| Error::table(&shown, e);
    let mut report = ReadReport::default();
    let frame = if bytes.starts_with(b"PAR1") {
        ParquetReader::new(Cursor::new(bytes))
            .finish()
            .map_err(table_error)?
    } else if bytes.starts_with(b"ARROW1") {
        IpcReader::new(Cursor::new(bytes))
            .finish()
            .map_err(table_error)?
    } else if bytes.starts_with(&[0xff, 0xff, 0xff, 0xff]) {
        IpcStreamReader::new(Cursor::new(bytes))
            .finish()
            .map_err(table_error)?
    } else if Format::from_extension(path) == Some(Format::Csv) {
        std::str::from_utf8(&bytes).map_err(|e| Error::Format {
            path: shown.clone(),
            message: format!("not UTF-8 text (byte {})", e.valid_up_to()),
        })?;
        CsvReadOptions::default()
            .with_has_header(true)
            .into_reader_with_file_handle(Cursor::new(bytes))
            .finish()
            .map_err(table_error)?
    } else {
        let clean = clean_json_lines(&bytes, &shown, options, &mut report)?;
        if clean.is_empty() {
            return Err(Error::EmptyInput { path: shown });
        }
        JsonReader::new(Cursor::new(clean))
            .with_json_format(JsonFormat::JsonLines)
            .infer_schema_len(None)
            .finish()
            .map_err(table_error)?
    };
    Ok((frame, report))
}

/// Validates JSON Lines one line at a time so errors name the line; drops blank lines and,
/// under `skip_bad`, malformed ones.
fn clean_json_lines(
    bytes: &[u8],
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Vec<u8>> {
    let mut clean = Vec::with_capacity(bytes.len());
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_number = index + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let problem = match std::str::from_utf8(line) {
            Err(e) => Some(format!("not UTF-8 text (byte {})", e.valid_up_to())),
            Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(_)) => None,
                Ok(_) => Some("expected a JSON object".to_owned()),
                Err(e) => Some(format!("malformed JSON: {e}")),
            },
        };
        match problem {
            None => {
                clean.extend_from_slice(line);
                clean.push(b'\n');
            }
            Some(_) if options.skip_bad => report.skipped_lines.push(line_number),
            Some(message) => {
                return Err(Error::BadLine {
                    path: path.to_owned(),
                    line: line_number,
                    message: format!("{message} (use --skip-bad to skip such lines)"),
                })
            }
        }
    }
    Ok(clean)
}

/// Where and how to write an output table.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Target file; `None` or `-` means stdout.
    pub path: Option<PathBuf>,
    /// Overrides the format the extension (or stdout) implies.
    pub format: Option<Format>,
}

impl Output {
    pub fn new(path: Option<PathBuf>, format: Option<Format>) -> Self {
        Self { path, format }
    }

    fn file(&self) -> Option<&Path> {
        self.path.as_deref().filter(|p| *p != Path::new("-"))
    }

    /// The format this output will be written in.
    pub fn resolved_format(&self) -> Result<Format> {
        if let Some(format) = self.format {
            return Ok(format);
        }
        match self.file() {
            Some(path) => Format::from_extension(path).ok_or_else(|| {
                Error::Usage(format!(
                    "{}: unknown output extension; use .parquet, .arrow, .jsonl, .csv or --format",
                    path.display()
                ))
            }),
            None if std::io::stdout().is_terminal() => Ok(Format::Table),
            None => Ok(Format::Stream),
        }
    }

    /// Writes the frame, atomically for files.
    pub fn write(&self, frame: &mut DataFrame) -> Result<()> {
        let format = self.resolved_format()?;
        match self.file() {
            Some(path) => write_atomic(path, |file| encode(frame, format, file, path)),
            None => {
                let stdout = std::io::stdout();
                let mut lock = std::io::BufWriter::new(stdout.lock());
                let shown = Path::new("<stdout>");
                encode(frame, format, &mut lock, shown)?;
                lock.flush().map_err(|e| Error::io(shown, e))
            }
        }
    }
}

/// Writes a file through a temporary sibling that is renamed into place only on success.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<()>,
) -> Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(&directory)
        .map_err(|e| Error::io(&directory, e))?;
    {
        let mut buffered = std::io::BufWriter::new(temporary.as_file());
        write(&mut buffered)?;
        buffered.flush().map_err(|e| Error::io(path, e))?;
    }
    temporary
        .as_file()
        .sync_all()
        .map_err(|e| Error::io(path, e))?;
    temporary
        .persist(path)
        .map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Encodes a frame in a format onto a writer.
pub fn encode(
    frame: &mut DataFrame,
    format: Format,
    writer: &mut impl Write,
    path: &Path,
) -> Result<()> {
    let table_error = |e| Error::table(path, e);
    match format {
        Format::Parquet => {
            ParquetWriter::new(writer)
                .with_compression(ParquetCompression::Zstd(None))
                .finish(frame)
                .map_err(table_error)?;
        }
        Format::Arrow => IpcWriter::new(writer).finish(frame).map_err(table_error)?,
        Format::Stream => IpcStreamWriter::new(writer)
            .finish(frame)
            .map_err(table_error)?,
        Format::Jsonl => JsonWriter::new(writer)
            .with_json_format(JsonFormat::JsonLines)
            .finish(frame)
            .map_err(table_error)?,
        Format::Csv => CsvWriter::new(writer)
            .include_header(true)
            .finish(frame)
            .map_err(table_error)?,
        Format::Table => {
            writeln!(writer, "{}", render_table(frame)).map_err(|e| Error::io(path, e))?
        }
    }
    Ok(())
}

/// A readable rendering of a frame: every row, floats as they are, long strings cut.
pub fn render_table(frame: &DataFrame) -> String {
    // polars' formatter is configured through environment variables.
    let rows = frame.height().max(1).to_string();
    let columns = frame.width().max(1).to_string();
    for (key, value) in [
        ("POLARS_FMT_MAX_ROWS", rows.as_str()),
        ("POLARS_FMT_MAX_COLS", columns.as_str()),
        ("POLARS_FMT_STR_LEN", "40"),
        ("POLARS_FMT_TABLE_HIDE_DATAFRAME_SHAPE_INFORMATION", "1"),
        ("POLARS_FMT_TABLE_HIDE_COLUMN_DATA_TYPES", "1"),
    ] {
        std::env::set_var(key, value);
    }
    format!("{frame}")
}
