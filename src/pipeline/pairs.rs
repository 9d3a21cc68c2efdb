//! Preference pairs as the paper built them: a correct (chosen) and an incorrect (rejected)
//! solution of the same question.
//!
//! * Default: within each question, correct and incorrect solutions are shuffled and zipped,
//!   so every solution is used at most once and a question gives
//!   `min(#correct, #incorrect)` pairs (the paper: 257,584 pairs over 12,518 problems).
//! * `reuse`: every correct × incorrect combination, in a shuffled order.
//! * `max_per_question` caps either.
//!
//! Randomness is a ChaCha8 stream seeded from the seed and the question id, and solutions are
//! put in a canonical order (by `sample`) before shuffling, so the pairs of a question do not
//! depend on the row order of the input or on the other questions. The held-out split picks
//! whole questions, so a reward model is evaluated on questions it never saw.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use polars::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::pipeline::schema::{
    generations_from_frame, pairs_frame, Columns, Generation, Pair, BENCHMARK, CHOSEN,
    CHOSEN_SAMPLE, EXPECTED_ANSWER, FIRST_ERROR_CHAR, PREDICTED_ANSWER, REJECTED, REJECTED_SAMPLE,
    SAMPLE,
};

/// How pairs are formed within a question.
#[derive(Debug, Clone, Default)]
pub struct PairingOptions {
    /// Seeds every random choice (with the question id).
    pub seed: u64,
    /// Allow a solution in several pairs: all correct × incorrect combinations.
    pub reuse: bool,
    /// At most this many pairs per question.
    pub max_per_question: Option<usize>,
}

/// Everything `qrm-pairs` does besides pairing.
#[derive(Debug, Clone, Default)]
pub struct PairsOptions {
    pub pairing: PairingOptions,
    /// Fraction of questions (of all questions in the input) to hold out.
    pub holdout_fraction: Option<f64>,
    /// Use only a seeded subset of this many questions (drawn before the split): a smaller run
    /// on the same data.
    pub max_questions: Option<usize>,
    /// At most this many samples (a seeded subset) per held-out question.
    pub holdout_samples: Option<usize>,
    /// Skip rows whose `(question_id, sample)` repeats an earlier row instead of failing.
    pub skip_bad: bool,
    /// Pair only within groups of a question sharing this column's value (PRM800K's
    /// `prefix_id`: a good and a bad continuation of one prefix).
    pub group_col: Option<String>,
}

/// Counts for the stderr summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairSummary {
    /// Generation rows read (before duplicate skipping).
    pub generations: usize,
    /// Distinct questions used (all of the input's unless `max_questions` left some out).
    pub questions: usize,
    /// Questions left out by `max_questions`.
    pub questions_left_out: usize,
    /// Questions used with at least one correct and one incorrect solution.
    pub questions_with_both_labels: usize,
    /// Rows skipped under `skip_bad` because their `(question_id, sample)` repeated.
    pub duplicate_rows_skipped: usize,
    /// Questions held out (all their generations go to the holdout file).
    pub held_out_questions: usize,
    /// Generations of the held-out questions.
    pub held_out_generations: usize,
    /// Training questions that gave at least one pair.
    pub paired_questions: usize,
    /// Training questions skipped because all their solutions are correct.
    pub skipped_all_correct: usize,
    /// Training questions skipped because all their solutions are incorrect.
    pub skipped_all_incorrect: usize,
    /// Pairs written.
    pub pairs: usize,
    /// With a group column: groups that gave at least one pair.
    pub paired_groups: Option<usize>,
}

