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
use sha2::{Digest, Sha256};

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
    /// A GitHub-flavoured Markdown table, for reports.
    Markdown,
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
            "md" => Some(Format::Markdown),
            _ => None,
        }
    }
}

/// How to read an input table.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Skip malformed JSON lines (counted in [`ReadReport::skipped_lines`]) instead of failing.
    pub skip_bad: bool,
    /// The tool offers `--skip-bad`, so an error may suggest it (tools without the flag must
    /// not).
    pub offers_skip_bad: bool,
}

impl ReadOptions {
    /// Options of a tool that has a `--skip-bad` flag, set to `skip_bad`.
    pub fn with_skip_bad(skip_bad: bool) -> Self {
        ReadOptions {
            skip_bad,
            offers_skip_bad: true,
        }
    }
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

/// Fails with [`Error::NoRows`] when a table has its columns but no rows (a header-only CSV, an
/// empty Parquet file): tools that must produce something from their input say so instead of
/// writing an empty result with exit 0.
pub fn require_rows(frame: &DataFrame, path: &Path) -> Result<()> {
    if frame.height() == 0 {
        let names: Vec<&str> = frame
            .get_column_names()
            .iter()
            .map(|name| name.as_str())
            .collect();
        return Err(Error::NoRows {
            path: display_path(path),
            columns: names.join(", "),
        });
    }
    Ok(())
}

/// Reads a table from a path or `-`, detecting its format.
pub fn read_table(path: &Path) -> Result<DataFrame> {
    read_table_with(path, &ReadOptions::default()).map(|(frame, _)| frame)
}

/// Reads a table with options, also returning what was skipped.
pub fn read_table_with(path: &Path, options: &ReadOptions) -> Result<(DataFrame, ReadReport)> {
    let bytes = read_bytes(path)?;
    parse_table(bytes, path, options)
}

/// A table and the hex sha256 of the bytes it was read from (un-gzipped), read once: for tools
/// that record what they read (`qrm-train`'s training record, resume checks) and must also take
/// `-`, which cannot be read twice.
pub fn read_table_hashed(path: &Path) -> Result<(DataFrame, String)> {
    let bytes = read_bytes(path)?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    let (frame, _) = parse_table(bytes, path, &ReadOptions::default())?;
    Ok((frame, digest))
}

/// Hex sha256 of a file's bytes (streamed).
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Hex sha256 of the parts joined by NUL bytes.
pub fn key_of(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    format!("{:x}", hasher.finalize())
}

/// Parses the bytes of a table read from `path` (named in errors), detecting the format.
fn parse_table(
    bytes: Vec<u8>,
    path: &Path,
    options: &ReadOptions,
) -> Result<(DataFrame, ReadReport)> {
    let shown = display_path(path);
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
                let hint = if options.offers_skip_bad {
                    " (use --skip-bad to skip such lines)"
                } else {
                    ""
                };
                return Err(Error::BadLine {
                    path: path.to_owned(),
                    line: line_number,
                    message: format!("{message}{hint}"),
                });
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
    if !directory.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "the output directory {} does not exist",
                    directory.display()
                ),
            ),
        ));
    }
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
    // Temporary files are created private (0600); the finished file gets the usual 0644, or the
    // mode of the file it replaces.
    let mode = fs_err::metadata(path)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::os::unix::fs::PermissionsExt::from_mode(0o644));
    temporary
        .as_file()
        .set_permissions(mode)
        .map_err(|e| Error::io(path, e))?;
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
        Format::Markdown => {
            write!(writer, "{}", render_markdown(frame)).map_err(|e| Error::io(path, e))?
        }
        Format::Table => {
            writeln!(writer, "{}", render_table(frame)).map_err(|e| Error::io(path, e))?
        }
    }
    Ok(())
}

