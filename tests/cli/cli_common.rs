//! What every `qrm-*` tool shares (`qrm::cli`): each takes `-q`/`--quiet` (also after a
//! subcommand), an unknown flag is a usage error (exit 2), and `--template`, `--device` and
//! fraction values that cannot work are rejected at parse time (exit 2) with one message in
//! every tool.

use assert_cmd::Command;
use predicates::prelude::*;

const TOOLS: [&str; 10] = [
    "qrm-auroc",
    "qrm-cat",
    "qrm-embed",
    "qrm-filter",
    "qrm-import",
    "qrm-pairs",
    "qrm-plot",
    "qrm-score",
    "qrm-synth",
    "qrm-train",
];

fn tool(name: &str) -> Command {
    Command::cargo_bin(name).unwrap()
}

#[test]
fn every_tool_takes_quiet_and_exits_2_on_an_unknown_flag() {
    for name in TOOLS {
        // clap reads the flags in order: `-q` must parse before `--version` ends the run.
        tool(name).args(["-q", "--version"]).assert().success();
        tool(name).args(["--quiet", "--version"]).assert().success();
        tool(name)
            .arg("--no-such-flag")
            .assert()
            .code(2)
            .stderr(predicate::str::contains("--no-such-flag"));
    }
    // A subcommand takes the common group too.
    tool("qrm-score")
        .args(["merge", "-q", "--help"])
        .assert()
        .success();
    tool("qrm-plot")
        .args(["auroc", "-q", "--help"])
        .assert()
        .success();
}

#[test]
fn quiet_keeps_info_logs_off_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth.jsonl");
    let run = |quiet: bool| {
        let mut command = tool("qrm-synth");
        command.args(["--questions", "2", "--samples", "2", "-o"]);
        command.arg(&out);
        if quiet {
            command.arg("-q");
        }
        let output = command.env_remove("RUST_LOG").output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stderr).unwrap()
    };
    assert!(run(false).contains("generated 4 samples"));
    assert_eq!(run(true), "");
}

#[test]
fn a_template_that_is_neither_a_name_nor_a_file_is_a_usage_error() {
    let neither =
        "is neither a template name (nemo, nemo-release, chatml, raw) nor an existing file";
    for (name, args) in [
        (
            "qrm-score",
            &["x.parquet", "--rm", "rm", "--template", "chatm"][..],
        ),
        (
            "qrm-embed",
            &[
                "x.parquet",
                "--rm",
                "rm",
                "-o",
                "g.st",
                "--template",
                "chatm",
            ][..],
        ),
        (
            "qrm-train",
            &[
                "x.parquet",
                "--model",
                "m",
                "-o",
                "ckpt",
                "--template",
                "no/file",
            ][..],
        ),
    ] {
        tool(name)
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(neither));
    }
    // A file without `{question}` exists, so the message is the template's own.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("template.txt");
    std::fs::write(&bad, "no placeholder here").unwrap();
    tool("qrm-score")
        .args(["x.parquet", "--rm", "rm", "--template"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("exactly once"));
}

#[test]
fn a_bad_device_is_a_usage_error_in_every_model_tool() {
    for (name, args) in [
        ("qrm-score", &["x.parquet", "--rm", "rm"][..]),
        (
            "qrm-embed",
            &["x.parquet", "--rm", "rm", "-o", "g.safetensors"][..],
        ),
        (
            "qrm-train",
            &["x.parquet", "--model", "m", "-o", "ckpt"][..],
        ),
    ] {
        tool(name)
            .args(args)
            .args(["--device", "gpu0"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "unknown device `gpu0`: expected cpu, cuda or cuda:N",
            ));
    }
}

#[test]
fn fractions_outside_zero_one_are_usage_errors_at_parse_time() {
    // qrm-train used to accept --eval-fraction 1.5 and fail later on the missing pairs file.
    tool("qrm-train")
        .args([
            "missing.parquet",
            "--model",
            "m",
            "-o",
            "ckpt",
            "--eval-fraction",
            "1.5",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("1.5 is not a fraction in [0, 1]"));
    tool("qrm-synth")
        .args(["--error-rate", "1.5", "--questions", "2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("1.5 is not a fraction in [0, 1]"));
}
