//! Row scoring: each row's sequence reward, per-token rewards and Q-values, and the score
//! columns they become.
//!
//! For each row, `template(question) ++ response ++ [eos]` (see [`crate::model::template`]) goes
//! through the model. The scored positions are the response tokens followed by the EOS when
//! `--eos append`: `token_rewards` and `q_values` hold one value per scored position, so
//! `reward` (read at the final scored token) equals the last element of `token_rewards`, and
//! `response_tokens` is their length. `q_values` is the cosine of each scored position's hidden
//! state with the goal state (null without a goal).
//!
//! Every row carries `rm` (the model's name) and `rm_id`, `rm@` plus 12 hex chars of a hash
//! of the weights, tokenizer and goal ([`ModelIdentity::rm_id`]), so two different models in
//! folders of the same name do not pool.
//!
//! Sample sets (N responses to one question) share their prompt: with
//! [`ScoreOptions::shared_prompt`] the prompt's keys and values are computed once and its rows'
//! responses attend to them ([`crate::model::transformer::KvCache`]), which gives the scores of
//! the whole sequences while running each prompt token once instead of N times.

use std::path::Path;

use candle_core::{DType, Tensor};
use polars::prelude::*;

use crate::error::{Error, Result};
use crate::model::batching::{run_batches_sharing_prompts, TokenModel};
#[cfg(doc)]
use crate::model::loading::ModelIdentity;
use crate::model::template::{Encoded, Encoder, TruncationCounts};
use crate::model::RewardOutput;
use crate::pipeline::schema::{
    Columns, QUESTION, Q_VALUES, RESPONSE, RESPONSE_TOKENS, REWARD, RM, RM_ID, TOKENS,
    TOKEN_OFFSETS, TOKEN_REWARDS,
};
use crate::score::goal::cosine_with_goal;

#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Stored in the `rm` column.
    pub rm_name: String,
    /// Stored in the `rm_id` column: see [`ModelIdentity::rm_id`].
    pub rm_id: String,
    /// Padded tokens per batch (`rows × longest`).
    pub batch_tokens: usize,
    /// The goal state, (hidden,); `q_values` is null without it.
    pub goal: Option<Tensor>,
    /// Also write `tokens` (the decoded scored tokens) and `token_offsets`.
    pub emit_tokens: bool,
    /// Score rows of one encoded prompt after that prompt's cached keys and values, computed
    /// once (`--shared-prompt on`, the default); off runs every row whole. The scores are the
    /// same either way (to float rounding).
    pub shared_prompt: bool,
}

/// The scores of one row; all `None` for a row skipped by truncation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowScore {
    pub reward: Option<f32>,
    pub token_rewards: Option<Vec<f32>>,
    pub q_values: Option<Vec<f32>>,
    pub tokens: Option<Vec<String>>,
    /// Char offset in the response where each scored token starts.
    pub token_offsets: Option<Vec<u32>>,
}

/// Counts reported after scoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreSummary {
    /// Rows in the (sharded) input.
    pub rows: usize,
    /// Rows scored by this run (not counting rows resumed from a partial output).
    pub scored: usize,
    /// Rows skipped because an earlier run had written them (`--resume`).
    pub resumed: usize,
    /// Tokens run through the model by this run (prompt and response, without padding).
    pub tokens: usize,
    pub truncation: TruncationCounts,
}

/// Scores encoded rows; the result is in the order of `encoded`.
///
/// With [`ScoreOptions::shared_prompt`] (and a model with a prompt cache), rows whose encoded
/// prompts are equal are scored after that prompt's cached keys and values, computed once
/// ([`run_batches_sharing_prompts`]); the scores equal those of the whole sequences. Rows of a
/// prompt of their own run whole.
pub fn score_encoded(
    model: &dyn TokenModel,
    encoder: &Encoder,
    encoded: &[Encoded],
    options: &ScoreOptions,
    mut on_tokens: impl FnMut(usize),
) -> Result<Vec<RowScore>> {
    let mut scores = vec![RowScore::default(); encoded.len()];
    run_batches_sharing_prompts(
        model,
        encoded,
        options.batch_tokens.max(1),
        options.shared_prompt,
        |indices, output, offset| {
            let rows = Batch {
                indices,
                output,
                offset,
            };
            on_tokens(rows.fill(&mut scores, encoder, encoded, options)?);
            Ok(())
        },
    )?;
    Ok(scores)
}

