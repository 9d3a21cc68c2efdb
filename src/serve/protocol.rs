//! qrm-serve's wire format: the requests it reads, the replies it writes, and how a full
//! prompt+response text is split into the prompt and the scored response.
//!
//! `POST /get_reward` is OpenRLHF's remote reward-model protocol: `{"query": [str],
//! "prompts": [str], "labels": [...]}` → `{"rewards": [float], "scores": [float],
//! "extra_logs": {name: [float]}}`. Old clients send only `query` and read only `rewards`;
//! `labels` is accepted and ignored. `POST /score` takes `{"items": [{"prompt", "response"}],
//! "per_token": bool}`, where `prompt` is the question as qrm-score's `question` column holds
//! it (the server applies the template), and replies in the shape of vLLM's pooling reply
//! (`object`, `model`, `data[{index, ...}]`, `usage`).
//!
//! # Where the response starts in a `query`
//! OpenRLHF sends `query[i]` = the policy's prompt text followed by the generated response,
//! decoded with special tokens. [`Splitter::split`] finds the response:
//! 1. when `prompts[i]` is sent and `query[i]` starts with it, the response is the rest and the
//!    prompt is scored as sent (already templated by the policy's chat template);
//! 2. else after the last occurrence of the template's text after `{question}` (its *response
//!    marker*: `<|im_end|>\n<|im_start|>assistant\n` for chatml, `\n\nAssistant:\n` for nemo);
//!    the `raw` template has no marker (one newline, which responses hold too), so it needs
//!    `prompts`;
//! 3. else the item is refused (422) saying both.
//!
//! Under `--eos append` a response that ends with the EOS token's text (OpenRLHF decodes the
//! generated EOS into the query) loses it once, since the encoder appends the EOS itself: the
//! reward is read at one EOS, as in training and in qrm-score.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::template::{Encoder, EosPolicy, Template, Truncated, PLACEHOLDER};

/// `POST /get_reward`, OpenRLHF's request.
#[derive(Debug, Clone, Deserialize)]
pub struct RewardRequest {
    /// Full prompt+response texts.
    pub query: Vec<String>,
    /// The prompts the responses were generated from (newer clients).
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    /// Ground-truth labels of rule-based rewards; accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    pub labels: Option<serde_json::Value>,
}

/// `POST /get_reward`'s reply. `scores` repeats `rewards` (OpenRLHF reads `scores` for
/// dynamic filtering and `rewards` for the advantage); with a goal state, `extra_logs` holds
/// `q_last` (Q at the final scored token) and `q_min` (the lowest Q of the response), which
/// OpenRLHF logs per sample.
#[derive(Debug, Clone, Serialize)]
pub struct RewardReply {
    pub rewards: Vec<f32>,
    pub scores: Vec<f32>,
    pub extra_logs: BTreeMap<&'static str, Vec<f32>>,
}

/// `POST /score`.
#[derive(Debug, Clone, Deserialize)]
pub struct ScoreRequest {
    pub items: Vec<ScoreItem>,
    /// Also return `token_rewards`, `q_values` (with a goal) and `tokens`.
    #[serde(default)]
    pub per_token: bool,
}

/// One (question, response) to score; `prompt` is the question the template wraps.
#[derive(Debug, Clone, Deserialize)]
pub struct ScoreItem {
    pub prompt: String,
    pub response: String,
}

/// `POST /score`'s reply, shaped like vLLM's pooling reply.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreReply {
    pub object: &'static str,
    /// The model's `rm_id`, as the `rm_id` column of qrm-score.
    pub model: String,
    pub data: Vec<ScoreDatum>,
    pub usage: Usage,
}

/// One item's scores, in request order (`index`).
#[derive(Debug, Clone, Serialize)]
pub struct ScoreDatum {
    pub index: usize,
    pub object: &'static str,
    /// Null when the item was longer than `--max-len` under `--truncate skip`.
    pub reward: Option<f32>,
    /// Scored positions: the response tokens and the EOS when appended.
    pub response_tokens: usize,
    /// `no`, `prompt`, `response`, `prompt_and_response` or `skipped`: what `--max-len` cut.
    pub truncated: &'static str,
    /// Q at the final scored token and the response's lowest Q (with a goal state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_last: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_min: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_rewards: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_values: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
}

/// Tokens run through the model for a request (prompt and response, no padding).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The name of a truncation outcome in replies.
pub fn truncated_name(truncated: Truncated) -> &'static str {
    match truncated {
        Truncated::No => "no",
        Truncated::Prompt => "prompt",
        Truncated::Response => "response",
        Truncated::PromptAndResponse => "prompt_and_response",
        Truncated::Skipped => "skipped",
    }
}

/// Finds where the response starts in a full prompt+response text (module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splitter {
    /// The template's text after `{question}` when it holds more than whitespace.
    marker: Option<String>,
    /// The EOS token's text under `--eos append`.
    eos_text: Option<String>,
}

