//! `qrm-import` and `qrm-pairs` end to end: every source format on a small fixture (and on
//! `../shared/data` where present), the import → pairs pipe, and every kind of bad input.
//!
//! Reference counts come from `tests/fixtures/data_reference.py` (pandas) via
//! `tests/fixtures/data_reference.json`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use polars::prelude::*;
use predicates::str::contains;
use qrm::pipeline::io::read_table;
use qrm::pipeline::schema::{generations_from_frame, pairs_from_frame, Columns};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

use qrm::testing::shared_data;

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data_reference.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn import() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qrm-import"))
}

fn pairs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qrm-pairs"))
}

fn strings(frame: &DataFrame, name: &str) -> Vec<String> {
    Columns::new(frame, Path::new("test"))
        .str(name)
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or("<null>").to_owned())
        .collect()
}

fn write(directory: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

// ---------------------------------------------------------------- formats on fixtures

#[test]
fn zeroeval_fixture_becomes_generations_with_model_as_sample() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    import()
        .arg(fixture("zeroeval_small.jsonl"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "zeroeval: 12 rows read, 12 generations over 3 questions",
        ));
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(rows[0].question_id, "gsm8k-main-test-#0");
    assert_eq!(rows[0].sample, "model-a");
    assert_eq!(rows[0].benchmark, "gsm8k");
    assert_eq!(rows[0].expected_answer.as_deref(), Some("13"));
    assert!(rows[0].response.contains("\"answer\": \"13\""));
    assert_eq!(rows.iter().filter(|r| r.is_correct).count(), 9);
    // Pass-through: `generator` is not consumed by the importer.
    assert_eq!(strings(&frame, "generator")[3], "org/model-b");
    // A canonical table re-imports unchanged (generic mapping, every column kept).
    let again = directory.path().join("again.parquet");
    import()
        .arg(&out)
        .arg("-o")
        .arg(&again)
        .assert()
        .success()
        .stderr(contains("generic: 12 rows read"));
    assert!(read_table(&again).unwrap().equals_missing(&frame));
}

#[test]
fn nemo_files_give_sample_from_file_name_and_benchmark_from_directory() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    import()
        .arg(fixture("nemo/gsm8k/output-greedy.jsonl"))
        .arg(fixture("nemo/gsm8k/output-rs0.jsonl"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert_eq!(rows.len(), 4);
    let samples: Vec<&str> = rows.iter().map(|r| r.sample.as_str()).collect();
    assert_eq!(samples, ["greedy", "greedy", "rs0", "rs0"]);
    assert!(rows.iter().all(|r| r.benchmark == "gsm8k"));
    // The same question in both files gets the same id (a hash of its text).
    assert_eq!(rows[0].question_id, rows[2].question_id);
    assert_ne!(rows[0].question_id, rows[1].question_id);
    assert_eq!(
        rows.iter().map(|r| r.is_correct).collect::<Vec<_>>(),
        [true, false, false, true]
    );
    assert!(frame.column("error_message").is_ok(), "pass-through lost");
}

#[test]
fn nemo_grade_agrees_with_its_labels() {
    // rs0 answers \frac{5}{2} for 2.5 and greedy answers 2: grading reproduces the labels.
    import()
        .arg("--grade")
        .arg(fixture("nemo/gsm8k/output-greedy.jsonl"))
        .arg(fixture("nemo/gsm8k/output-rs0.jsonl"))
        .assert()
        .success()
        .stderr(contains("graded 4 rows; 0 differ"));
}

#[test]
fn openmathinstruct2_rows_grade_from_boxed_answers() {
    // OpenMathInstruct-2 shape: `problem`, `generated_solution`, `expected_answer`,
    // `problem_source`, no label.
    let directory = tempfile::tempdir().unwrap();
    let lines: Vec<String> = [
        ("What is 2 + 2?", "2 + 2 = 4, so \\boxed{4}.", "4"),
        ("What is 2 + 2?", "2 + 2 = 5, so \\boxed{5}.", "4"),
    ]
    .iter()
    .map(|(problem, solution, expected)| {
        serde_json::json!({
            "problem": problem,
            "generated_solution": solution,
            "expected_answer": expected,
            "problem_source": "augmented_gsm8k",
        })
        .to_string()
    })
    .collect();
    let input = write(directory.path(), "omi2.jsonl", lines.join("\n").as_bytes());
    let out = directory.path().join("g.parquet");
    import()
        .arg(&input)
        .arg("--grade")
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "nemo: 2 rows read, 2 generations over 1 questions (1 correct)",
        ));
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert_eq!(rows[0].question, "What is 2 + 2?");
    assert_eq!(rows[0].benchmark, "augmented_gsm8k");
    assert_eq!(rows[1].predicted_answer.as_deref(), Some("5"));
    assert_eq!(
        (rows[0].sample.as_str(), rows[1].sample.as_str()),
        ("0", "1")
    );
}

#[test]
fn openmath_preference_rows_become_pairs() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("p.parquet");
    import()
        .arg(fixture("openmath_pairs.jsonl"))
        .arg("--benchmark")
        .arg("math")
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("openmath-pairs: 3 rows read, 3 pairs"));
    let frame = read_table(&out).unwrap();
    let rows = pairs_from_frame(&frame, &out).unwrap();
    assert_eq!(rows[0].chosen, "6 * 7 = 42. \\boxed{42}");
    assert_eq!(rows[0].rejected, "6 * 7 = 48. \\boxed{48}");
    assert_eq!(rows[0].question_id, rows[1].question_id);
    assert_eq!(rows[0].pair_id, format!("{}#0", rows[0].question_id));
    assert_eq!(rows[1].pair_id, format!("{}#1", rows[0].question_id));
    assert!(rows[0].question_id.starts_with("math-"));
    assert_eq!(strings(&frame, "expected_answer"), ["42", "42", "5"]);
}