impl PairSummary {
    /// Logs the summary to stderr, as `qrm-pairs` prints it: what was read and used, the held
    /// out questions (written to `holdout`, when a split was asked for), the skipped
    /// single-label questions and the pairs written (info); repeated rows skipped (warn).
    pub fn log(&self, holdout: Option<&Path>) {
        for (warning, line) in self.lines(holdout) {
            if warning {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line}");
            }
        }
    }

    /// The lines [`PairSummary::log`] prints, each with whether it is a warning.
    pub fn lines(&self, holdout: Option<&Path>) -> Vec<(bool, String)> {
        let mut lines = Vec::new();
        lines.push((
            false,
            if self.questions_left_out > 0 {
                format!(
                    "read {} generations over {} questions; using {} (--max-questions), {} of \
                     them with both labels",
                    self.generations,
                    self.questions + self.questions_left_out,
                    self.questions,
                    self.questions_with_both_labels
                )
            } else {
                format!(
                    "read {} generations over {} questions; {} questions with both labels",
                    self.generations, self.questions, self.questions_with_both_labels
                )
            },
        ));
        if self.duplicate_rows_skipped > 0 {
            lines.push((
                true,
                format!(
                    "{} rows repeating a (question_id, sample) skipped",
                    self.duplicate_rows_skipped
                ),
            ));
        }
        if let Some(path) = holdout {
            lines.push((
                false,
                format!(
                    "held out {} questions ({} generations) -> {}",
                    self.held_out_questions,
                    self.held_out_generations,
                    path.display()
                ),
            ));
        }
        lines.push((
            false,
            format!(
                "skipped {} single-label questions ({} all correct, {} all incorrect)",
                self.skipped_all_correct + self.skipped_all_incorrect,
                self.skipped_all_correct,
                self.skipped_all_incorrect
            ),
        ));
        lines.push((
            false,
            match self.paired_groups {
                Some(groups) => format!(
                    "wrote {} pairs over {} questions ({groups} groups with both labels)",
                    self.pairs, self.paired_questions
                ),
                None => format!(
                    "wrote {} pairs over {} questions",
                    self.pairs, self.paired_questions
                ),
            },
        ));
        lines
    }
}

/// A pair as indices into the generation rows it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairIndex {
    pub chosen: usize,
    pub rejected: usize,
}

/// What [`build_pairs`] produces.
#[derive(Debug)]
pub struct PairsOutput {
    /// The pairs table (canonical columns plus `chosen_sample`, `rejected_sample`).
    pub pairs: DataFrame,
    /// Held-out generations (all input columns kept), when a split was asked for.
    pub holdout: Option<DataFrame>,
    pub summary: PairSummary,
}

/// A ChaCha8 generator for one question: seeded with SHA-256 of the seed and the question id,
/// so a question's draws are the same whatever else is in the input.
pub fn question_rng(seed: u64, question_id: &str) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(b"qrm-pairs\0");
    hasher.update(seed.to_le_bytes());
    hasher.update(question_id.as_bytes());
    ChaCha8Rng::from_seed(hasher.finalize().into())
}

/// Indices of the rows to keep so that `(question_id, sample)` is unique: an error naming both
/// rows (1-based) on the first repeat, or, under `skip_bad`, the first occurrence kept.
pub fn unique_samples(rows: &[Generation], path: &Path, skip_bad: bool) -> Result<Vec<usize>> {
    let mut first_row: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
    let mut kept = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        match first_row.entry((row.question_id.as_str(), row.sample.as_str())) {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(index);
                kept.push(index);
            }
            std::collections::hash_map::Entry::Occupied(entry) if !skip_bad => {
                return Err(Error::bad_value(
                    path,
                    index,
                    "sample",
                    format!(
                        "question_id `{}` with sample `{}` repeats row {} (each (question_id, sample) \
                         must be unique; use --skip-bad to keep the first)",
                        row.question_id,
                        row.sample,
                        entry.get() + 1
                    ),
                ));
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
        }
    }
    Ok(kept)
}

/// Chooses `round(fraction · n)` of the distinct question ids to hold out: the ids are sorted,
/// shuffled with a ChaCha8 generator seeded from `seed`, and the first ones taken.
pub fn split_questions(question_ids: &[&str], fraction: f64, seed: u64) -> Result<HashSet<String>> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(Error::Usage(format!(
            "--split-questions must be a fraction in [0, 1], got {fraction}"
        )));
    }
    let shuffled = shuffled_questions(question_ids, seed, "\0split");
    let count = (fraction * shuffled.len() as f64).round() as usize;
    Ok(shuffled[..count]
        .iter()
        .map(|id| (*id).to_owned())
        .collect())
}

