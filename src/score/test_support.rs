//! Fixtures the score tests share: a generations table, scoring options over the tiny
//! fixtures, and a frame comparison.

use candle_core::{Device, Tensor};
use polars::prelude::*;

use crate::pipeline::schema::{
    QUESTION, Q_VALUES, RESPONSE, RESPONSE_TOKENS, REWARD, TOKEN_REWARDS,
};
use crate::score::rows::ScoreOptions;

pub fn generations(rows: usize) -> DataFrame {
    let questions: Vec<String> = (0..rows)
        .map(|i| format!("Question {i}: what is {i} plus {}?", i * 7))
        .collect();
    let responses: Vec<String> = (0..rows)
        .map(|i| format!("{i} + {} = {}. {}", i * 7, i * 8, "Check. ".repeat(i % 5)))
        .collect();
    let notes: Vec<u32> = (0..rows as u32).collect();
    DataFrame::new(
        rows,
        vec![
            Column::new(QUESTION.into(), questions),
            Column::new(RESPONSE.into(), responses),
            Column::new("note".into(), notes),
        ],
    )
    .unwrap()
}

/// `questions` × `per_question` rows of sample sets, interleaved (row i asks question
/// i mod `questions`), with responses of different lengths.
pub fn sample_sets(questions: usize, per_question: usize) -> DataFrame {
    let rows = questions * per_question;
    let question: Vec<String> = (0..rows)
        .map(|i| {
            format!(
                "Question {}: what is {} times 3?",
                i % questions,
                i % questions
            )
        })
        .collect();
    let responses: Vec<String> = (0..rows)
        .map(|i| format!("{} {}", i * 3, "so ".repeat(i % 7)))
        .collect();
    let notes: Vec<u32> = (0..rows as u32).collect();
    DataFrame::new(
        rows,
        vec![
            Column::new(QUESTION.into(), question),
            Column::new(RESPONSE.into(), responses),
            Column::new("note".into(), notes),
        ],
    )
    .unwrap()
}

pub fn options(batch_tokens: usize, goal: bool) -> ScoreOptions {
    let goal = goal.then(|| {
        Tensor::from_iter((0..32).map(|i| (i as f32 - 15.5) / 8.0), &Device::Cpu).unwrap()
    });
    ScoreOptions {
        rm_name: "mock".into(),
        rm_id: "mock@0123456789ab".into(),
        batch_tokens,
        goal,
        emit_tokens: false,
        shared_prompt: true,
    }
}

pub fn list_values(frame: &DataFrame, name: &str) -> Vec<Option<Vec<f32>>> {
    let lists = frame.column(name).unwrap().list().unwrap().clone();
    (0..lists.len())
        .map(|i| {
            lists
                .get_as_series(i)
                .map(|s| s.f32().unwrap().iter().flatten().collect())
        })
        .collect()
}

pub fn assert_frames_close(a: &DataFrame, b: &DataFrame, tolerance: f32) {
    assert_eq!(a.get_column_names(), b.get_column_names());
    assert_eq!(a.height(), b.height());
    for name in [TOKEN_REWARDS, Q_VALUES] {
        for (x, y) in list_values(a, name).iter().zip(list_values(b, name)) {
            let (x, y) = (x.clone().unwrap_or_default(), y.unwrap_or_default());
            assert_eq!(x.len(), y.len());
            for (u, v) in x.iter().zip(&y) {
                assert!((u - v).abs() <= tolerance, "{name}: {u} vs {v}");
            }
        }
    }
    let rewards = |f: &DataFrame| -> Vec<Option<f32>> {
        f.column(REWARD).unwrap().f32().unwrap().iter().collect()
    };
    for (u, v) in rewards(a).iter().zip(rewards(b)) {
        assert!((u.unwrap() - v.unwrap()).abs() <= tolerance);
    }
    for name in ["note", RESPONSE_TOKENS, QUESTION] {
        assert_eq!(a.column(name).unwrap(), b.column(name).unwrap(), "{name}");
    }
}

/// The final hidden states, (1, seq_len, hidden), of one sequence run alone (no padding): the
/// by-hand reference the batched paths are checked against.
pub fn hidden_alone(model: &crate::model::RewardModel, input_ids: &[u32]) -> Tensor {
    let ids = Tensor::new(input_ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&ids, &ids.ones_like().unwrap())
        .unwrap()
        .hidden
}