/// One batch's model output: row `r` belongs to `encoded[indices[r]]`, whose position `p` is
/// column `p − offset` of the tensors (`offset` the cached prompt's length, 0 for whole rows).
struct Batch<'a> {
    indices: &'a [usize],
    output: &'a RewardOutput,
    offset: usize,
}

impl Batch<'_> {
    /// Writes the batch's rows into `scores`; returns the tokens of their whole sequences.
    fn fill(
        &self,
        scores: &mut [RowScore],
        encoder: &Encoder,
        encoded: &[Encoded],
        options: &ScoreOptions,
    ) -> Result<usize> {
        let hidden = &self.output.hidden;
        let rewards = self
            .output
            .token_rewards
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let cosines = match &options.goal {
            Some(goal) => {
                let (rows, seq_len, width) = hidden.dims3()?;
                if goal.elem_count() != width {
                    return Err(Error::Model(format!(
                        "the goal state has {} values but the model's hidden size is {width}: \
                         it was made with another model",
                        goal.elem_count()
                    )));
                }
                let flat = hidden.reshape((rows * seq_len, width))?; // (rows*seq_len, hidden)
                let cosines = cosine_with_goal(&flat, goal)?; // (rows*seq_len,)
                Some(cosines.reshape((rows, seq_len))?.to_vec2::<f32>()?)
            }
            None => None,
        };
        let mut tokens = 0;
        for (row, &index) in self.indices.iter().enumerate() {
            let example = &encoded[index];
            let (start, end) = (example.response_start, example.input_ids.len());
            tokens += end;
            let tokens_text = if options.emit_tokens {
                Some(scored_tokens(encoder, example)?)
            } else {
                None
            };
            let (first, last) = (start - self.offset, end - self.offset);
            scores[index] = RowScore {
                reward: Some(rewards[row][last - 1]),
                token_rewards: Some(rewards[row][first..last].to_vec()),
                q_values: cosines.as_ref().map(|c| c[row][first..last].to_vec()),
                tokens: tokens_text,
                token_offsets: options
                    .emit_tokens
                    .then(|| example.response_offsets.clone()),
            };
        }
        Ok(tokens)
    }
}

/// The scored tokens of an example (the response's, then the EOS when appended), each decoded
/// alone: the `tokens` column.
pub fn scored_tokens(encoder: &Encoder, example: &Encoded) -> Result<Vec<String>> {
    example.input_ids[example.response_start..]
        .iter()
        .map(|&id| {
            encoder
                .tokenizer
                .decode(&[id], false)
                .map_err(|e| Error::Model(format!("tokenizer: {e}")))
        })
        .collect()
}

/// A List column from one series per row (`None` → a null list), cast to `List<inner>`.
fn list_column(
    name: &str,
    rows: impl Iterator<Item = Option<Series>>,
    inner: DataType,
) -> Result<Column> {
    let lists: ListChunked = rows.collect();
    let lists = lists
        .into_series()
        .cast(&DataType::List(Box::new(inner)))
        .map_err(|e| Error::table("<scores>", e))?;
    Ok(lists.with_name(name.into()).into_column())
}