/// The distinct ids, sorted, then shuffled by a generator keyed by `seed` and `stream`: a prefix
/// is a seeded draw of questions that does not depend on the input's row order.
fn shuffled_questions<'a>(question_ids: &[&'a str], seed: u64, stream: &str) -> Vec<&'a str> {
    let mut unique: Vec<&str> = question_ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut rng = question_rng(seed, stream);
    unique.shuffle(&mut rng);
    unique
}

/// Keeps at most `cap` rows of each question in `held`: a seeded draw per question, made in
/// `sample` order so it does not depend on the input's row order. Returns row indices in input
/// order.
fn cap_samples(rows: &[Generation], held: &[usize], cap: usize, seed: u64) -> Vec<usize> {
    let mut by_question: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &index in held {
        by_question
            .entry(rows[index].question_id.as_str())
            .or_default()
            .push(index);
    }
    let mut kept: Vec<usize> = Vec::with_capacity(held.len());
    for (question_id, mut members) in by_question {
        members.sort_by(|&a, &b| rows[a].sample.cmp(&rows[b].sample).then(a.cmp(&b)));
        let mut rng = question_rng(seed, &format!("{question_id}\0holdout"));
        members.shuffle(&mut rng);
        kept.extend(members.into_iter().take(cap));
    }
    kept.sort_unstable();
    kept
}

/// Pairs one question's rows group by group (`groups[i]` the group of row i); returns the
/// pairs, shuffled together and capped by `max_per_question`, and how many groups gave one.
fn pair_groups(
    rows: &[Generation],
    question_id: &str,
    members: &[usize],
    groups: &[String],
    options: &PairingOptions,
) -> (Vec<PairIndex>, usize) {
    let mut by_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &member in members {
        by_group
            .entry(groups[member].as_str())
            .or_default()
            .push(member);
    }
    let uncapped = PairingOptions {
        max_per_question: None,
        ..options.clone()
    };
    let mut pairs = Vec::new();
    let mut paired = 0;
    for (group, members) in by_group {
        let correct = members.iter().filter(|&&i| rows[i].is_correct).count();
        if correct == 0 || correct == members.len() {
            continue;
        }
        paired += 1;
        pairs.extend(pair_question(
            rows,
            &format!("{question_id}\0{group}"),
            &members,
            &uncapped,
        ));
    }
    pairs.shuffle(&mut question_rng(
        options.seed,
        &format!("{question_id}\0groups"),
    ));
    if let Some(cap) = options.max_per_question {
        pairs.truncate(cap);
    }
    (pairs, paired)
}

/// Pairs one question's solutions (`members`: indices into `rows`, all of one question).
fn pair_question(
    rows: &[Generation],
    question_id: &str,
    members: &[usize],
    options: &PairingOptions,
) -> Vec<PairIndex> {
    // Canonical order, independent of row order: by sample (unique within a question).
    let mut correct: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| rows[i].is_correct)
        .collect();
    let mut incorrect: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| !rows[i].is_correct)
        .collect();
    correct.sort_by(|&a, &b| rows[a].sample.cmp(&rows[b].sample).then(a.cmp(&b)));
    incorrect.sort_by(|&a, &b| rows[a].sample.cmp(&rows[b].sample).then(a.cmp(&b)));
    let mut rng = question_rng(options.seed, question_id);
    let mut pairs: Vec<PairIndex> = if options.reuse {
        let mut all: Vec<PairIndex> = correct
            .iter()
            .flat_map(|&chosen| {
                incorrect
                    .iter()
                    .map(move |&rejected| PairIndex { chosen, rejected })
            })
            .collect();
        all.shuffle(&mut rng);
        all
    } else {
        correct.shuffle(&mut rng);
        incorrect.shuffle(&mut rng);
        correct
            .iter()
            .zip(&incorrect)
            .map(|(&chosen, &rejected)| PairIndex { chosen, rejected })
            .collect()
    };
    if let Some(cap) = options.max_per_question {
        pairs.truncate(cap);
    }
    pairs
}

