//! Column names, types and row structs of the three canonical tables.
//!
//! Every tool reads and writes these names; `docs/schemas.md` is the same list for users.
//! Tools keep columns they do not know, so user metadata flows through a chain untouched.
//!
//! | table | written by | read by |
//! |---|---|---|
//! | generations | `qrm-import`, `qrm-synth`, `qrm-pairs --holdout` | `qrm-pairs`, `qrm-score` |
//! | pairs | `qrm-import` (preference formats), `qrm-pairs` | `qrm-train`, `qrm-embed` |
//! | scores | `qrm-score` | `qrm-auroc`, `qrm-filter`, `qrm-plot` |

use polars::prelude::*;

use crate::error::{Error, Result};
use std::path::Path;

// ---------------------------------------------------------------- generations

/// Utf8, not null. Identifies a question; samples of one question share it. Writers: import, synth.
pub const QUESTION_ID: &str = "question_id";
/// Utf8, not null. The problem text, without any prompt template.
pub const QUESTION: &str = "question";
/// Utf8, not null. The generated solution text (the part the reward model scores).
pub const RESPONSE: &str = "response";
/// Boolean, not null. Whether the response's final answer is correct.
pub const IS_CORRECT: &str = "is_correct";
/// Utf8, nullable. The final answer extracted from the response; majority voting buckets by it.
pub const PREDICTED_ANSWER: &str = "predicted_answer";
/// Utf8, nullable. The reference answer.
pub const EXPECTED_ANSWER: &str = "expected_answer";
/// Utf8, not null. Benchmark name (`gsm8k`, `synth-id`, ...); metrics group by it.
pub const BENCHMARK: &str = "benchmark";
/// Utf8, not null. Which sample or model produced the response: `greedy`, `rs3`, a model name.
pub const SAMPLE: &str = "sample";
/// Int32, nullable. Character offset in `response` where the first wrong step begins, when known.
pub const FIRST_ERROR_CHAR: &str = "first_error_char";
/// Int8, nullable, optional. PRM800K human rating of the last step of `response` (-1, 0, 1).
pub const STEP_RATING: &str = "step_rating";
/// Int32, optional. PRM800K: 0-based index of the rated step (the number of steps before it).
pub const STEP_INDEX: &str = "step_index";

// ---------------------------------------------------------------- pairs

/// Utf8, not null, unique. Identifies a preference pair. Writers: import, pairs.
pub const PAIR_ID: &str = "pair_id";
/// Utf8, not null. The preferred (correct) response.
pub const CHOSEN: &str = "chosen";
/// Utf8, not null. The dispreferred (incorrect) response.
pub const REJECTED: &str = "rejected";
/// Float32, nullable. Optional preference margin for the Bradley–Terry loss.
pub const MARGIN: &str = "margin";
/// Utf8, optional. `sample` of the chosen response (written by `qrm-pairs`, for tracing).
pub const CHOSEN_SAMPLE: &str = "chosen_sample";
/// Utf8, optional. `sample` of the rejected response (written by `qrm-pairs`, for tracing).
pub const REJECTED_SAMPLE: &str = "rejected_sample";

// ---------------------------------------------------------------- scores

/// Utf8, not null. Name of the reward model that produced the scores. Writer: score.
pub const RM: &str = "rm";
/// Utf8, not null. `{rm}@{12 hex}`: the model's identity, a hash of its weights, tokenizer and
/// goal state, so two models under one `rm` name are told apart. Writer: score.
pub const RM_ID: &str = "rm_id";
/// Float32, not null. Sequence reward: the value head at the final scored token.
pub const REWARD: &str = "reward";
/// UInt32, not null. Number of response tokens scored.
pub const RESPONSE_TOKENS: &str = "response_tokens";
/// `List<Float32>`, not null. Value head output at each response token (reward of that prefix).
pub const TOKEN_REWARDS: &str = "token_rewards";
/// `List<Float32>`, nullable. Cosine of each response token's hidden state with the goal state;
/// null when no goal state was given.
pub const Q_VALUES: &str = "q_values";
/// `List<Utf8>`, optional (`qrm-score --emit-tokens`). The decoded scored tokens.
pub const TOKENS: &str = "tokens";
/// `List<UInt32>`, optional (`qrm-score --emit-tokens`). Char offset in `response` where each
/// scored token starts; the EOS sits at the response's char length. Read by `qrm-filter
/// --localise` together with `first_error_char`.
pub const TOKEN_OFFSETS: &str = "token_offsets";
/// UInt64, shard outputs only. The row's position in the unsharded input.
pub const ROW_INDEX: &str = "row_index";

