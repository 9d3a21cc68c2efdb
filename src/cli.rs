//! What every `qrm-*` binary shares: the common flags (`-q`; `--device` is in
//! [`crate::model::loading::ModelArgs`], and [`DeviceArgs`] for qrm-train), output flags,
//! `--batch-tokens`, logging, progress bars, exit codes, and [`main`], which runs a tool
//! (parse → logging → run → exit code).
//!
//! Exit codes: 0 ok (a closed output pipe counts as ok), 1 runtime error, 2 usage error (clap's,
//! and the library's [`crate::Error::Usage`]: a flag value or flag combination that cannot work,
//! found after parsing).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::RangedU64ValueParser;
use clap::FromArgMatches;
use indicatif::{ProgressBar, ProgressStyle};

pub use crate::model::loading::DeviceArgs;
use crate::pipeline::io::{Format, Output};

/// The flags every tool has, flattened into each (global, so a subcommand takes them too:
/// `qrm-score merge -q`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Only warnings and errors on stderr; no progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// A binary's whole `main`: parses the flags (clap's errors exit 2), starts logging (`-q` of
/// the tool's flattened [`CommonArgs`]), runs the tool and turns its result into the exit code
/// ([`finish`]). Every tool flattens [`CommonArgs`] into its top-level flags; the CLI tests
/// check each one takes `-q`.
pub fn main<T: clap::Parser>(run: impl FnOnce(T) -> anyhow::Result<()>) -> ExitCode {
    let (common, args) = parse::<T>();
    init_logging(common.quiet);
    finish(run(args))
}

/// Parses the command line into the tool's flags and the common group, or exits as clap does.
fn parse<T: clap::Parser>() -> (CommonArgs, T) {
    parse_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
}

fn parse_from<T: clap::Parser>(
    argv: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<(CommonArgs, T), clap::Error> {
    let matches = T::command().try_get_matches_from(argv)?;
    let format = |error: clap::Error| error.format(&mut T::command());
    let common = CommonArgs::from_arg_matches(&matches).map_err(format)?;
    let args = T::from_arg_matches(&matches).map_err(format)?;
    Ok((common, args))
}

/// `--batch-tokens`, one definition for qrm-embed and qrm-score. How the default was chosen
/// (CPU timings) is in `docs/cuda.md`.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Padded tokens per forward pass (rows × longest row). The default suits a CPU; raise it
    /// on a GPU.
    #[arg(long, default_value_t = crate::model::batching::DEFAULT_BATCH_TOKENS, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_tokens: usize,
}

/// `-o/--output` and `--format`, flattened into every tool that writes a table.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output file; the extension picks the format (.parquet, .arrow, .jsonl, .csv).
    /// Without it, an Arrow IPC stream goes to stdout (a readable table on a terminal).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Output format, overriding the extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

impl OutputArgs {
    pub fn output(&self) -> Output {
        Output::new(self.output.clone(), self.format)
    }
}

/// Clap value parser for a fraction in [0, 1] (`--split-questions 0.3`): a value outside it is
/// a usage error at parse time.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a fraction in [0, 1]"))
    }
}

/// Sends logs to stderr; `-q` keeps only warnings and errors. `RUST_LOG` overrides.
pub fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}

/// A progress bar on stderr, hidden under `-q` or when stderr is not a terminal.
pub fn progress_bar(length: u64, message: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta}) {prefix}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

/// Turns a tool's result into its exit code: a broken pipe is a normal end (0), a usage error
/// ([`crate::Error::Usage`] anywhere in the chain) gives 2, any other error 1; errors are printed
/// with their causes.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_message(&error));
            ExitCode::from(exit_code(&error))
        }
    }
}

/// 2 for a usage error, 1 for any other failure.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let usage = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<crate::Error>(),
            Some(crate::Error::Usage(_))
        )
    });
    if usage {
        2
    } else {
        1
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text the message already
/// holds (qrm's errors print their source themselves, as in "path: No such file").
pub fn error_message(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::BrokenPipe;
        }
        if let Some(qrm) = cause.downcast_ref::<crate::error::Error>() {
            return qrm.is_broken_pipe();
        }
        cause.to_string().contains("Broken pipe")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(crate::Error::io("scores.parquet", io))
            .context("reading the scores");
        // Error::Io shows its source itself; the chain must not repeat it.
        assert_eq!(
            error_message(&error),
            "reading the scores: scores.parquet: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&plain), "outer: inner");
    }

    #[test]
    fn fractions_parse_inside_zero_one_only() {
        assert_eq!(parse_fraction("0.3"), Ok(0.3));
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5")
            .unwrap_err()
            .contains("not a fraction"));
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert!(parse_fraction("x").unwrap_err().contains("not a number"));
    }

    #[derive(Debug, clap::Parser)]
    struct Demo {
        #[command(subcommand)]
        command: Option<DemoCommand>,
        #[arg(long)]
        flag: bool,
        #[command(flatten)]
        common: CommonArgs,
    }

    #[derive(Debug, clap::Subcommand)]
    enum DemoCommand {
        Sub,
    }

    #[test]
    fn the_common_group_parses_before_and_after_a_subcommand() {
        let (common, demo) = parse_from::<Demo>(["demo", "--flag", "-q"]).unwrap();
        assert!(common.quiet && demo.common.quiet && demo.flag);
        let (common, demo) = parse_from::<Demo>(["demo", "sub", "--quiet"]).unwrap();
        assert!(common.quiet && matches!(demo.command, Some(DemoCommand::Sub)));
        let (common, _) = parse_from::<Demo>(["demo"]).unwrap();
        assert!(!common.quiet);
        let error = parse_from::<Demo>(["demo", "--nope"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn usage_errors_exit_2_and_others_1() {
        let usage = anyhow::Error::new(crate::Error::Usage("--level must be in (0, 1)".into()))
            .context("qrm-auroc");
        assert_eq!(exit_code(&usage), 2);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(exit_code(&anyhow::Error::new(crate::Error::io("x", io))), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), 1);
    }
}