#[test]
fn hh_rlhf_dialogues_split_into_prompt_and_final_turns() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("p.parquet");
    import()
        .arg(fixture("hh_small.jsonl"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let frame = read_table(&out).unwrap();
    let rows = pairs_from_frame(&frame, &out).unwrap();
    assert_eq!(
        rows[0].question,
        "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt.\
         \n\nHuman: Then what?\n\nAssistant:"
    );
    assert_eq!(rows[0].chosen, "Let it rise, then bake at 230°C.");
    assert_eq!(rows[0].rejected, "Buy some instead.");
    // The second pair's turns share "I don't" but the prompt ends at the marker.
    assert_eq!(
        rows[1].question,
        "\n\nHuman: Tell me a secret.\n\nAssistant:"
    );
    assert_eq!(rows[1].rejected, "I don't know.");
    assert!(rows[0].question_id.starts_with("hh-rlhf-"));
    assert_eq!(rows[0].benchmark, "hh-rlhf");
}

#[test]
fn prm800k_steps_become_prefix_generations_with_ratings() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    import()
        .arg(fixture("prm800k_small.parquet"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("1 unrated PRM800K steps dropped"));
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert_eq!(rows.len(), 5);
    // Row 3 of the fixture: two accepted steps, then the wrong "So x = 6." rated -1.
    assert_eq!(
        rows[2].response,
        "Let x be the number.\nThen 2x = 10.\nSo x = 6."
    );
    assert!(!rows[2].is_correct);
    // "Let x be the number.\n" (21 chars) + "Then 2x = 10.\n" (14 chars) = 35.
    assert_eq!(rows[2].first_error_char, Some(35));
    assert_eq!(rows[2].predicted_answer.as_deref(), Some("6"));
    // Rating 0 (neutral) counts as correct; no error offset.
    assert!(rows[1].is_correct);
    assert_eq!(rows[1].first_error_char, None);
    let ratings = frame.column("step_rating").unwrap();
    assert_eq!(ratings.dtype(), &DataType::Int8);
    let ratings: Vec<Option<i8>> = ratings.i8().unwrap().iter().collect();
    assert_eq!(ratings, [Some(1), Some(0), Some(-1), Some(1), Some(-1)]);
    let step_index: Vec<Option<i32>> = frame
        .column("step_index")
        .unwrap()
        .i32()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(step_index, [Some(0), Some(1), Some(2), Some(2), Some(0)]);
    assert_eq!(strings(&frame, "sample")[4], "row5");
    assert!(frame.column("is_solution").is_ok(), "pass-through lost");
    // Steps start at 0, 21 ("Let x be the number.\n") and 35 (+ "Then 2x = 10.\n"): the rated
    // step is the last, so a -1 row's first_error_char is its last step start.
    let starts: Vec<Vec<u32>> = frame
        .column("step_starts")
        .unwrap()
        .list()
        .unwrap()
        .series_iter()
        .map(|s| s.unwrap().u32().unwrap().into_no_null_iter().collect())
        .collect();
    assert_eq!(
        starts,
        [
            vec![0],
            vec![0, 21],
            vec![0, 21, 35],
            vec![0, 21, 35],
            vec![0]
        ]
    );
    // Rows 3 and 4 continue the same two-step prefix; every other prefix differs.
    let prefixes = strings(&frame, "prefix_id");
    assert_eq!(prefixes[2], prefixes[3]);
    let distinct: HashSet<&String> = prefixes.iter().collect();
    assert_eq!(distinct.len(), 4);
    assert!(prefixes[0].starts_with("prm800k-"));
}

#[test]
fn prm800k_neutral_ratings_are_correct_incorrect_or_dropped() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    let run = |neutral: &str| {
        import()
            .arg(fixture("prm800k_small.parquet"))
            .args(["--neutral", neutral, "-o"])
            .arg(&out)
            .assert()
            .success()
    };
    // The fixture's second row is rated 0.
    run("drop").stderr(contains(
        "1 neutral (0) PRM800K steps dropped (--neutral drop)",
    ));
    let frame = read_table(&out).unwrap();
    assert_eq!(strings(&frame, "sample"), ["row0", "row2", "row3", "row5"]);
    run("incorrect");
    let rows = generations_from_frame(&read_table(&out).unwrap(), &out).unwrap();
    assert!(!rows[1].is_correct);
    // The neutral step "Then 2x = 10." starts after "Let x be the number.\n" (21 chars).
    assert_eq!(rows[1].first_error_char, Some(21));
    assert!(rows[0].is_correct && rows[3].is_correct);
    // --neutral is about PRM800K ratings: with another format it is a usage error.
    import()
        .arg(fixture("generic.csv"))
        .args(["--question-col", "problem", "--response-col", "solution"])
        .args(["--label-col", "ok", "--neutral", "drop"])
        .assert()
        .code(2)
        .stderr(contains("--neutral"));
}

#[test]
fn prm800k_pairs_by_prefix_pair_a_good_and_a_bad_next_step() {
    let directory = tempfile::tempdir().unwrap();
    let generations = directory.path().join("g.parquet");
    let out = directory.path().join("p.parquet");
    import()
        .arg(fixture("prm800k_small.parquet"))
        .args(["--neutral", "drop", "-o"])
        .arg(&generations)
        .assert()
        .success();
    pairs()
        .arg(&generations)
        .args(["--group-col", "prefix_id", "--reuse", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "wrote 1 pairs over 1 questions (1 groups with both labels)",
        ));
    let frame = read_table(&out).unwrap();
    let rows = pairs_from_frame(&frame, &out).unwrap();
    // Only "So x = 5." (+1) and "So x = 6." (-1) continue one prefix; row 0 (+1) and row 5's
    // question (-1 only) have no partner in their group.
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].chosen,
        "Let x be the number.\nThen 2x = 10.\nSo x = 5."
    );
    assert_eq!(
        rows[0].rejected,
        "Let x be the number.\nThen 2x = 10.\nSo x = 6."
    );
    assert_eq!(strings(&frame, "chosen_sample"), ["row3"]);
    // A group column the table lacks is an error naming it.
    pairs()
        .arg(&generations)
        .args(["--group-col", "no_such_column", "-o"])
        .arg(&out)
        .assert()
        .code(1)
        .stderr(contains("no_such_column"));
}

#[test]
fn generic_mapping_reads_custom_columns_and_integer_labels() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    import()
        .arg(fixture("generic.csv"))
        .args(["--question-col", "problem", "--response-col", "solution"])
        .args([
            "--label-col",
            "ok",
            "--id-col",
            "problem_id",
            "--expected-col",
            "answer",
        ])
        .args(["--benchmark", "toy", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "generic: 4 rows read, 4 generations over 2 questions (2 correct)",
        ));
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert_eq!(rows[2].question_id, "p2");
    assert_eq!(rows[2].question, "What is 1,000 + 234?");
    assert_eq!(rows[2].expected_answer.as_deref(), Some("1234"));
    assert_eq!(
        rows.iter().map(|r| r.sample.as_str()).collect::<Vec<_>>(),
        ["0", "1", "0", "1"]
    );
    assert_eq!(strings(&frame, "source"), ["handmade"; 4]);
}