/// Pairs the solutions of every question in `rows`, questions in sorted id order.
///
/// Returns the pairs (with `pair_id = {question_id}#{k}`), their row indices, and the counts
/// of paired and skipped (single-label) questions in `summary`.
pub fn make_pairs(
    rows: &[Generation],
    options: &PairingOptions,
    summary: &mut PairSummary,
) -> (Vec<Pair>, Vec<PairIndex>) {
    make_grouped_pairs(rows, None, options, summary)
}

/// [`make_pairs`] within groups: with `groups` (a key per row), only rows of one question and
/// one group are paired. Each group is paired as a question would be (every combination under
/// `reuse`), then the question's pairs are shuffled together and `max_per_question` caps them.
/// A question counts as skipped (all correct / all incorrect) by its own labels; one with both
/// labels but no group holding both gives no pairs.
pub fn make_grouped_pairs(
    rows: &[Generation],
    groups: Option<&[String]>,
    options: &PairingOptions,
    summary: &mut PairSummary,
) -> (Vec<Pair>, Vec<PairIndex>) {
    let mut by_question: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, row) in rows.iter().enumerate() {
        by_question
            .entry(row.question_id.as_str())
            .or_default()
            .push(index);
    }
    let mut pairs = Vec::new();
    let mut indices = Vec::new();
    for (question_id, members) in &by_question {
        let correct = members.iter().filter(|&&i| rows[i].is_correct).count();
        if correct == members.len() {
            summary.skipped_all_correct += 1;
            continue;
        }
        if correct == 0 {
            summary.skipped_all_incorrect += 1;
            continue;
        }
        let question_pairs = match groups {
            None => pair_question(rows, question_id, members, options),
            Some(groups) => {
                let (question_pairs, paired) =
                    pair_groups(rows, question_id, members, groups, options);
                *summary.paired_groups.get_or_insert(0) += paired;
                question_pairs
            }
        };
        if !question_pairs.is_empty() {
            summary.paired_questions += 1;
        }
        for (k, index) in question_pairs.into_iter().enumerate() {
            let chosen = &rows[index.chosen];
            pairs.push(Pair {
                pair_id: format!("{question_id}#{k}"),
                question_id: (*question_id).to_owned(),
                question: chosen.question.clone(),
                chosen: chosen.response.clone(),
                rejected: rows[index.rejected].response.clone(),
                benchmark: chosen.benchmark.clone(),
                margin: None,
            });
            indices.push(index);
        }
    }
    summary.pairs = pairs.len();
    (pairs, indices)
}

/// JSON Lines give an all-null column the Null type; casts the optional canonical columns
/// to the types their readers expect (`first_error_char` Int32, answers Utf8).
fn typed_null_columns(frame: &DataFrame, path: &Path) -> Result<DataFrame> {
    let mut typed = frame.clone();
    for (name, dtype) in [
        (FIRST_ERROR_CHAR, DataType::Int32),
        (PREDICTED_ANSWER, DataType::String),
        (EXPECTED_ANSWER, DataType::String),
        (BENCHMARK, DataType::String),
        (SAMPLE, DataType::String),
    ] {
        if let Ok(column) = frame.column(name) {
            if column.dtype() == &DataType::Null {
                let cast = column.cast(&dtype).map_err(|e| Error::table(path, e))?;
                typed.with_column(cast).map_err(|e| Error::table(path, e))?;
            }
        }
    }
    Ok(typed)
}