/// The score columns for some rows: `rm`, `rm_id`, `reward`, `response_tokens`,
/// `token_rewards`, `q_values`, and `tokens` and `token_offsets` when asked.
pub fn score_columns(scores: &[RowScore], options: &ScoreOptions) -> Result<Vec<Column>> {
    let series = |values: Option<&[f32]>| values.map(|v| Series::new(PlSmallStr::EMPTY, v));
    let mut columns = vec![
        Column::new(RM.into(), vec![options.rm_name.as_str(); scores.len()]),
        Column::new(RM_ID.into(), vec![options.rm_id.as_str(); scores.len()]),
        Column::new(
            REWARD.into(),
            scores.iter().map(|s| s.reward).collect::<Vec<_>>(),
        ),
        Column::new(
            RESPONSE_TOKENS.into(),
            scores
                .iter()
                .map(|s| s.token_rewards.as_ref().map_or(0, |t| t.len() as u32))
                .collect::<Vec<u32>>(),
        ),
        list_column(
            TOKEN_REWARDS,
            scores.iter().map(|s| series(s.token_rewards.as_deref())),
            DataType::Float32,
        )?,
        list_column(
            Q_VALUES,
            scores.iter().map(|s| series(s.q_values.as_deref())),
            DataType::Float32,
        )?,
    ];
    if options.emit_tokens {
        columns.push(list_column(
            TOKENS,
            scores.iter().map(|s| {
                s.tokens
                    .as_deref()
                    .map(|t| Series::new(PlSmallStr::EMPTY, t))
            }),
            DataType::String,
        )?);
        columns.push(list_column(
            TOKEN_OFFSETS,
            scores.iter().map(|s| {
                s.token_offsets
                    .as_deref()
                    .map(|o| Series::new(PlSmallStr::EMPTY, o))
            }),
            DataType::UInt32,
        )?);
    }
    Ok(columns)
}