#[test]
fn grade_labels_generic_rows_without_a_label_column() {
    let directory = tempfile::tempdir().unwrap();
    let lines: Vec<String> = [
        ("q1", "So she pays $18.00 in total.", "18"),
        ("q1", "The answer is 20.", "18"),
        ("q2", "x = \\boxed{\\frac{1}{2}}", "0.5"),
        ("q3", "{\"answer\": \"7\"}", "#### 7"),
        ("q4", "Total: 1,234\n#### 1,234", "1234"),
    ]
    .iter()
    .map(|(question, response, expected)| {
        serde_json::json!({"question": question, "response": response, "expected_answer": expected})
            .to_string()
    })
    .collect();
    let input = write(directory.path(), "g.jsonl", lines.join("\n").as_bytes());
    let out = directory.path().join("graded.jsonl");
    import()
        .arg(&input)
        .arg("--grade")
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("graded 5 rows"));
    let frame = read_table(&out).unwrap();
    let labels: Vec<bool> = Columns::new(&frame, &out)
        .bool_not_null("is_correct")
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(labels, [true, false, true, true, true]);
    assert_eq!(
        strings(&frame, "predicted_answer"),
        ["18.00", "20", "\\frac{1}{2}", "7", "1,234"]
    );
    // JSON Lines gives the all-null `first_error_char` the Null type; qrm-pairs still reads it.
    pairs()
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("wrote 1 pairs over 1 questions"));
}

#[test]
fn forced_format_that_does_not_fit_names_the_missing_column() {
    import()
        .arg(fixture("hh_small.jsonl"))
        .args(["--from", "zeroeval"])
        .assert()
        .code(1)
        .stderr(contains("missing column `id`"));
}

// ---------------------------------------------------------------- pairs

#[test]
fn import_pipes_into_pairs() {
    let imported = import()
        .arg(fixture("zeroeval_small.jsonl"))
        .arg("-q")
        .output()
        .unwrap();
    assert!(imported.status.success());
    assert!(
        imported.stdout.starts_with(&[0xff, 0xff, 0xff, 0xff]),
        "not an Arrow stream"
    );
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("pairs.parquet");
    pairs()
        .args(["--seed", "3", "-o"])
        .arg(&out)
        .write_stdin(imported.stdout)
        .assert()
        .success()
        .stderr(contains(
            "read 12 generations over 3 questions; 2 questions with both labels",
        ))
        .stderr(contains(
            "skipped 1 single-label questions (1 all correct, 0 all incorrect)",
        ))
        .stderr(contains("wrote 3 pairs over 2 questions"));
    let frame = read_table(&out).unwrap();
    let rows = pairs_from_frame(&frame, &out).unwrap();
    // q0: model-a, model-c correct vs model-b, model-d incorrect → 2 pairs; q1: 1 pair.
    assert_eq!(rows.len(), 3);
    let chosen = strings(&frame, "chosen_sample");
    let rejected = strings(&frame, "rejected_sample");
    assert_eq!(rows[2].question_id, "gsm8k-main-test-#1");
    let first_chosen: HashSet<&str> = chosen[..2].iter().map(String::as_str).collect();
    assert_eq!(first_chosen, HashSet::from(["model-a", "model-c"]));
    assert_eq!(&rejected[2], "model-c");
    for (row, rejected) in rows.iter().zip(&rejected).take(2) {
        assert!(["model-b", "model-d"].contains(&rejected.as_str()));
        assert_eq!(row.question_id, "gsm8k-main-test-#0");
    }
}

#[test]
fn import_reads_gzip_from_stdin_and_pairs_refuses_a_pairs_table() {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(&std::fs::read(fixture("hh_small.jsonl")).unwrap())
        .unwrap();
    let imported = import()
        .arg("-")
        .write_stdin(encoder.finish().unwrap())
        .output()
        .unwrap();
    assert!(imported.status.success());
    pairs()
        .write_stdin(imported.stdout)
        .assert()
        .code(1)
        .stderr(contains("<stdin>: this is already a pairs table"));
}

#[test]
fn pairs_are_identical_for_the_same_seed_and_shuffled_input() {
    let directory = tempfile::tempdir().unwrap();
    let generations = directory.path().join("g.parquet");
    import()
        .arg(fixture("zeroeval_small.jsonl"))
        .arg("-o")
        .arg(&generations)
        .assert()
        .success();
    let text = std::fs::read_to_string(fixture("zeroeval_small.jsonl")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    let reversed = write(directory.path(), "r.jsonl", lines.join("\n").as_bytes());
    let reversed_generations = directory.path().join("r.parquet");
    import()
        .arg(&reversed)
        .arg("-o")
        .arg(&reversed_generations)
        .assert()
        .success();
    let run = |input: &Path, seed: &str| {
        let output = pairs()
            .arg(input)
            .args(["--seed", seed, "--reuse", "--format", "jsonl"])
            .output()
            .unwrap();
        assert!(output.status.success());
        output.stdout
    };
    assert_eq!(run(&generations, "5"), run(&reversed_generations, "5"));
}

#[test]
fn split_requires_holdout_and_a_fraction_in_range() {
    pairs()
        .arg(fixture("zeroeval_small.jsonl"))
        .args(["--split-questions", "0.3"])
        .assert()
        .code(2)
        .stderr(contains("--holdout"));
    let directory = tempfile::tempdir().unwrap();
    let generations = directory.path().join("g.parquet");
    import()
        .arg(fixture("zeroeval_small.jsonl"))
        .arg("-o")
        .arg(&generations)
        .assert()
        .success();
    pairs()
        .arg(&generations)
        .args(["--split-questions", "1.5", "--holdout"])
        .arg(directory.path().join("h.parquet"))
        .assert()
        .code(2)
        .stderr(contains("1.5 is not a fraction in [0, 1]"));
    // An unknown extension (a bad flag value: exit 2) is refused before any work, and nothing
    // is written.
    pairs()
        .arg(&generations)
        .args(["--split-questions", "0.5", "--holdout"])
        .arg(directory.path().join("h.xyz"))
        .arg("-o")
        .arg(directory.path().join("p.parquet"))
        .assert()
        .code(2)
        .stderr(contains("unknown output extension"));
    assert!(!directory.path().join("p.parquet").exists());
    import()
        .arg(fixture("zeroeval_small.jsonl"))
        .arg("-o")
        .arg(directory.path().join("g.xyz"))
        .assert()
        .code(2)
        .stderr(contains("unknown output extension"));
}

// ---------------------------------------------------------------- bad input

#[test]
fn missing_column_is_named_with_the_columns_present() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": \"q\", \"answer\": \"a\"}\n",
    );
    import().arg(&input).assert().code(1).stderr(contains(
        "missing column `response` (columns present: question, answer)",
    ));
}

#[test]
fn missing_label_column_suggests_grade() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": \"q\", \"response\": \"r\"}\n",
    );
    import()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("missing column `is_correct`"))
        .stderr(contains("--grade"));
}