/// A GitHub-flavoured Markdown table: floats to four decimals, nulls as `–`, lists as their
/// length, `|` in text escaped.
pub fn render_markdown(frame: &DataFrame) -> String {
    let names: Vec<&str> = frame
        .get_column_names()
        .iter()
        .map(|n| n.as_str())
        .collect();
    let mut out = format!(
        "| {} |\n|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for row in 0..frame.height() {
        let cells: Vec<String> = frame
            .columns()
            .iter()
            .map(|column| match column.get(row) {
                Ok(AnyValue::Null) | Err(_) => "–".to_owned(),
                Ok(AnyValue::Float64(value)) => format_float(value),
                Ok(AnyValue::Float32(value)) => format_float(f64::from(value)),
                Ok(AnyValue::String(text)) => text.replace('|', "\\|").replace('\n', " "),
                Ok(AnyValue::StringOwned(text)) => text.replace('|', "\\|").replace('\n', " "),
                Ok(AnyValue::List(items)) => format!("[{} items]", items.len()),
                Ok(value) => value.to_string(),
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

fn format_float(value: f64) -> String {
    if value.is_finite() && value != 0.0 && value.abs() < 1e-3 {
        format!("{value:.2e}")
    } else {
        format!("{value:.4}")
    }
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

/// Stacks tables vertically, matching columns by name: a column some tables lack is null in
/// their rows, and an all-null column (JSON's `null` type) takes the type the others give it.
/// Columns of one name must otherwise share a type; the error names the file and column.
pub fn concat_tables(tables: Vec<(DataFrame, PathBuf)>) -> Result<DataFrame> {
    let mut names: Vec<PlSmallStr> = Vec::new();
    let mut types: Vec<DataType> = Vec::new();
    for (frame, path) in &tables {
        for column in frame.columns() {
            let dtype = column.dtype();
            match names.iter().position(|name| name == column.name()) {
                None => {
                    names.push(column.name().clone());
                    types.push(dtype.clone());
                }
                Some(index) if types[index] == DataType::Null => types[index] = dtype.clone(),
                Some(index) if dtype != &DataType::Null && dtype != &types[index] => {
                    return Err(Error::ColumnType {
                        path: display_path(path),
                        column: column.name().to_string(),
                        expected: types[index].to_string(),
                        found: dtype.to_string(),
                    })
                }
                Some(_) => {}
            }
        }
    }
    let mut stacked: Option<DataFrame> = None;
    for (frame, path) in tables {
        let shown = display_path(&path);
        let mut columns = Vec::with_capacity(names.len());
        for (name, dtype) in names.iter().zip(&types) {
            columns.push(match frame.column(name) {
                Ok(column) if column.dtype() == dtype => column.clone(),
                Ok(column) => column.cast(dtype).map_err(|e| Error::table(&shown, e))?,
                Err(_) => Column::full_null(name.clone(), frame.height(), dtype),
            });
        }
        let aligned =
            DataFrame::new(frame.height(), columns).map_err(|e| Error::table(&shown, e))?;
        match stacked.as_mut() {
            None => stacked = Some(aligned),
            Some(top) => {
                top.vstack_mut(&aligned)
                    .map_err(|e| Error::table(&shown, e))?;
            }
        }
    }
    let mut stacked = stacked.unwrap_or_default();
    stacked.rechunk_mut();
    Ok(stacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_into_a_missing_directory_names_the_file_and_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("missing/scores.parquet");
        let error = write_atomic(&path, |_| Ok(())).unwrap_err().to_string();
        assert!(error.contains("missing/scores.parquet"), "{error}");
        assert!(error.contains("output directory"), "{error}");
        assert!(!path.exists());
    }

    fn sample_frame() -> DataFrame {
        DataFrame::new(
            3,
            vec![
                Column::new("question_id".into(), ["q1", "q1", "q2"]),
                Column::new("is_correct".into(), [true, false, true]),
                Column::new("reward".into(), [0.5f32, -1.25, 2.0]),
            ],
        )
        .unwrap()
    }

    fn write_bytes(directory: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = directory.join(name);
        fs_err::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn every_format_round_trips_through_detection() {
        let directory = tempfile::tempdir().unwrap();
        for (name, format) in [
            ("t.parquet", Format::Parquet),
            ("t.arrow", Format::Arrow),
            ("t.arrows", Format::Stream),
            ("t.jsonl", Format::Jsonl),
            ("t.csv", Format::Csv),
        ] {
            let path = directory.path().join(name);
            let mut frame = sample_frame();
            Output::new(Some(path.clone()), None)
                .write(&mut frame)
                .unwrap();
            let read = read_table(&path).unwrap();
            assert_eq!(read.height(), 3, "{name}");
            assert_eq!(
                read.column("question_id").unwrap().str().unwrap().get(2),
                Some("q2"),
                "{name}"
            );
            assert_eq!(
                read.column("is_correct").unwrap().bool().unwrap().get(1),
                Some(false),
                "{name}"
            );
            let reward = read
                .column("reward")
                .unwrap()
                .cast(&DataType::Float64)
                .unwrap();
            assert_eq!(
                reward.f64().unwrap().get(1),
                Some(-1.25),
                "{name} ({format:?})"
            );
        }
    }

    #[test]
    fn gzipped_json_lines_are_detected_by_content() {
        let directory = tempfile::tempdir().unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"{\"a\": 1}\n{\"a\": 2}\n").unwrap();
        // A misleading extension: detection goes by the gzip magic bytes, then by content.
        let path = write_bytes(directory.path(), "data.bin", &encoder.finish().unwrap());
        let frame = read_table(&path).unwrap();
        assert_eq!(frame.height(), 2);
    }

    #[test]
    fn malformed_json_line_is_named_and_can_be_skipped() {
        let directory = tempfile::tempdir().unwrap();
        let path = write_bytes(
            directory.path(),
            "bad.jsonl",
            b"{\"a\": 1}\n\n{\"a\": 2\n[1, 2]\n{\"a\": 3}\n",
        );
        let error = read_table(&path).unwrap_err().to_string();
        assert!(
            error.contains("bad.jsonl: line 3: malformed JSON"),
            "{error}"
        );

        // A tool without --skip-bad must not suggest it.
        assert!(!error.contains("--skip-bad"), "{error}");
        let offered = read_table_with(&path, &ReadOptions::with_skip_bad(false))
            .unwrap_err()
            .to_string();
        assert!(offered.contains("use --skip-bad"), "{offered}");

        let (frame, report) = read_table_with(&path, &ReadOptions::with_skip_bad(true)).unwrap();
        assert_eq!(frame.height(), 2);
        // Line 3 is truncated JSON, line 4 is an array rather than an object.
        assert_eq!(report.skipped_lines, vec![3, 4]);
    }

    #[test]
    fn a_header_only_table_has_no_rows() {
        let directory = tempfile::tempdir().unwrap();
        let path = write_bytes(directory.path(), "header.csv", b"question,response\n");
        let frame = read_table(&path).unwrap();
        assert_eq!(frame.height(), 0);
        let error = require_rows(&frame, &path).unwrap_err().to_string();
        assert!(
            error.contains("header.csv: the input has columns (question, response) but no rows"),
            "{error}"
        );
    }

    #[test]
    fn non_utf8_line_is_named() {
        let directory = tempfile::tempdir().unwrap();
        let path = write_bytes(
            directory.path(),
            "latin1.jsonl",
            b"{\"a\": \"ok\"}\n{\"a\": \"\xe9\"}\n",
        );
        let error = read_table(&path).unwrap_err().to_string();
        assert!(error.contains("line 2: not UTF-8"), "{error}");
    }

    #[test]
    fn empty_input_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = write_bytes(directory.path(), "empty.jsonl", b"\n  \n");
        let error = read_table(&path).unwrap_err();
        assert!(matches!(error, Error::EmptyInput { .. }), "{error}");
    }

    #[test]
    fn failed_write_leaves_no_file_behind() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.parquet");
        let result = write_atomic(&path, |_| Err(Error::Usage("interrupted".into())));
        assert!(result.is_err());
        let leftovers: Vec<_> = fs_err::read_dir(directory.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn written_files_are_world_readable_not_private_like_temporaries() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.jsonl");
        Output::new(Some(path.clone()), None)
            .write(&mut sample_frame())
            .unwrap();
        let mode = fs_err::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn markdown_rounds_floats_and_shows_nulls() {
        let frame = DataFrame::new(
            2,
            vec![
                Column::new("rm".into(), ["bt", "a|b"]),
                Column::new("auroc".into(), [Some(0.712345f64), None]),
                Column::new("p_value".into(), [0.00012f64, 0.5]),
            ],
        )
        .unwrap();
        assert_eq!(
            render_markdown(&frame),
            "| rm | auroc | p_value |\n|---|---|---|\n\
             | bt | 0.7123 | 1.20e-4 |\n\
             | a\\|b | – | 0.5000 |\n"
        );
    }

    #[test]
    fn unknown_output_extension_is_a_usage_error() {
        let output = Output::new(Some(PathBuf::from("scores.xlsx")), None);
        let error = output.resolved_format().unwrap_err().to_string();
        assert!(error.contains("unknown output extension"), "{error}");
    }

    #[test]
    fn concat_tables_aligns_columns_by_name_and_fills_nulls() {
        let top = sample_frame();
        let bottom = DataFrame::new(
            1,
            vec![
                Column::new("reward".into(), [7.0f32]),
                Column::new("rm".into(), ["q"]),
                Column::full_null("question_id".into(), 1, &DataType::Null),
            ],
        )
        .unwrap();
        let stacked = concat_tables(vec![
            (top, PathBuf::from("a.parquet")),
            (bottom, PathBuf::from("b.parquet")),
        ])
        .unwrap();
        assert_eq!(stacked.height(), 4);
        let names: Vec<&str> = stacked
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(names, ["question_id", "is_correct", "reward", "rm"]);
        assert_eq!(stacked.column("rm").unwrap().null_count(), 3);
        assert_eq!(
            stacked.column("question_id").unwrap().str().unwrap().get(3),
            None
        );
        let reward = stacked.column("reward").unwrap().f32().unwrap();
        assert_eq!(reward.get(3), Some(7.0));
    }

    #[test]
    fn concat_tables_names_the_file_with_a_conflicting_type() {
        let top = sample_frame();
        let bottom = DataFrame::new(1, vec![Column::new("reward".into(), ["high"])]).unwrap();
        let error = concat_tables(vec![
            (top, PathBuf::from("a.parquet")),
            (bottom, PathBuf::from("b.parquet")),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("b.parquet: column `reward` has type str"),
            "{error}"
        );
    }
}