/// Reads a generations frame, holds out questions if asked, and pairs the rest.
pub fn build_pairs(frame: &DataFrame, path: &Path, options: &PairsOptions) -> Result<PairsOutput> {
    if frame.column(CHOSEN).is_ok() && frame.column(REJECTED).is_ok() {
        return Err(Error::Format {
            path: path.to_owned(),
            message: "this is already a pairs table (it has `chosen` and `rejected`); \
                      qrm-pairs reads generations"
                .to_owned(),
        });
    }
    let mut rows = generations_from_frame(&typed_null_columns(frame, path)?, path)?;
    if frame.column(SAMPLE).is_err() {
        // Without a `sample` column, a question's rows are its samples 0, 1, 2, ...
        let mut seen: HashMap<String, usize> = HashMap::new();
        for row in &mut rows {
            let count = seen.entry(row.question_id.clone()).or_default();
            row.sample = count.to_string();
            *count += 1;
        }
    }
    if rows.is_empty() {
        return Err(Error::EmptyInput {
            path: path.to_owned(),
        });
    }
    let mut summary = PairSummary {
        generations: rows.len(),
        ..PairSummary::default()
    };
    let mut kept = unique_samples(&rows, path, options.skip_bad)?;
    summary.duplicate_rows_skipped = rows.len() - kept.len();
    if let Some(limit) = options.max_questions {
        let ids: Vec<&str> = kept.iter().map(|&i| rows[i].question_id.as_str()).collect();
        let shuffled = shuffled_questions(&ids, options.pairing.seed, "\0subset");
        let used: HashSet<String> = shuffled
            .iter()
            .take(limit)
            .map(|id| (*id).to_owned())
            .collect();
        summary.questions_left_out = shuffled.len() - used.len();
        kept.retain(|&i| used.contains(&rows[i].question_id));
    }

    let mut labels: HashMap<&str, (bool, bool)> = HashMap::new();
    for &index in &kept {
        let row = &rows[index];
        let entry = labels.entry(row.question_id.as_str()).or_default();
        if row.is_correct {
            entry.0 = true;
        } else {
            entry.1 = true;
        }
    }
    summary.questions = labels.len();
    summary.questions_with_both_labels = labels.values().filter(|(c, i)| *c && *i).count();

    let held_out = match options.holdout_fraction {
        Some(fraction) => {
            let ids: Vec<&str> = labels.keys().copied().collect();
            split_questions(&ids, fraction, options.pairing.seed)?
        }
        None => HashSet::new(),
    };
    summary.held_out_questions = held_out.len();
    let (mut held_rows, train_rows): (Vec<usize>, Vec<usize>) = kept
        .iter()
        .partition(|&&index| held_out.contains(&rows[index].question_id));
    if let Some(cap) = options.holdout_samples {
        held_rows = cap_samples(&rows, &held_rows, cap, options.pairing.seed);
    }
    summary.held_out_generations = held_rows.len();

    let train: Vec<Generation> = train_rows.iter().map(|&i| rows[i].clone()).collect();
    let groups = match &options.group_col {
        Some(name) => {
            let values = Columns::new(frame, path).str_not_null(name)?;
            Some(
                train_rows
                    .iter()
                    .map(|&i| values.get(i).unwrap_or_default().to_owned())
                    .collect::<Vec<String>>(),
            )
        }
        None => None,
    };
    let (pairs, indices) =
        make_grouped_pairs(&train, groups.as_deref(), &options.pairing, &mut summary);
    let mut frame_out = pairs_frame(&pairs)?;
    let sample_column = |name: &str, pick: fn(&PairIndex) -> usize| {
        Column::new(
            name.into(),
            indices
                .iter()
                .map(|index| train[pick(index)].sample.as_str())
                .collect::<Vec<_>>(),
        )
    };
    frame_out = frame_out
        .hstack(&[
            sample_column(CHOSEN_SAMPLE, |index| index.chosen),
            sample_column(REJECTED_SAMPLE, |index| index.rejected),
        ])
        .map_err(|e| Error::table("<pairs>", e))?;

    let holdout = match options.holdout_fraction {
        Some(_) => {
            let take = IdxCa::from_vec(
                "index".into(),
                held_rows.iter().map(|&i| i as IdxSize).collect(),
            );
            Some(frame.take(&take).map_err(|e| Error::table(path, e))?)
        }
        None => None,
    };
    Ok(PairsOutput {
        pairs: frame_out,
        holdout,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(question_id: &str, sample: &str, is_correct: bool) -> Generation {
        Generation {
            question_id: question_id.into(),
            question: format!("question {question_id}"),
            response: format!("{question_id}/{sample}"),
            is_correct,
            benchmark: "test".into(),
            sample: sample.into(),
            ..Generation::default()
        }
    }

    /// q1: 3 correct, 2 incorrect; q2: 1 correct, 4 incorrect; q3: all correct; q4: all wrong.
    fn fixture() -> Vec<Generation> {
        let mut rows = Vec::new();
        for (sample, ok) in [
            ("a", true),
            ("b", true),
            ("c", true),
            ("d", false),
            ("e", false),
        ] {
            rows.push(generation("q1", sample, ok));
        }
        for (sample, ok) in [
            ("a", false),
            ("b", true),
            ("c", false),
            ("d", false),
            ("e", false),
        ] {
            rows.push(generation("q2", sample, ok));
        }
        rows.push(generation("q3", "a", true));
        rows.push(generation("q3", "b", true));
        rows.push(generation("q4", "a", false));
        rows
    }

    #[test]
    fn the_summary_logs_reads_holdout_skips_and_pairs() {
        let summary = PairSummary {
            generations: 20,
            questions: 4,
            questions_left_out: 1,
            questions_with_both_labels: 3,
            duplicate_rows_skipped: 2,
            held_out_questions: 1,
            held_out_generations: 5,
            paired_questions: 2,
            skipped_all_correct: 1,
            skipped_all_incorrect: 0,
            pairs: 6,
            paired_groups: None,
        };
        let lines = summary.lines(Some(Path::new("held.parquet")));
        let text = |i: usize| lines[i].1.as_str();
        // 4 used + 1 left out = 5 questions read.
        assert_eq!(
            text(0),
            "read 20 generations over 5 questions; using 4 (--max-questions), 3 of them with \
             both labels"
        );
        assert_eq!(
            lines[1],
            (
                true,
                "2 rows repeating a (question_id, sample) skipped".into()
            )
        );
        assert_eq!(
            text(2),
            "held out 1 questions (5 generations) -> held.parquet"
        );
        assert_eq!(
            text(3),
            "skipped 1 single-label questions (1 all correct, 0 all incorrect)"
        );
        assert_eq!(text(4), "wrote 6 pairs over 2 questions");
        // Nothing left out, no duplicates, no split: three lines.
        let plain = PairSummary {
            questions_left_out: 0,
            duplicate_rows_skipped: 0,
            ..summary
        };
        let lines = plain.lines(None);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0].1,
            "read 20 generations over 4 questions; 3 questions with both labels"
        );
    }

    fn pair_keys(rows: &[Generation], indices: &[PairIndex]) -> Vec<(String, String)> {
        indices
            .iter()
            .map(|i| {
                (
                    rows[i.chosen].response.clone(),
                    rows[i.rejected].response.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn default_pairing_uses_each_solution_once() {
        let rows = fixture();
        let mut summary = PairSummary::default();
        let (pairs, indices) = make_pairs(&rows, &PairingOptions::default(), &mut summary);
        // min(3, 2) + min(1, 4) = 3 pairs; q3 and q4 skipped.
        assert_eq!(pairs.len(), 3);
        assert_eq!(summary.paired_questions, 2);
        assert_eq!(summary.skipped_all_correct, 1);
        assert_eq!(summary.skipped_all_incorrect, 1);
        let mut used: Vec<usize> = indices
            .iter()
            .flat_map(|i| [i.chosen, i.rejected])
            .collect();
        let before = used.len();
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), before, "a solution was used twice");
        for (pair, index) in pairs.iter().zip(&indices) {
            assert!(rows[index.chosen].is_correct && !rows[index.rejected].is_correct);
            assert_eq!(
                rows[index.chosen].question_id,
                rows[index.rejected].question_id
            );
            assert_eq!(pair.question_id, rows[index.chosen].question_id);
        }
        assert_eq!(
            pairs.iter().map(|p| p.pair_id.as_str()).collect::<Vec<_>>(),
            ["q1#0", "q1#1", "q2#0"]
        );
    }

    #[test]
    fn grouped_pairing_stays_inside_each_group() {
        // q1's rows in prefix groups g1 = {a ✓, d ✗}, g2 = {b ✓, c ✓}, g3 = {e ✗};
        // q2: g1 = {a ✗, b ✓}, g2 = {c ✗, d ✗, e ✗}. q3 and q4 (single-label) get "g".
        let rows = fixture();
        let groups: Vec<String> = ["g1", "g2", "g2", "g1", "g3", "g1", "g1", "g2", "g2", "g2"]
            .iter()
            .map(|g| (*g).to_owned())
            .chain(std::iter::repeat_n("g".to_owned(), rows.len() - 10))
            .collect();
        let mut summary = PairSummary::default();
        let options = PairingOptions {
            reuse: true,
            ..PairingOptions::default()
        };
        let (pairs, indices) = make_grouped_pairs(&rows, Some(&groups), &options, &mut summary);
        // Only a/d of q1 and b/a of q2 share a group with both labels; e of q1 (g3) is alone.
        let mut keys = pair_keys(&rows, &indices);
        keys.sort();
        assert_eq!(
            keys,
            [
                ("q1/a".to_owned(), "q1/d".to_owned()),
                ("q2/b".to_owned(), "q2/a".to_owned())
            ]
        );
        assert_eq!(summary.paired_groups, Some(2));
        assert_eq!(summary.paired_questions, 2);
        assert_eq!(pairs.len(), 2);
        for index in &indices {
            assert_eq!(groups[index.chosen], groups[index.rejected]);
        }
        // The same rows with one group per question pair as make_pairs does.
        let one: Vec<String> = rows.iter().map(|r| r.question_id.clone()).collect();
        let (_, grouped) =
            make_grouped_pairs(&rows, Some(&one), &options, &mut PairSummary::default());
        let (_, plain) = make_pairs(&rows, &options, &mut PairSummary::default());
        assert_eq!(grouped.len(), plain.len());
    }

    #[test]
    fn reuse_gives_every_combination_and_cap_truncates() {
        let rows = fixture();
        let mut summary = PairSummary::default();
        let options = PairingOptions {
            reuse: true,
            ..PairingOptions::default()
        };
        let (pairs, indices) = make_pairs(&rows, &options, &mut summary);
        // 3 × 2 + 1 × 4 = 10 combinations, all distinct.
        assert_eq!(pairs.len(), 10);
        let mut keys = pair_keys(&rows, &indices);
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 10);

        let capped = PairingOptions {
            reuse: true,
            max_per_question: Some(2),
            ..PairingOptions::default()
        };
        let (pairs, _) = make_pairs(&rows, &capped, &mut PairSummary::default());
        assert_eq!(pairs.len(), 4);
    }

    #[test]
    fn pairs_do_not_depend_on_row_order() {
        let rows = fixture();
        let mut reversed = rows.clone();
        reversed.reverse();
        for reuse in [false, true] {
            let options = PairingOptions {
                seed: 7,
                reuse,
                max_per_question: None,
            };
            let (a, ia) = make_pairs(&rows, &options, &mut PairSummary::default());
            let (b, ib) = make_pairs(&reversed, &options, &mut PairSummary::default());
            assert_eq!(a, b);
            assert_eq!(pair_keys(&rows, &ia), pair_keys(&reversed, &ib));
        }
    }

    #[test]
    fn different_seeds_give_different_pairings() {
        // With 20 correct and 20 incorrect solutions, two seeds agreeing on every zip is
        // (1/20!)-unlikely; equality would mean the seed is ignored.
        let rows: Vec<Generation> = (0..40)
            .map(|i| generation("q", &format!("{i:02}"), i < 20))
            .collect();
        let pairs_for = |seed| {
            let options = PairingOptions {
                seed,
                ..PairingOptions::default()
            };
            let (_, indices) = make_pairs(&rows, &options, &mut PairSummary::default());
            indices
        };
        assert_eq!(pairs_for(1), pairs_for(1));
        assert_ne!(pairs_for(1), pairs_for(2));
    }

    #[test]
    fn duplicate_sample_is_an_error_naming_both_rows() {
        let mut rows = fixture();
        rows.push(generation("q2", "c", true));
        let error = unique_samples(&rows, Path::new("g.jsonl"), false).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("g.jsonl: row 14"), "{message}");
        assert!(message.contains("repeats row 8"), "{message}");
        let kept = unique_samples(&rows, Path::new("g.jsonl"), true).unwrap();
        assert_eq!(kept.len(), rows.len() - 1);
    }

    #[test]
    fn split_takes_rounded_fraction_of_questions_deterministically() {
        let ids: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let held = split_questions(&refs, 0.3, 1).unwrap();
        assert_eq!(held.len(), 3);
        let mut shuffled = refs.clone();
        shuffled.reverse();
        assert_eq!(split_questions(&shuffled, 0.3, 1).unwrap(), held);
        assert!(split_questions(&refs, 1.5, 1).is_err());
        assert!(split_questions(&refs, f64::NAN, 1).is_err());
        assert_eq!(split_questions(&refs, 0.0, 1).unwrap().len(), 0);
    }

    #[test]
    fn rows_without_a_sample_column_are_numbered_per_question() {
        let rows = fixture();
        let frame = crate::pipeline::schema::generations_frame(&rows)
            .unwrap()
            .drop(SAMPLE)
            .unwrap();
        let output = build_pairs(&frame, Path::new("g"), &PairsOptions::default()).unwrap();
        assert_eq!(output.summary.pairs, 3);
        let chosen: Vec<Option<&str>> = output
            .pairs
            .column(CHOSEN_SAMPLE)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .collect();
        // q1's correct rows are its samples 0, 1, 2; q2's only correct row is its sample 1.
        assert!(chosen[..2]
            .iter()
            .all(|s| ["0", "1", "2"].contains(&s.unwrap())));
        assert_eq!(chosen[2], Some("1"));
    }

    #[test]
    fn build_pairs_keeps_held_out_questions_out_of_pairs() {
        let rows = fixture();
        let mut frame = crate::pipeline::schema::generations_frame(&rows).unwrap();
        frame
            .with_column(Column::new(
                "extra".into(),
                (0..rows.len() as i64).collect::<Vec<_>>(),
            ))
            .unwrap();
        let options = PairsOptions {
            holdout_fraction: Some(0.5),
            ..PairsOptions::default()
        };
        let output = build_pairs(&frame, Path::new("g"), &options).unwrap();
        let summary = &output.summary;
        assert_eq!(summary.generations, 13);
        assert_eq!(summary.questions, 4);
        assert_eq!(summary.questions_with_both_labels, 2);
        assert_eq!(summary.held_out_questions, 2);
        let holdout = output.holdout.unwrap();
        assert_eq!(holdout.height(), summary.held_out_generations);
        assert!(holdout.column("extra").is_ok(), "pass-through column lost");
        let held: HashSet<&str> = holdout
            .column("question_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        for id in output
            .pairs
            .column("question_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
        {
            assert!(!held.contains(id), "held-out question {id} was paired");
        }
        // Every input question is either held out or left for training.
        assert_eq!(
            summary.paired_questions
                + summary.skipped_all_correct
                + summary.skipped_all_incorrect
                + summary.held_out_questions,
            4
        );
    }

    #[test]
    fn max_questions_and_holdout_samples_shrink_the_run_deterministically() {
        let rows = fixture();
        let frame = crate::pipeline::schema::generations_frame(&rows).unwrap();
        let run = |seed| {
            let options = PairsOptions {
                pairing: PairingOptions {
                    seed,
                    ..PairingOptions::default()
                },
                holdout_fraction: Some(0.5),
                max_questions: Some(2),
                holdout_samples: Some(1),
                ..PairsOptions::default()
            };
            build_pairs(&frame, Path::new("g"), &options).unwrap()
        };
        let output = run(3);
        let summary = &output.summary;
        // 4 questions, 2 used: one held out (one sample kept), one for training.
        assert_eq!(summary.questions_left_out, 2);
        assert_eq!(summary.held_out_questions, 1);
        assert_eq!(summary.held_out_generations, 1);
        assert_eq!(output.holdout.as_ref().unwrap().height(), 1);
        assert_eq!(
            summary.paired_questions + summary.skipped_all_correct + summary.skipped_all_incorrect,
            1
        );
        let again = run(3);
        assert_eq!(again.summary, output.summary);
        assert!(again.pairs.equals_missing(&output.pairs));
    }
}