/// One row of the generations table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generation {
    pub question_id: String,
    pub question: String,
    pub response: String,
    pub is_correct: bool,
    pub predicted_answer: Option<String>,
    pub expected_answer: Option<String>,
    pub benchmark: String,
    pub sample: String,
    pub first_error_char: Option<i32>,
}

/// One row of the pairs table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pair {
    pub pair_id: String,
    pub question_id: String,
    pub question: String,
    pub chosen: String,
    pub rejected: String,
    pub benchmark: String,
    pub margin: Option<f32>,
}

fn str_column<'a>(name: &str, values: impl Iterator<Item = &'a str>) -> Column {
    Column::new(name.into(), values.collect::<Vec<_>>())
}

fn opt_str_column<'a>(name: &str, values: impl Iterator<Item = Option<&'a str>>) -> Column {
    Column::new(name.into(), values.collect::<Vec<_>>())
}

/// Builds a generations frame with the canonical column order and types.
pub fn generations_frame(rows: &[Generation]) -> Result<DataFrame> {
    let columns = vec![
        str_column(QUESTION_ID, rows.iter().map(|r| r.question_id.as_str())),
        str_column(QUESTION, rows.iter().map(|r| r.question.as_str())),
        str_column(RESPONSE, rows.iter().map(|r| r.response.as_str())),
        Column::new(
            IS_CORRECT.into(),
            rows.iter().map(|r| r.is_correct).collect::<Vec<_>>(),
        ),
        opt_str_column(
            PREDICTED_ANSWER,
            rows.iter().map(|r| r.predicted_answer.as_deref()),
        ),
        opt_str_column(
            EXPECTED_ANSWER,
            rows.iter().map(|r| r.expected_answer.as_deref()),
        ),
        str_column(BENCHMARK, rows.iter().map(|r| r.benchmark.as_str())),
        str_column(SAMPLE, rows.iter().map(|r| r.sample.as_str())),
        Column::new(
            FIRST_ERROR_CHAR.into(),
            rows.iter().map(|r| r.first_error_char).collect::<Vec<_>>(),
        ),
    ];
    DataFrame::new(rows.len(), columns).map_err(|e| Error::table("<generations>", e))
}

/// Builds a pairs frame with the canonical column order and types.
pub fn pairs_frame(rows: &[Pair]) -> Result<DataFrame> {
    let columns = vec![
        str_column(PAIR_ID, rows.iter().map(|r| r.pair_id.as_str())),
        str_column(QUESTION_ID, rows.iter().map(|r| r.question_id.as_str())),
        str_column(QUESTION, rows.iter().map(|r| r.question.as_str())),
        str_column(CHOSEN, rows.iter().map(|r| r.chosen.as_str())),
        str_column(REJECTED, rows.iter().map(|r| r.rejected.as_str())),
        str_column(BENCHMARK, rows.iter().map(|r| r.benchmark.as_str())),
        Column::new(
            MARGIN.into(),
            rows.iter().map(|r| r.margin).collect::<Vec<_>>(),
        ),
    ];
    DataFrame::new(rows.len(), columns).map_err(|e| Error::table("<pairs>", e))
}

