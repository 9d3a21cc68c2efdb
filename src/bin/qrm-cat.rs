//! qrm-cat: stacks tables of the same kind (scores of several reward models, generations of
//! several benchmarks) into one, matching columns by name; a column some inputs lack is null in
//! their rows. Inputs in any format qrm reads, `-` for stdin; an input with columns but no rows is
//! an error (a scoring run that produced nothing should not pass silently into a report).
//!
//! `qrm-cat scores-bt.parquet scores-q.parquet | qrm-auroc --compare bt,q`

use std::path::PathBuf;

use clap::Parser;
use qrm::cli::OutputArgs;
use qrm::pipeline::io::{concat_tables, read_table, require_rows};

#[derive(Debug, Parser)]
#[command(version, about = "Stack tables by column name")]
struct Args {
    /// Input tables (`-` for stdin, at most once).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,

    #[command(flatten)]
    output: OutputArgs,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut tables = Vec::with_capacity(args.inputs.len());
    for path in args.inputs {
        let frame = read_table(&path)?;
        require_rows(&frame, &path)?;
        tracing::info!("{}: {} rows", path.display(), frame.height());
        tables.push((frame, path));
    }
    let mut stacked = concat_tables(tables)?;
    tracing::info!("stacked {} rows", stacked.height());
    args.output.output().write(&mut stacked)?;
    Ok(())
}