impl Splitter {
    pub fn new(encoder: &Encoder) -> Self {
        Splitter {
            marker: response_marker(&encoder.template),
            eos_text: match encoder.eos {
                EosPolicy::Append => encoder.tokenizer.id_to_token(encoder.eos_id),
                EosPolicy::None => None,
            },
        }
    }

    /// `(prompt text, response)` of `query`; `prompt` is the client's `prompts[i]`. The error
    /// says why neither rule applied.
    pub fn split<'a>(
        &self,
        query: &'a str,
        prompt: Option<&str>,
    ) -> Result<(&'a str, &'a str), String> {
        let (prompt_text, response) = match prompt.filter(|p| query.starts_with(*p)) {
            Some(prompt) => query.split_at(prompt.len()),
            None => {
                let Some(marker) = &self.marker else {
                    return Err(match prompt {
                        Some(_) => "the query does not start with its `prompts` entry, and the \
                                    template has no response marker to split it at"
                            .into(),
                        None => "the template has no response marker to find the response by \
                                 (the raw template ends in a newline only): send `prompts`"
                            .into(),
                    });
                };
                match query.rfind(marker.as_str()) {
                    Some(at) => query.split_at(at + marker.len()),
                    None => {
                        let start = match prompt {
                            Some(_) => "the query does not start with its `prompts` entry and ",
                            None => "",
                        };
                        return Err(format!(
                            "{start}the query does not hold the template's response marker {:?}",
                            marker
                        ));
                    }
                }
            }
        };
        let response = match &self.eos_text {
            Some(eos) => response.strip_suffix(eos.as_str()).unwrap_or(response),
            None => response,
        };
        Ok((prompt_text, response))
    }
}

/// The template's text after `{question}`, when it holds more than whitespace.
fn response_marker(template: &Template) -> Option<String> {
    let text = template.text();
    let after = &text[text.find(PLACEHOLDER)? + PLACEHOLDER.len()..];
    (!after.trim().is_empty()).then(|| after.to_owned())
}

/// The JSON error body every 4xx/5xx reply carries: `{"error": {"message", "type", "code"}}`.
pub fn error_body(message: &str, kind: &str, code: u16) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": kind, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::template::CHATML_TEMPLATE;

    /// The fixture encoder (its EOS is `<|im_end|>`) with another template.
    fn encoder(template: Template) -> Encoder {
        let encoder = crate::testing::tiny_encoder();
        assert_eq!(
            encoder.tokenizer.id_to_token(encoder.eos_id).as_deref(),
            Some("<|im_end|>")
        );
        Encoder {
            template,
            ..encoder
        }
    }

    #[test]
    fn a_query_splits_at_its_prompt_or_else_at_the_template_marker() {
        let splitter = Splitter::new(&encoder(Template::ChatMl));
        let prompt = Template::ChatMl.prompt("What is 2 + 2?");
        let query = format!("{prompt}2 + 2 = 4.<|im_end|>");
        // The client's prompt: the rest is the response, less the decoded EOS.
        assert_eq!(
            splitter.split(&query, Some(&prompt)),
            Ok((prompt.as_str(), "2 + 2 = 4."))
        );
        // No prompt: the last `<|im_end|>\n<|im_start|>assistant\n` ends the prompt.
        assert_eq!(
            splitter.split(&query, None),
            Ok((prompt.as_str(), "2 + 2 = 4."))
        );
        // A system turn before the user's: the prompt keeps it.
        let system = format!("<|im_start|>system\nBe brief.<|im_end|>\n{prompt}");
        let query = format!("{system}4");
        assert_eq!(splitter.split(&query, None), Ok((system.as_str(), "4")));
        // A prompt the query does not start with falls back to the marker.
        assert_eq!(
            splitter.split(&query, Some("another prompt")),
            Ok((system.as_str(), "4"))
        );
        let error = splitter.split("no template here", None).unwrap_err();
        assert!(error.contains("response marker"), "{error}");
        assert!(CHATML_TEMPLATE.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn the_raw_template_needs_prompts() {
        let splitter = Splitter::new(&encoder(Template::Raw));
        assert_eq!(splitter.split("Q?\nA.", Some("Q?\n")), Ok(("Q?\n", "A.")));
        let error = splitter.split("Q?\nA.", None).unwrap_err();
        assert!(error.contains("send `prompts`"), "{error}");
        let error = splitter.split("Q?\nA.", Some("other")).unwrap_err();
        assert!(error.contains("does not start with"), "{error}");
    }

    #[test]
    fn the_eos_text_is_removed_once_and_only_under_append() {
        let mut encoder = encoder(Template::ChatMl);
        let prompt = Template::ChatMl.prompt("q");
        let query = format!("{prompt}a<|im_end|><|im_end|>");
        let splitter = Splitter::new(&encoder);
        assert_eq!(splitter.split(&query, None).unwrap().1, "a<|im_end|>");
        encoder.eos = EosPolicy::None;
        let splitter = Splitter::new(&encoder);
        assert_eq!(
            splitter.split(&query, None).unwrap().1,
            "a<|im_end|><|im_end|>"
        );
    }
}