/// Typed, validated access to the columns of a frame read from `path`.
///
/// Every accessor names the file and column in its error, and the `*_not_null` variants also
/// name the first row holding a null.
pub struct Columns<'a> {
    pub frame: &'a DataFrame,
    pub path: &'a Path,
}

impl<'a> Columns<'a> {
    pub fn new(frame: &'a DataFrame, path: &'a Path) -> Self {
        Self { frame, path }
    }

    fn get(&self, name: &str) -> Result<&'a Column> {
        self.frame.column(name).map_err(|_| Error::MissingColumn {
            path: self.path.to_owned(),
            column: name.to_owned(),
            available: self
                .frame
                .get_column_names()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn type_error(&self, name: &str, expected: &str, found: &DataType) -> Error {
        Error::ColumnType {
            path: self.path.to_owned(),
            column: name.to_owned(),
            expected: expected.to_owned(),
            found: found.to_string(),
        }
    }

    fn first_null(&self, name: &str, column: &Column) -> Result<()> {
        if column.null_count() == 0 {
            return Ok(());
        }
        let row = column
            .is_null()
            .iter()
            .position(|is_null| is_null == Some(true))
            .unwrap_or(0);
        Err(Error::bad_value(self.path, row, name, "null value"))
    }

    /// True when the frame has the column.
    pub fn has(&self, name: &str) -> bool {
        self.frame.column(name).is_ok()
    }

    /// A Utf8 column (nulls allowed).
    pub fn str(&self, name: &str) -> Result<&'a StringChunked> {
        let column = self.get(name)?;
        column
            .str()
            .map_err(|_| self.type_error(name, "Utf8", column.dtype()))
    }

    /// A Utf8 column without nulls.
    pub fn str_not_null(&self, name: &str) -> Result<&'a StringChunked> {
        let values = self.str(name)?;
        self.first_null(name, self.get(name)?)?;
        Ok(values)
    }

    /// A Boolean column without nulls.
    pub fn bool_not_null(&self, name: &str) -> Result<&'a BooleanChunked> {
        let column = self.get(name)?;
        let values = column
            .bool()
            .map_err(|_| self.type_error(name, "Boolean", column.dtype()))?;
        self.first_null(name, column)?;
        Ok(values)
    }

    /// A numeric column cast to f64 (nulls kept as None).
    pub fn f64(&self, name: &str) -> Result<Float64Chunked> {
        let column = self.get(name)?;
        if column.dtype() == &DataType::Null {
            // An all-null column read back from JSON Lines has no type of its own.
            return Ok(Float64Chunked::full_null(name.into(), column.len()));
        }
        if !column.dtype().is_primitive_numeric() {
            return Err(self.type_error(name, "a number", column.dtype()));
        }
        let cast = column
            .cast(&DataType::Float64)
            .map_err(|e| Error::table(self.path, e))?;
        Ok(cast.f64().map_err(|e| Error::table(self.path, e))?.clone())
    }

    /// A List column whose items are numbers, cast to `List<Float64>` (null lists kept).
    pub fn f64_lists(&self, name: &str) -> Result<ListChunked> {
        let column = self.get(name)?;
        match column.dtype() {
            DataType::List(inner) if inner.is_primitive_numeric() => {}
            other => return Err(self.type_error(name, "List<Float32>", other)),
        }
        let cast = column
            .cast(&DataType::List(Box::new(DataType::Float64)))
            .map_err(|e| Error::table(self.path, e))?;
        Ok(cast.list().map_err(|e| Error::table(self.path, e))?.clone())
    }
}