/// Scores every row of a generations frame (columns `question`, `response`), keeping its other
/// columns and replacing any score columns it already had.
pub fn score_frame(
    model: &dyn TokenModel,
    encoder: &Encoder,
    frame: &DataFrame,
    path: &Path,
    options: &ScoreOptions,
    on_tokens: impl FnMut(usize),
) -> Result<(DataFrame, ScoreSummary)> {
    let columns = Columns::new(frame, path);
    let questions: Vec<&str> = columns
        .str_not_null(QUESTION)?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let responses: Vec<&str> = columns
        .str_not_null(RESPONSE)?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let encoded = encoder.encode_rows(&questions, &responses)?;
    let mut summary = ScoreSummary {
        rows: frame.height(),
        scored: frame.height(),
        ..ScoreSummary::default()
    };
    for example in &encoded {
        summary.truncation.add(example.truncated);
        summary.tokens += example.input_ids.len();
    }
    let scores = score_encoded(model, encoder, &encoded, options, on_tokens)?;
    let mut out = frame.clone();
    for name in [
        RM,
        RM_ID,
        REWARD,
        RESPONSE_TOKENS,
        TOKEN_REWARDS,
        Q_VALUES,
        TOKENS,
        TOKEN_OFFSETS,
    ] {
        if out.column(name).is_ok() {
            out = out.drop(name).map_err(|e| Error::table(path, e))?;
        }
    }
    let out = out
        .hstack(&score_columns(&scores, options)?)
        .map_err(|e| Error::table(path, e))?;
    Ok((out, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::template::{EosPolicy, Truncation};
    use crate::score::test_support::{
        assert_frames_close, generations, list_values, options, sample_sets,
    };
    use candle_core::Device;

    use crate::testing::{tiny_encoder, tiny_llama};

    #[test]
    fn scores_do_not_depend_on_batch_size_or_padding() {
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(13);
        let path = Path::new("<test>");
        let (one, _) =
            score_frame(&model, &encoder, &frame, path, &options(1, true), |_| {}).unwrap();
        let (many, _) = score_frame(
            &model,
            &encoder,
            &frame,
            path,
            &options(100_000, true),
            |_| {},
        )
        .unwrap();
        let (some, _) =
            score_frame(&model, &encoder, &frame, path, &options(150, true), |_| {}).unwrap();
        assert_frames_close(&one, &many, 1e-5);
        assert_frames_close(&one, &some, 1e-5);
    }

    #[test]
    fn shared_prompts_give_the_scores_of_whole_rows_in_input_order() {
        // 4 questions × 6 samples, interleaved, with a goal (q_values) and decoded tokens.
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = sample_sets(4, 6);
        let path = Path::new("<test>");
        let encoded: Vec<Encoded> = (0..frame.height())
            .map(|i| {
                let text = |name: &str| frame.column(name).unwrap().str().unwrap().get(i);
                encoder
                    .encode(text(QUESTION).unwrap(), text(RESPONSE).unwrap())
                    .unwrap()
            })
            .collect();
        let groups = crate::model::batching::prompt_groups(&encoded);
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[1], vec![1, 5, 9, 13, 17, 21]);
        let mut shared = options(100_000, true);
        shared.emit_tokens = true;
        let whole = ScoreOptions {
            shared_prompt: false,
            ..shared.clone()
        };
        let (expected, _) = score_frame(&model, &encoder, &frame, path, &whole, |_| {}).unwrap();
        // One batch per prompt, and batches of 1 to 3 rows (150 tokens hold 2–3 rows of ~50).
        for batch_tokens in [100_000, 150, 1] {
            let shared = ScoreOptions {
                batch_tokens,
                ..shared.clone()
            };
            let mut tokens = 0;
            let (got, summary) =
                score_frame(&model, &encoder, &frame, path, &shared, |n| tokens += n).unwrap();
            assert_frames_close(&got, &expected, 1e-5);
            assert_eq!(tokens, summary.tokens, "progress counts every row's tokens");
            for name in ["tokens", "token_offsets"] {
                assert_eq!(got.column(name).unwrap(), expected.column(name).unwrap());
            }
        }
        // Row 5 by hand: its scores read off the whole sequence run alone.
        let hidden = crate::score::test_support::hidden_alone(&model, &encoded[5].input_ids);
        let rewards = model.rewards_from_hidden(&hidden).unwrap();
        let rewards = rewards.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let (scored, _) = score_frame(&model, &encoder, &frame, path, &shared, |_| {}).unwrap();
        let got = list_values(&scored, TOKEN_REWARDS)[5].clone().unwrap();
        let expected = &rewards[encoded[5].response_start..];
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-5, "{g} vs {e}");
        }
    }

    #[test]
    fn reward_is_the_last_token_reward_and_rows_keep_input_order() {
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(9);
        let (scored, summary) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<test>"),
            &options(200, false),
            |_| {},
        )
        .unwrap();
        assert_eq!(summary.rows, 9);
        assert_eq!(
            scored.column("note").unwrap(),
            frame.column("note").unwrap()
        );
        let rewards: Vec<f32> = scored
            .column(REWARD)
            .unwrap()
            .f32()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let lengths: Vec<u32> = scored
            .column(RESPONSE_TOKENS)
            .unwrap()
            .u32()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        for (row, token_rewards) in list_values(&scored, TOKEN_REWARDS).into_iter().enumerate() {
            let token_rewards = token_rewards.unwrap();
            assert_eq!(token_rewards.last(), Some(&rewards[row]));
            assert_eq!(token_rewards.len(), lengths[row] as usize);
            let response = frame
                .column(RESPONSE)
                .unwrap()
                .str()
                .unwrap()
                .get(row)
                .unwrap();
            let encoded = encoder.encode("q", response).unwrap();
            assert_eq!(lengths[row] as usize, encoded.response_len + 1);
        }
        assert_eq!(scored.column(Q_VALUES).unwrap().null_count(), 9);
    }

    #[test]
    fn q_values_are_cosines_with_the_goal() {
        let mut encoder = tiny_encoder();
        encoder.eos = EosPolicy::None;
        let model = tiny_llama();
        let frame = generations(4);
        let options = options(64, true);
        let (scored, _) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<test>"),
            &options,
            |_| {},
        )
        .unwrap();
        let q_values = list_values(&scored, Q_VALUES);
        for row in q_values.iter().flatten() {
            assert!(row.iter().all(|q| (-1.0..=1.0).contains(q)));
        }
        // Row 2 by hand: hidden states of the lone sequence, cosine in f64.
        let encoded = encoder
            .encode(
                "Question 2: what is 2 plus 14?",
                "2 + 14 = 16. Check. Check. ",
            )
            .unwrap();
        let hidden = crate::score::test_support::hidden_alone(&model, &encoded.input_ids);
        let hidden = hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let goal = options.goal.unwrap().to_vec1::<f32>().unwrap();
        let expected: Vec<f64> = hidden[encoded.response_start..]
            .iter()
            .map(|h| {
                let dot: f64 = h
                    .iter()
                    .zip(&goal)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let norm = |v: &[f32]| v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
                dot / (norm(h) * norm(&goal))
            })
            .collect();
        let got = q_values[2].as_ref().unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert!((f64::from(*g) - e).abs() < 1e-5, "{g} vs {e}");
        }
    }

    #[test]
    fn truncation_cases_are_counted_and_skipped_rows_are_null() {
        let mut encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(10);
        let lengths: Vec<(usize, usize)> = (0..10)
            .map(|i| {
                let questions = frame.column(QUESTION).unwrap().str().unwrap();
                let responses = frame.column(RESPONSE).unwrap().str().unwrap();
                let e = encoder
                    .encode(questions.get(i).unwrap(), responses.get(i).unwrap())
                    .unwrap();
                (e.response_start, e.response_len + 1)
            })
            .collect();
        let scored: Vec<usize> = lengths.iter().map(|(_, r)| *r).collect();
        let max_len = (scored.iter().min().unwrap() + scored.iter().max().unwrap()) / 2;
        let expect_prompt = lengths
            .iter()
            .filter(|(p, r)| p + r > max_len && *r <= max_len)
            .count();
        let expect_response = lengths.iter().filter(|(_, r)| *r > max_len).count();
        assert!(expect_prompt > 0 && expect_response > 0, "{lengths:?}");
        encoder.max_len = Some(max_len);
        let (_, summary) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<t>"),
            &options(100, false),
            |_| {},
        )
        .unwrap();
        // A row whose response is cut lost its whole prompt first, so it counts in both.
        assert_eq!(summary.truncation.prompt, expect_prompt + expect_response);
        assert_eq!(summary.truncation.response, expect_response);
        assert_eq!(summary.truncation.skipped, 0);

        encoder.truncation = Truncation::Skip;
        let (scored, summary) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<t>"),
            &options(100, false),
            |_| {},
        )
        .unwrap();
        assert_eq!(summary.truncation.skipped, expect_prompt + expect_response);
        assert_eq!(
            scored.column(REWARD).unwrap().null_count(),
            expect_prompt + expect_response
        );
    }

    #[test]
    fn scores_carry_rm_and_rm_id_next_to_it() {
        let (model, encoder) = (tiny_llama(), tiny_encoder());
        let (scored, _) = score_frame(
            &model,
            &encoder,
            &generations(2),
            Path::new("<t>"),
            &options(100, false),
            |_| {},
        )
        .unwrap();
        let names = scored.get_column_names();
        let rm = names.iter().position(|n| n.as_str() == RM).unwrap();
        assert_eq!(names[rm + 1].as_str(), RM_ID);
        let ids: Vec<_> = scored
            .column(RM_ID)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(ids, [Some("mock@0123456789ab"); 2]);
    }

    #[test]
    fn a_goal_of_another_hidden_size_is_an_error() {
        let (model, encoder) = (tiny_llama(), tiny_encoder());
        let mut options = options(100, false);
        options.goal = Some(Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap());
        let error = score_frame(
            &model,
            &encoder,
            &generations(2),
            Path::new("<t>"),
            &options,
            |_| {},
        )
        .unwrap_err();
        assert!(error.to_string().contains("hidden size is 32"), "{error}");
    }
}