#[test]
fn wrong_label_type_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": \"q\", \"response\": \"r\", \"is_correct\": \"yes\"}\n",
    );
    import().arg(&input).assert().code(1).stderr(contains(
        "column `is_correct` has type str, expected Boolean",
    ));
    // Under --grade the input label is not used, so its type does not matter.
    import()
        .arg(&input)
        .args(["--grade", "--expected-col", "question"])
        .assert()
        .success();
    let input = write(
        directory.path(),
        "h.jsonl",
        b"{\"question\": \"q\", \"response\": \"r\", \"is_correct\": 2}\n",
    );
    import().arg(&input).assert().code(1).stderr(contains(
        "row 1, column `is_correct`: label 2 is neither 0 nor 1",
    ));
}

#[test]
fn wrong_text_type_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": [1, 2], \"response\": \"r\", \"is_correct\": true}\n",
    );
    import()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("column `question` has type"))
        .stderr(contains("expected Utf8"));
}

#[test]
fn empty_input_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(directory.path(), "empty.jsonl", b"\n\n");
    import()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("the input is empty"));
    pairs()
        .write_stdin(Vec::new())
        .assert()
        .code(1)
        .stderr(contains("<stdin>: the input is empty"));
}

#[test]
fn malformed_json_line_is_reported_or_skipped_and_counted() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": \"q\", \"response\": \"r1\", \"is_correct\": true}\n\
          {\"question\": \"q\", \"response\": \n\
          {\"question\": \"q\", \"response\": \"r2\", \"is_correct\": false}\n",
    );
    import()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("line 2: malformed JSON"));
    let out = directory.path().join("g.parquet");
    import()
        .arg(&input)
        .arg("--skip-bad")
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("1 malformed lines skipped"));
    assert_eq!(read_table(&out).unwrap().height(), 2);
}

#[test]
fn non_utf8_text_is_reported_with_its_line() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": \"q\", \"response\": \"r\", \"is_correct\": true}\n\
          {\"question\": \"caf\xe9\", \"response\": \"r\", \"is_correct\": true}\n",
    );
    import()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("line 2: not UTF-8"));
    let csv = write(
        directory.path(),
        "g.csv",
        b"question,response,is_correct\ncaf\xe9,r,true\n",
    );
    import()
        .arg(&csv)
        .assert()
        .code(1)
        .stderr(contains("not UTF-8"));
}

#[test]
fn null_label_is_an_error_or_a_counted_skip() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": \"q\", \"response\": \"a\", \"is_correct\": true}\n\
          {\"question\": \"q\", \"response\": \"b\", \"is_correct\": null}\n\
          {\"question\": \"q\", \"response\": \"c\", \"is_correct\": false}\n",
    );
    import()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("row 2, column `is_correct`: null label"));
    let out = directory.path().join("g.parquet");
    import()
        .arg(&input)
        .arg("--skip-bad")
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "1 rows with a null required value or label skipped",
        ));
    let frame = read_table(&out).unwrap();
    assert_eq!(strings(&frame, "response"), ["a", "c"]);
}

#[test]
fn duplicated_question_and_sample_is_an_error_or_a_counted_skip() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question_id\": \"q\", \"sample\": \"s1\", \"question\": \"q\", \"response\": \"a\", \"is_correct\": true}\n\
          {\"question_id\": \"q\", \"sample\": \"s2\", \"question\": \"q\", \"response\": \"b\", \"is_correct\": false}\n\
          {\"question_id\": \"q\", \"sample\": \"s1\", \"question\": \"q\", \"response\": \"c\", \"is_correct\": false}\n",
    );
    import()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("row 3, column `sample`"))
        .stderr(contains("repeats row 1"));
    import()
        .arg(&input)
        .arg("--skip-bad")
        .assert()
        .success()
        .stderr(contains("1 rows repeating a (question_id, sample) skipped"));
    // qrm-pairs checks the same on its input.
    pairs()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(contains("repeats row 1"));
    pairs()
        .arg(&input)
        .arg("--skip-bad")
        .assert()
        .success()
        .stderr(contains("wrote 1 pairs"));
}

#[test]
fn pairs_reports_null_and_mistyped_labels() {
    let directory = tempfile::tempdir().unwrap();
    let null_label = write(
        directory.path(),
        "n.jsonl",
        b"{\"question_id\": \"q\", \"question\": \"q\", \"response\": \"a\", \"is_correct\": true}\n\
          {\"question_id\": \"q\", \"question\": \"q\", \"response\": \"b\", \"is_correct\": null}\n",
    );
    pairs()
        .arg(&null_label)
        .assert()
        .code(1)
        .stderr(contains("row 2, column `is_correct`: null value"));
    let text_label = write(
        directory.path(),
        "t.jsonl",
        b"{\"question_id\": \"q\", \"question\": \"q\", \"response\": \"a\", \"is_correct\": \"yes\"}\n",
    );
    pairs().arg(&text_label).assert().code(1).stderr(contains(
        "column `is_correct` has type str, expected Boolean",
    ));
}

#[test]
fn duplicated_pair_id_across_inputs_is_an_error() {
    import()
        .arg(fixture("openmath_pairs.jsonl"))
        .arg(fixture("openmath_pairs.jsonl"))
        .assert()
        .code(1)
        .stderr(contains("repeats the pair_id"));
}

#[test]
fn mixed_formats_are_refused() {
    import()
        .arg(fixture("zeroeval_small.jsonl"))
        .arg(fixture("hh_small.jsonl"))
        .assert()
        .code(1)
        .stderr(contains("looks like hh-rlhf"));
}

#[test]
fn grade_without_expected_answer_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "g.jsonl",
        b"{\"question\": \"q\", \"response\": \"The answer is 3.\", \"expected_answer\": null}\n",
    );
    import()
        .arg(&input)
        .arg("--grade")
        .assert()
        .code(1)
        .stderr(contains("row 1, column `expected_answer`: null value"));
}

#[test]
fn hh_rlhf_rows_without_a_shared_turn_are_errors_or_counted_skips() {
    let directory = tempfile::tempdir().unwrap();
    let input = write(
        directory.path(),
        "hh.jsonl",
        b"{\"chosen\": \"\\n\\nHuman: a\\n\\nAssistant: x\", \"rejected\": \"\\n\\nHuman: a\\n\\nAssistant: y\"}\n\
          {\"chosen\": \"\\n\\nHuman: a\", \"rejected\": \"\\n\\nHuman: b\"}\n",
    );
    import().arg(&input).assert().code(1).stderr(contains(
        "row 2, column `chosen`: the two dialogues share no",
    ));
    import()
        .arg(&input)
        .arg("--skip-bad")
        .assert()
        .success()
        .stderr(contains("1 rows with a malformed value skipped"));
}

// ---------------------------------------------------------------- ../shared/data