/// Reads a generations frame into row structs, checking names, types and nulls.
pub fn generations_from_frame(frame: &DataFrame, path: &Path) -> Result<Vec<Generation>> {
    let columns = Columns::new(frame, path);
    let question_id = columns.str_not_null(QUESTION_ID)?;
    let question = columns.str_not_null(QUESTION)?;
    let response = columns.str_not_null(RESPONSE)?;
    let is_correct = columns.bool_not_null(IS_CORRECT)?;
    let optional_str = |name: &str| -> Result<Option<&StringChunked>> {
        if columns.has(name) {
            columns.str(name).map(Some)
        } else {
            Ok(None)
        }
    };
    let predicted_answer = optional_str(PREDICTED_ANSWER)?;
    let expected_answer = optional_str(EXPECTED_ANSWER)?;
    let benchmark = optional_str(BENCHMARK)?;
    let sample = optional_str(SAMPLE)?;
    let first_error_char = if columns.has(FIRST_ERROR_CHAR) {
        Some(columns.f64(FIRST_ERROR_CHAR)?)
    } else {
        None
    };
    let mut rows = Vec::with_capacity(frame.height());
    for index in 0..frame.height() {
        rows.push(Generation {
            question_id: question_id.get(index).unwrap_or_default().to_owned(),
            question: question.get(index).unwrap_or_default().to_owned(),
            response: response.get(index).unwrap_or_default().to_owned(),
            is_correct: is_correct.get(index).unwrap_or_default(),
            predicted_answer: predicted_answer.and_then(|c| c.get(index).map(str::to_owned)),
            expected_answer: expected_answer.and_then(|c| c.get(index).map(str::to_owned)),
            benchmark: benchmark
                .and_then(|c| c.get(index))
                .unwrap_or("unknown")
                .to_owned(),
            sample: sample.and_then(|c| c.get(index)).unwrap_or("0").to_owned(),
            first_error_char: first_error_char
                .as_ref()
                .and_then(|c| c.get(index))
                .map(|v| v as i32),
        });
    }
    Ok(rows)
}