#[test]
fn zeroeval_gsm8k_pipeline_matches_the_data() {
    let Some(shared) = shared_data() else { return };
    let expected = &reference()["zeroeval"];
    let directory = tempfile::tempdir().unwrap();
    let generations = directory.path().join("g.parquet");
    import()
        .arg(shared.join("zeroeval/gsm8k_test_42models.jsonl.gz"))
        .arg("-o")
        .arg(&generations)
        .assert()
        .success();
    let held = directory.path().join("held.parquet");
    let out = directory.path().join("pairs.parquet");
    let summary = format!(
        "read {} generations over {} questions; {} questions with both labels",
        expected["generations"], expected["questions"], expected["questions_with_both_labels"]
    );
    pairs()
        .arg(&generations)
        .args(["--split-questions", "0.3", "--seed", "1", "--holdout"])
        .arg(&held)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(summary));

    let generation_frame = read_table(&generations).unwrap();
    let rows = generations_from_frame(&generation_frame, &generations).unwrap();
    let label: HashMap<(&str, &str), (bool, &str)> = rows
        .iter()
        .map(|r| {
            (
                (r.question_id.as_str(), r.sample.as_str()),
                (r.is_correct, r.response.as_str()),
            )
        })
        .collect();
    let pair_frame = read_table(&out).unwrap();
    let pair_rows = pairs_from_frame(&pair_frame, &out).unwrap();
    let chosen = strings(&pair_frame, "chosen_sample");
    let rejected = strings(&pair_frame, "rejected_sample");
    let mut used = HashSet::new();
    for ((pair, chosen), rejected) in pair_rows.iter().zip(&chosen).zip(&rejected) {
        let (chosen_ok, chosen_text) = label[&(pair.question_id.as_str(), chosen.as_str())];
        let (rejected_ok, rejected_text) = label[&(pair.question_id.as_str(), rejected.as_str())];
        assert!(
            chosen_ok && !rejected_ok,
            "pair {} is mislabelled",
            pair.pair_id
        );
        assert_eq!(pair.chosen, chosen_text);
        assert_eq!(pair.rejected, rejected_text);
        assert!(
            used.insert((pair.question_id.clone(), chosen.clone())),
            "chosen reused"
        );
        assert!(
            used.insert((pair.question_id.clone(), rejected.clone())),
            "rejected reused"
        );
    }
    let held_frame = read_table(&held).unwrap();
    let held_ids: HashSet<String> = strings(&held_frame, "question_id").into_iter().collect();
    assert_eq!(held_ids.len(), 396, "round(0.3 × 1319) questions held out");
    assert!(
        held_frame.column("generator").is_ok(),
        "pass-through lost in holdout"
    );
    assert!(pair_rows.iter().all(|p| !held_ids.contains(&p.question_id)));
    // Held-out questions keep all their generations.
    let held_generations = rows
        .iter()
        .filter(|r| held_ids.contains(&r.question_id))
        .count();
    assert_eq!(held_frame.height(), held_generations);

    // Without a split, pair counts equal pandas' per-question sums.
    for (flags, key) in [
        (&[][..], "pairs_default"),
        (&["--max-per-question", "2"][..], "pairs_default_max2"),
        (
            &["--reuse", "--max-per-question", "3"][..],
            "pairs_reuse_max3",
        ),
    ] {
        pairs()
            .arg(&generations)
            .args(flags)
            .args(["-o"])
            .arg(directory.path().join("all.parquet"))
            .assert()
            .success()
            .stderr(contains(format!("wrote {} pairs over", expected[key])));
    }
}

#[test]
fn zeroeval_grading_agrees_with_its_labels() {
    let Some(shared) = shared_data() else { return };
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("graded.parquet");
    import()
        .arg(shared.join("zeroeval/gsm8k_test_42models.jsonl.gz"))
        .arg("--grade")
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let graded = read_table(&out).unwrap();
    let original = read_table(&shared.join("zeroeval/gsm8k_test_42models.jsonl.gz")).unwrap();
    let ours = Columns::new(&graded, &out)
        .bool_not_null("is_correct")
        .unwrap();
    let theirs = Columns::new(&original, &out)
        .bool_not_null("is_correct")
        .unwrap();
    let pred = Columns::new(&original, &out).str("pred").unwrap();
    let mut disagree_with_pred = 0;
    let mut with_pred = 0;
    for index in 0..original.height() {
        if pred.get(index).is_some() {
            with_pred += 1;
            disagree_with_pred += usize::from(ours.get(index) != theirs.get(index));
        }
    }
    // Where ZeroEval parsed an answer (54,643 rows), our grader reproduces its label on all
    // but 10 (listed in docs/grading.md): "9 500" twice and "118 000" (a space as thousands
    // separator, equal for us), "499.99999999999994" vs 500 (exact without --tolerance), three
    // expressions whose first number is the gold, two JSON objects and 21'0".
    assert_eq!(with_pred, 54_643);
    assert_eq!(disagree_with_pred, 10);
}

#[test]
fn prm800k_test_file_rates_the_last_step_of_each_row() {
    let Some(source) = qrm::testing::shared_file("prm800k/phase1_test.stepwise-critic.parquet")
    else {
        return;
    };
    let expected = &reference()["prm800k_test"];
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    import().arg(&source).arg("-o").arg(&out).assert().success();
    let frame = read_table(&out).unwrap();
    assert_eq!(frame.height() as u64, expected["rated"].as_u64().unwrap());
    let raw = read_table(&source).unwrap();
    let columns = Columns::new(&raw, &source);
    let ratings = columns.f64("rating").unwrap();
    let next: Vec<String> = strings(&raw, "next_response");
    // The rated input rows, in order: the output rows.
    let rated: Vec<usize> = (0..raw.height())
        .filter(|&row| ratings.get(row).is_some())
        .collect();
    assert_eq!(rated.len(), frame.height());
    let rows = generations_from_frame(&frame, &out).unwrap();
    let starts = frame.column("step_starts").unwrap().list().unwrap().clone();
    let (mut bad, mut pointed) = (0, 0);
    for (index, (row, &source_row)) in rows.iter().zip(&rated).enumerate() {
        let starts = starts.get_as_series(index).unwrap();
        let last = starts.u32().unwrap().into_no_null_iter().last().unwrap() as usize;
        // The response from the last step start on is the rated step, `next_response`.
        let tail: String = row.response.chars().skip(last).collect();
        assert_eq!(tail, next[source_row], "row {index}");
        if ratings.get(source_row) == Some(-1.0) {
            bad += 1;
            assert_eq!(row.first_error_char, Some(last as i32), "row {index}");
            pointed += 1;
        } else {
            assert_eq!(row.first_error_char, None);
        }
    }
    let correct = expected["correct"].as_u64().unwrap() as usize;
    assert_eq!(bad, rows.len() - correct);
    assert_eq!(pointed, bad);
}