/// Reads a pairs frame into row structs, checking names, types and nulls.
pub fn pairs_from_frame(frame: &DataFrame, path: &Path) -> Result<Vec<Pair>> {
    let columns = Columns::new(frame, path);
    let question = columns.str_not_null(QUESTION)?;
    let chosen = columns.str_not_null(CHOSEN)?;
    let rejected = columns.str_not_null(REJECTED)?;
    let pair_id = if columns.has(PAIR_ID) {
        Some(columns.str_not_null(PAIR_ID)?)
    } else {
        None
    };
    let question_id = if columns.has(QUESTION_ID) {
        Some(columns.str_not_null(QUESTION_ID)?)
    } else {
        None
    };
    let benchmark = if columns.has(BENCHMARK) {
        Some(columns.str(BENCHMARK)?)
    } else {
        None
    };
    let margin = if columns.has(MARGIN) {
        Some(columns.f64(MARGIN)?)
    } else {
        None
    };
    let mut rows = Vec::with_capacity(frame.height());
    for index in 0..frame.height() {
        rows.push(Pair {
            pair_id: pair_id
                .and_then(|c| c.get(index))
                .map(str::to_owned)
                .unwrap_or_else(|| index.to_string()),
            question_id: question_id
                .and_then(|c| c.get(index))
                .map(str::to_owned)
                .unwrap_or_else(|| index.to_string()),
            question: question.get(index).unwrap_or_default().to_owned(),
            chosen: chosen.get(index).unwrap_or_default().to_owned(),
            rejected: rejected.get(index).unwrap_or_default().to_owned(),
            benchmark: benchmark
                .and_then(|c| c.get(index))
                .unwrap_or("unknown")
                .to_owned(),
            margin: margin.as_ref().and_then(|c| c.get(index)).map(|v| v as f32),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Cursor;

    use super::*;
    use crate::pipeline::io::{encode, Format};
    use crate::score::scoring::{score_columns, RowScore, ScoreOptions};

    /// The Arrow type as docs/schemas.md spells it: `Utf8View`, `LargeList<Float32>`, ...
    fn arrow_type_name(dtype: &ArrowDataType) -> String {
        match dtype {
            ArrowDataType::LargeList(field) => {
                format!("LargeList<{}>", arrow_type_name(&field.dtype))
            }
            ArrowDataType::List(field) => format!("List<{}>", arrow_type_name(&field.dtype)),
            other => format!("{other:?}"),
        }
    }

    /// `## name` → (column → (type, optional)) from the tables of docs/schemas.md.
    fn documented_tables() -> BTreeMap<String, BTreeMap<String, (String, bool)>> {
        let path = crate::testing::project_root().join("docs/schemas.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut tables: BTreeMap<String, BTreeMap<String, (String, bool)>> = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("## ") {
                section = name.trim().to_owned();
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | `column` | type | null | meaning |
            if cells.len() >= 5 && cells[1].starts_with('`') && cells[1].ends_with('`') {
                let column = cells[1].trim_matches('`').to_owned();
                let optional = cells[3].contains("optional");
                tables
                    .entry(section.clone())
                    .or_default()
                    .insert(column, (cells[2].to_owned(), optional));
            }
        }
        tables
    }

    fn arrow_schema(frame: &mut DataFrame, format: Format) -> Vec<(String, String)> {
        let mut bytes = Vec::new();
        encode(frame, format, &mut bytes, Path::new("<test>")).unwrap();
        let schema = match format {
            Format::Parquet => ParquetReader::new(Cursor::new(bytes)).schema().unwrap(),
            Format::Arrow => IpcReader::new(Cursor::new(bytes)).schema().unwrap(),
            _ => unreachable!("only Parquet and Arrow carry Arrow types"),
        };
        schema
            .iter_values()
            .map(|field| (field.name.to_string(), arrow_type_name(&field.dtype)))
            .collect()
    }

    #[test]
    fn docs_schemas_md_lists_every_written_column_with_its_arrow_type() {
        let documented = documented_tables();
        let generation = Generation {
            question_id: "q1".into(),
            question: "1+1?".into(),
            response: "2".into(),
            is_correct: true,
            predicted_answer: Some("2".into()),
            expected_answer: Some("2".into()),
            benchmark: "toy".into(),
            sample: "0".into(),
            first_error_char: Some(0),
        };
        let pair = Pair {
            pair_id: "q1#0".into(),
            question_id: "q1".into(),
            question: "1+1?".into(),
            chosen: "2".into(),
            rejected: "3".into(),
            benchmark: "toy".into(),
            margin: Some(1.0),
        };
        let score = RowScore {
            reward: Some(0.5),
            token_rewards: Some(vec![0.1, 0.5]),
            q_values: Some(vec![0.2, 0.3]),
            tokens: Some(vec!["2".into(), "</s>".into()]),
            token_offsets: Some(vec![0, 1]),
        };
        let options = ScoreOptions {
            rm_name: "bt".into(),
            rm_id: "bt@0123456789ab".into(),
            batch_tokens: 2048,
            goal: None,
            emit_tokens: true,
            shared_prompt: true,
        };
        let scores = DataFrame::new(1, score_columns(&[score], &options).unwrap()).unwrap();
        let written = [
            ("generations", generations_frame(&[generation]).unwrap()),
            ("pairs", pairs_frame(&[pair]).unwrap()),
            ("scores", scores),
        ];
        for (table, mut frame) in written {
            let doc = documented
                .get(table)
                .unwrap_or_else(|| panic!("docs/schemas.md has no `## {table}` table"));
            for format in [Format::Parquet, Format::Arrow] {
                let schema = arrow_schema(&mut frame, format);
                for (column, arrow_type) in &schema {
                    let (doc_type, _) = doc.get(column).unwrap_or_else(|| {
                        panic!("{table}: column `{column}` is written but not documented")
                    });
                    assert_eq!(
                        doc_type, arrow_type,
                        "{table}.{column} ({format:?}): docs say {doc_type}, files hold {arrow_type}"
                    );
                }
                for (column, (_, optional)) in doc {
                    assert!(
                        *optional || schema.iter().any(|(name, _)| name == column),
                        "{table}: `{column}` is documented as always present but not written"
                    );
                }
            }
        }
    }
}