#[test]
fn prm800k_and_hh_rlhf_match_the_data() {
    let Some(shared) = shared_data() else { return };
    let expected = reference();
    let directory = tempfile::tempdir().unwrap();
    // The train file stores `rating` as Float64, the test file as Int8.
    for split in ["test", "train_plus"] {
        let prm = &expected[format!("prm800k_{split}").as_str()];
        import()
            .arg(shared.join(format!("prm800k/phase1_{split}.stepwise-critic.parquet")))
            .arg("-o")
            .arg(directory.path().join("prm.parquet"))
            .assert()
            .success()
            .stderr(contains(format!(
                "prm800k: {} rows read, {} generations over {} questions ({} correct)",
                prm["rows"], prm["rated"], prm["questions"], prm["correct"]
            )))
            .stderr(contains(format!(
                "{} unrated PRM800K steps dropped",
                prm["unrated"]
            )));
    }
    let out = directory.path().join("hh.parquet");
    import()
        .arg(shared.join("hh-rlhf/harmless-base-test.jsonl.gz"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(format!(
            "{} pairs whose dialogues diverge before the last turn",
            expected["hh_rlhf"]["diverging_before_last_turn"]
        )));
    let frame = read_table(&out).unwrap();
    let rows = pairs_from_frame(&frame, &out).unwrap();
    assert_eq!(
        rows.len() as u64,
        expected["hh_rlhf"]["pairs"].as_u64().unwrap()
    );
    let prompts: HashSet<&str> = rows.iter().map(|r| r.question_id.as_str()).collect();
    assert_eq!(
        prompts.len() as u64,
        expected["hh_rlhf"]["prompts"].as_u64().unwrap()
    );
    assert!(rows.iter().all(|r| r.question.ends_with("\n\nAssistant:")));
    assert!(rows.iter().all(|r| r.chosen != r.rejected));
}

#[test]
fn math500_reference_solutions_grade_against_their_answers_only() {
    let Some(shared) = shared_data() else { return };
    let text = std::fs::read_to_string(shared.join("benchmarks/math_oai/test.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // Each solution graded against its own answer, and against the previous problem's answer.
    let directory = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let previous = &rows[(index + rows.len() - 1) % rows.len()];
        for (suffix, answer) in [("own", &row["answer"]), ("shifted", &previous["answer"])] {
            lines.push(
                serde_json::json!({
                    "question_id": row["unique_id"],
                    "sample": suffix,
                    "question": row["problem"],
                    "response": row["solution"],
                    "expected_answer": answer,
                    "same_answer": answer == &row["answer"],
                })
                .to_string(),
            );
        }
    }
    let input = write(directory.path(), "m.jsonl", lines.join("\n").as_bytes());
    let out = directory.path().join("graded.parquet");
    import()
        .arg(&input)
        .arg("--grade")
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let frame = read_table(&out).unwrap();
    let columns = Columns::new(&frame, &out);
    let correct = columns.bool_not_null("is_correct").unwrap();
    let same = columns.bool_not_null("same_answer").unwrap();
    let samples = strings(&frame, "sample");
    let mut own_correct = 0;
    let mut shifted_false_positives = 0;
    for (index, sample) in samples.iter().enumerate() {
        let is_correct = correct.get(index).unwrap();
        if sample == "own" {
            own_correct += usize::from(is_correct);
        } else if is_correct && !same.get(index).unwrap() {
            shifted_false_positives += 1;
        }
    }
    // The \boxed{} of every reference solution matches its answer after normalisation.
    assert_eq!(own_correct, rows.len());
    // A different problem's answer almost never matches (one known case: "x=5" vs "5").
    assert!(
        shifted_false_positives <= 2,
        "{shifted_false_positives} false positives"
    );
}

// ---------------------------------------------------------------- real shapes, grading rule

const GSM8K_MODELS: [&str; 4] = [
    "6b_finetuning",
    "6b_verification",
    "175b_finetuning",
    "175b_verification",
];

fn labels(frame: &DataFrame, path: &Path) -> Vec<bool> {
    Columns::new(frame, path)
        .bool_not_null("is_correct")
        .unwrap()
        .iter()
        .flatten()
        .collect()
}

#[test]
fn gsm8k_example_solutions_give_one_row_per_model_column() {
    // The shape of GSM8K's example_model_solutions.jsonl: question, ground_truth ending in
    // "A: N", and four per-model {is_correct, solution} objects.
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    let mapping = [
        "--expected-col",
        "ground_truth",
        "--sample-cols",
        "6b_finetuning,6b_verification,175b_finetuning,175b_verification",
        "--response-col",
        "solution",
        "--benchmark",
        "gsm8k-examples",
    ];
    import()
        .arg(fixture("gsm8k_model_solutions.jsonl"))
        .args(mapping)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "generic: 4 rows read, 16 generations over 4 questions (7 correct)",
        ));
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    let samples: Vec<&str> = rows.iter().map(|r| r.sample.as_str()).collect();
    assert_eq!(samples, GSM8K_MODELS.repeat(4));
    assert!(rows[..4]
        .iter()
        .all(|r| r.question_id == rows[0].question_id));
    assert!(rows[3].response.ends_with("A: 18") && rows[3].is_correct);
    assert!(rows[4]
        .expected_answer
        .as_deref()
        .unwrap()
        .ends_with("A: 3"));
    assert_eq!(
        labels(&frame, &out),
        [
            false, false, false, true, true, true, false, true, false, false, true, false, false,
            true, false, true
        ]
    );
    // Graded from the "A: N" lines, the file's own labels come back on every row; with the
    // old relative 1e-4 tolerance, "A: 10001" and "A: 10000.5" against 10000 were correct.
    let graded = directory.path().join("graded.parquet");
    import()
        .arg(fixture("gsm8k_model_solutions.jsonl"))
        .args(mapping)
        .arg("--grade")
        .arg("-o")
        .arg(&graded)
        .assert()
        .success()
        .stderr(contains(
            "graded 16 rows; 0 differ from the input's own label",
        ));
    let frame = read_table(&graded).unwrap();
    assert_eq!(
        &strings(&frame, "predicted_answer")[..4],
        ["26", "224", "4", "18"]
    );
}

#[test]
fn nested_field_reaches_one_model_of_the_example_solutions() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("g.parquet");
    import()
        .arg(fixture("gsm8k_model_solutions.jsonl"))
        .args(["--response-col", "175b_verification.solution"])
        .args(["--label-col", "175b_verification.is_correct"])
        .args(["--expected-col", "ground_truth", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "generic: 4 rows read, 4 generations over 4 questions (3 correct)",
        ));
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert!(rows[0].response.ends_with("A: 18"));
    assert_eq!(labels(&frame, &out), [true, true, false, true]);
    // The other models' columns pass through.
    assert!(frame.column("6b_finetuning").is_ok());
    // A field that is not there is named with the fields that are.
    import()
        .arg(fixture("gsm8k_model_solutions.jsonl"))
        .args(["--response-col", "175b_verification.answer"])
        .assert()
        .code(1)
        .stderr(contains(
            "missing column `175b_verification.answer` (columns present: \
             `175b_verification` has fields is_correct, solution)",
        ));
}

#[test]
fn string_labels_map_with_label_values() {
    let directory = tempfile::tempdir().unwrap();
    let rows = "{\"question\": \"q1\", \"response\": \"r1\", \"verdict\": \"correct\"}\n\
                {\"question\": \"q1\", \"response\": \"r2\", \"verdict\": \"wrong\"}\n";
    let input = write(directory.path(), "g.jsonl", rows.as_bytes());
    let out = directory.path().join("g.parquet");
    import()
        .arg(&input)
        .args([
            "--label-col",
            "verdict",
            "--label-values",
            "correct,wrong",
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(labels(&read_table(&out).unwrap(), &out), [true, false]);
    import()
        .arg(&input)
        .args(["--label-col", "verdict"])
        .assert()
        .code(1)
        .stderr(contains("--label-values CORRECT,INCORRECT"));
    let input = write(
        directory.path(),
        "h.jsonl",
        format!("{rows}{{\"question\": \"q1\", \"response\": \"r3\", \"verdict\": \"maybe\"}}\n")
            .as_bytes(),
    );
    import()
        .arg(&input)
        .args(["--label-col", "verdict", "--label-values", "correct,wrong"])
        .assert()
        .code(1)
        .stderr(contains(
            "row 3, column `verdict`: label `maybe` is neither `correct` nor `wrong`",
        ));
    for bad in ["correct", "correct,correct", ",wrong"] {
        import()
            .arg(&input)
            .args(["--label-values", bad])
            .assert()
            .code(2)
            .stderr(contains("--label-values"));
    }
}

#[test]
fn steps_list_is_joined_and_first_error_step_becomes_its_char_offset() {
    // ProcessBench's shape: a list of steps and the 0-based index of the first wrong one
    // (-1: none).
    let directory = tempfile::tempdir().unwrap();
    let rows = [
        serde_json::json!({"id": "pb-0", "problem": "2+3*4?", "label": 1,
            "steps": ["3*4 = 12.", "2 + 12 = 15.", "So the answer is 15."],
            "final_answer_correct": false}),
        serde_json::json!({"id": "pb-1", "problem": "1+1?", "label": -1,
            "steps": ["1 + 1 = 2.", "The answer is 2."], "final_answer_correct": true}),
    ];
    let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    let input = write(directory.path(), "pb.jsonl", text.join("\n").as_bytes());
    let out = directory.path().join("g.parquet");
    let mapping = [
        "--id-col",
        "id",
        "--question-col",
        "problem",
        "--response-col",
        "steps",
        "--label-col",
        "final_answer_correct",
        "--first-error-step-col",
        "label",
    ];
    import()
        .arg(&input)
        .args(mapping)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert_eq!(
        rows[0].response,
        "3*4 = 12.\n2 + 12 = 15.\nSo the answer is 15."
    );
    // The step boundaries are kept: 0, 9 + 1 = 10, 10 + 12 + 1 = 23; 0, 10 + 1 = 11.
    let starts: Vec<Vec<u32>> = frame
        .column("step_starts")
        .unwrap()
        .list()
        .unwrap()
        .amortized_iter()
        .map(|s| {
            s.unwrap()
                .as_ref()
                .u32()
                .unwrap()
                .into_no_null_iter()
                .collect()
        })
        .collect();
    assert_eq!(starts, [vec![0, 10, 23], vec![0, 11]]);
    // Step 1 starts after "3*4 = 12." (9 characters) and its newline: offset 10.
    assert_eq!(rows[0].first_error_char, Some(10));
    assert_eq!(rows[1].first_error_char, None);
    assert_eq!(rows[1].response, "1 + 1 = 2.\nThe answer is 2.");

    // The steps of a text response are its lines: "a\n" + "bb\n" puts step 2 at 5.
    let input = write(
        directory.path(),
        "t.jsonl",
        b"{\"question\": \"q\", \"response\": \"a\\nbb\\nccc\", \"is_correct\": false, \"step\": 2}\n",
    );
    import()
        .arg(&input)
        .args(["--first-error-step-col", "step", "-o"])
        .arg(&out)
        .assert()
        .success();
    let frame = read_table(&out).unwrap();
    let rows = generations_from_frame(&frame, &out).unwrap();
    assert_eq!(rows[0].first_error_char, Some(5));
    assert!(frame.column("step_starts").is_err(), "only list responses");
    import()
        .arg(&input)
        .args(["--first-error-step-col", "step"])
        .args(["--response-col", "question"])
        .assert()
        .code(1)
        .stderr(contains(
            "row 1, column `step`: first error step 2, but the response has 1 steps",
        ));
}

#[test]
fn zeroeval_integer_ids_take_the_benchmark_from_the_flag_or_the_file_name() {
    use predicates::prelude::PredicateBooleanExt;
    // ZeroEval's MATH level 5 results number their questions from 0.
    let directory = tempfile::tempdir().unwrap();
    let lines = [
        serde_json::json!({"id": 0, "question": "Sum of the integers?", "gold": "-15",
            "model": "m-a", "output": "{\"answer\": \"15\"}", "pred": "15", "is_correct": false}),
        serde_json::json!({"id": 1, "question": "How many values of n?", "gold": "18",
            "model": "m-a", "output": "{\"answer\": \"18\"}", "pred": "18", "is_correct": true}),
    ];
    let text: Vec<String> = lines.iter().map(|r| r.to_string()).collect();
    let input = write(
        directory.path(),
        "math-l5_test_2rows.jsonl",
        text.join("\n").as_bytes(),
    );
    let out = directory.path().join("g.parquet");
    import()
        .arg(&input)
        .args(["--from", "zeroeval", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("using `math-l5` from the file name"));
    let frame = read_table(&out).unwrap();
    assert_eq!(strings(&frame, "benchmark"), ["math-l5", "math-l5"]);
    assert_eq!(strings(&frame, "question_id"), ["0", "1"]);
    import()
        .arg(&input)
        .args(["--benchmark", "MATH-L5", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("from the file name").not());
    assert_eq!(
        strings(&read_table(&out).unwrap(), "benchmark"),
        ["MATH-L5", "MATH-L5"]
    );
    import()
        .arg("-")
        .pipe_stdin(&input)
        .unwrap()
        .assert()
        .code(2)
        .stderr(contains("pass --benchmark"));
}

#[test]
fn tolerance_is_opt_in_absolute_unless_relative_and_checked_at_parse_time() {
    let directory = tempfile::tempdir().unwrap();
    let lines: Vec<String> = [
        ("q1", "So\nA: 10001", "10000"),
        ("q2", "The answer is 0.33333.", "\\frac{1}{3}"),
        ("q3", "#### 2.5002", "2.5"),
    ]
    .iter()
    .map(|(question, response, expected)| {
        serde_json::json!({"question": question, "response": response, "expected_answer": expected})
            .to_string()
    })
    .collect();
    let input = write(directory.path(), "g.jsonl", lines.join("\n").as_bytes());
    let out = directory.path().join("g.parquet");
    // |0.33333 - 1/3| = 3.3e-6, |2.5002 - 2.5| = 2e-4; relative to 2.5: 1e-4 · 2.5 = 2.5e-4.
    // 10001 vs 10000 are integers: exact whatever the tolerance.
    for (flags, expected) in [
        (&[][..], [false, false, false]),
        (&["--tolerance", "1e-4"][..], [false, true, false]),
        (
            &["--tolerance", "1e-4", "--tolerance-kind", "relative"][..],
            [false, true, true],
        ),
    ] {
        import()
            .arg(&input)
            .arg("--grade")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        assert_eq!(
            labels(&read_table(&out).unwrap(), &out),
            expected,
            "{flags:?}"
        );
    }
    for flags in [
        &["--grade", "--tolerance", "-1"][..],
        &["--grade", "--tolerance", "nan"][..],
        &["--grade", "--tolerance-kind", "relative"][..],
        &["--tolerance", "1e-4"][..],
    ] {
        import().arg(&input).args(flags).assert().code(2);
    }
}

#[test]
fn prm800k_steps_through_the_generic_mapping_match_the_prm800k_importer() {
    // The phase-1 rows rewritten as a list of steps with the index of the first bad one: the
    // generic mapping must give the same responses and first_error_char as `--from prm800k`.
    let Some(shared) = shared_data() else { return };
    let source = shared.join("prm800k/phase1_test.stepwise-critic.parquet");
    let directory = tempfile::tempdir().unwrap();
    let reference = directory.path().join("prm.parquet");
    import()
        .arg(&source)
        .arg("-o")
        .arg(&reference)
        .assert()
        .success();
    let frame = read_table(&source).unwrap();
    let columns = Columns::new(&frame, &source);
    let instruction = columns.str("instruction").unwrap();
    let next = columns.str("next_response").unwrap();
    let rating = columns.f64("rating").unwrap();
    let previous = frame.column("responses").unwrap().list().unwrap().clone();
    let mut lines = Vec::new();
    for row in 0..frame.height() {
        let Some(rating) = rating.get(row) else {
            continue;
        };
        let mut steps: Vec<String> = previous
            .get_as_series(row)
            .map(|s| {
                s.str()
                    .unwrap()
                    .iter()
                    .map(|v| v.unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let first_error = if rating == -1.0 {
            steps.len() as i64
        } else {
            -1
        };
        steps.push(next.get(row).unwrap().to_owned());
        lines.push(
            serde_json::json!({"instruction": instruction.get(row), "steps": steps,
                "first_error": first_error, "ok": rating != -1.0, "sample": format!("row{row}")})
            .to_string(),
        );
    }
    let input = write(directory.path(), "steps.jsonl", lines.join("\n").as_bytes());
    let out = directory.path().join("generic.parquet");
    import()
        .arg(&input)
        .args(["--question-col", "instruction", "--response-col", "steps"])
        .args(["--label-col", "ok", "--first-error-step-col", "first_error"])
        .args(["--benchmark", "prm800k", "-o"])
        .arg(&out)
        .assert()
        .success();
    let ours = generations_from_frame(&read_table(&out).unwrap(), &out).unwrap();
    let theirs = generations_from_frame(&read_table(&reference).unwrap(), &reference).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(
            (
                &a.question_id,
                &a.sample,
                &a.response,
                a.first_error_char,
                a.is_correct
            ),
            (
                &b.question_id,
                &b.sample,
                &b.response,
                b.first_error_char,
                b.is_correct
            )
        );
    }
    assert!(ours.iter().any(|g| g.first_error_char.is_some()));
}

#[test]
fn a_missing_model_object_is_an_error_or_a_counted_skip() {
    let directory = tempfile::tempdir().unwrap();
    let rows = "{\"question\": \"q1\", \"a\": {\"is_correct\": true, \"solution\": \"x\"}, \
                \"b\": {\"is_correct\": false, \"solution\": \"y\"}}\n\
                {\"question\": \"q2\", \"a\": {\"is_correct\": true, \"solution\": \"z\"}, \"b\": null}\n";
    let input = write(directory.path(), "g.jsonl", rows.as_bytes());
    let mapping = ["--sample-cols", "a,b", "--response-col", "solution"];
    import()
        .arg(&input)
        .args(mapping)
        .assert()
        .code(1)
        .stderr(contains("row 2, column `b.solution`: null value"));
    let out = directory.path().join("g.parquet");
    import()
        .arg(&input)
        .args(mapping)
        .arg("--skip-bad")
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains(
            "1 rows with a null required value or label skipped",
        ));
    let frame = read_table(&out).unwrap();
    assert_eq!(strings(&frame, "sample"), ["a", "b", "a"]);
    assert_eq!(strings(&frame, "response"), ["x", "y", "z"]);
}

// ---------------------------------------------------------------- contracts every tool keeps

#[test]
fn a_header_only_input_is_an_error_for_qrm_cat() {
    let directory = tempfile::tempdir().unwrap();
    let header = write(
        directory.path(),
        "header.csv",
        b"question_id,question,response\n",
    );
    let rows = write(
        directory.path(),
        "rows.csv",
        b"question_id,question,response\nq1,a,b\n",
    );
    Command::cargo_bin("qrm-cat")
        .unwrap()
        .arg(&rows)
        .arg(&header)
        .args(["-o", "-", "--format", "jsonl"])
        .assert()
        .code(1)
        .stderr(contains(
            "header.csv: the input has columns (question_id, question, response) but no rows",
        ));
}

#[test]
fn only_tools_with_skip_bad_suggest_it() {
    use predicates::prelude::PredicateBooleanExt;
    let directory = tempfile::tempdir().unwrap();
    let bad = write(directory.path(), "bad.jsonl", b"{\"a\": 1}\n{\"a\": \n");
    for tool in ["qrm-cat", "qrm-auroc", "qrm-filter", "qrm-score"] {
        let mut command = Command::cargo_bin(tool).unwrap();
        command.arg(&bad);
        if tool == "qrm-score" {
            command.args(["--rm", "missing-model"]);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("--skip-bad"), "{tool}: {stderr}");
    }
    // qrm-pairs has the flag, so it says so.
    pairs()
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(contains("line 2: malformed JSON").and(contains("use --skip-bad")));
}
