//! Prompt templates, the EOS policy and the encoding of one (question, response) example.
//!
//! One template and one EOS policy are used for training, goal extraction and scoring. The
//! released code of the paper trained on `template + response + " " + eos` but computed the goal
//! state and the evaluation rewards on `template + response` without EOS, and with a slightly
//! different template (DIGEST §12 items 14–15); qrm does not repeat that mismatch: the policy is
//! a parameter of every tool and is stored with the goal state.
//!
//! The prompt and the response are tokenised separately and concatenated, so the positions of
//! the response tokens are exact (a BPE merge across the prompt/response boundary cannot move
//! them).

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// The clean NeMo template of the paper (App. A.1), as `examples/get_representation.py` spells
/// it: no leading or repeated spaces. `{question}` is replaced by the problem text.
pub const NEMO_TEMPLATE: &str = "System:\nYou're an expert Python programmer and mathematician. \
Help the user to solve this problem using code when necessary. \
Make sure to put the answer (and only answer) inside \\boxed{}.\n\nUser:\n{question}\n\nAssistant:\n";

/// The NeMo template exactly as the released training code evaluates it
/// (`openrlhf/datasets/reward_dataset.py::NEMO_TEMPLATE`): leading and triple spaces from line
/// continuations. Offered to reproduce the release; the clean [`NEMO_TEMPLATE`] is preferred.
pub const NEMO_RELEASE_TEMPLATE: &str = "  System:\n  You're an expert Python programmer and \
mathematician.   Help the user to solve this problem using code when necessary.   \
Make sure to put the answer (and only answer) inside \\boxed{}.\n\nUser:\n{question}\n\nAssistant:\n";

/// The ChatML template of SmolLM2-Instruct (one user turn, then the assistant turn opens).
pub const CHATML_TEMPLATE: &str = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n";

/// The question followed by a newline, nothing else.
pub const RAW_TEMPLATE: &str = "{question}\n";

/// The placeholder every template holds exactly once.
pub const PLACEHOLDER: &str = "{question}";

/// How the question becomes the prompt the response follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// The paper's NeMo format ([`NEMO_TEMPLATE`]).
    Nemo,
    /// The release's indented NeMo string ([`NEMO_RELEASE_TEMPLATE`]).
    NemoRelease,
    /// SmolLM2's ChatML format ([`CHATML_TEMPLATE`]).
    ChatMl,
    /// `{question}\n` ([`RAW_TEMPLATE`]).
    Raw,
    /// A user template read from a file holding `{question}` once.
    File { path: PathBuf, text: String },
}

impl Template {
    /// Parses `nemo`, `nemo-release`, `chatml`, `raw`, or a path to a template file.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "nemo" => Ok(Template::Nemo),
            "nemo-release" => Ok(Template::NemoRelease),
            "chatml" => Ok(Template::ChatMl),
            "raw" => Ok(Template::Raw),
            path => Template::from_file(Path::new(path)),
        }
    }

    /// Reads a template file; it must hold `{question}` exactly once.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let count = text.matches(PLACEHOLDER).count();
        if count != 1 {
            return Err(Error::Format {
                path: path.to_owned(),
                message: format!("a template holds `{PLACEHOLDER}` exactly once, found {count}"),
            });
        }
        Ok(Template::File {
            path: path.to_owned(),
            text,
        })
    }

    /// The template text with its `{question}` placeholder.
    pub fn text(&self) -> &str {
        match self {
            Template::Nemo => NEMO_TEMPLATE,
            Template::NemoRelease => NEMO_RELEASE_TEMPLATE,
            Template::ChatMl => CHATML_TEMPLATE,
            Template::Raw => RAW_TEMPLATE,
            Template::File { text, .. } => text,
        }
    }

    /// The name stored as provenance: `nemo`, `chatml`, `raw`, or the file path.
    pub fn name(&self) -> String {
        match self {
            Template::Nemo => "nemo".into(),
            Template::NemoRelease => "nemo-release".into(),
            Template::ChatMl => "chatml".into(),
            Template::Raw => "raw".into(),
            Template::File { path, .. } => path.display().to_string(),
        }
    }

    /// The prompt for a question.
    pub fn prompt(&self, question: &str) -> String {
        self.text().replacen(PLACEHOLDER, question, 1)
    }
}

/// Clap value parser for `--template`: a known name (nemo, nemo-release, chatml, raw) or an
/// existing file holding `{question}` once; anything else is a usage error at parse time. The
/// text is kept as given (the tools parse it again into a [`Template`]).
pub fn parse_template_arg(text: &str) -> std::result::Result<String, String> {
    match Template::parse(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(error) if std::path::Path::new(text).exists() => Err(error.to_string()),
        Err(_) => Err(format!(
            "`{text}` is neither a template name (nemo, nemo-release, chatml, raw) nor an \
             existing file"
        )),
    }
}

/// Whether an EOS token closes the response.
///
/// `Append` (the default of every tool) appends the tokenizer's EOS token after the response:
/// the sequence reward and the goal state are read at that EOS, as in training. `None` reads
/// them at the last response token, as the paper's released evaluation code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EosPolicy {
    #[default]
    Append,
    None,
}

impl EosPolicy {
    pub fn name(self) -> &'static str {
        match self {
            EosPolicy::Append => "append",
            EosPolicy::None => "none",
        }
    }
}

/// What to do with an example longer than `--max-len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Truncation {
    /// Drop prompt tokens from the left first; when the response alone does not fit, cut it
    /// from the right too (the EOS, when appended, stays last).
    #[default]
    LeftPrompt,
    /// Cut the response from the right first (EOS stays last); when the prompt alone does not
    /// fit, drop prompt tokens from the left too.
    RightResponse,
    /// Do not score the example (its scores are null).
    Skip,
}

/// What truncation did to one example; counted in the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncated {
    #[default]
    No,
    /// Only prompt tokens were dropped.
    Prompt,
    /// Only response tokens were cut; the prompt is whole.
    Response,
    /// Prompt tokens were dropped (often all of them) and the response was cut too.
    PromptAndResponse,
    /// The example was not encoded (`Truncation::Skip`).
    Skipped,
}

impl Truncated {
    /// The case for what was kept: `prompt_lost` when prompt tokens were dropped, `response_cut`
    /// when response tokens were.
    fn of(prompt_lost: bool, response_cut: bool) -> Self {
        match (prompt_lost, response_cut) {
            (false, false) => Truncated::No,
            (true, false) => Truncated::Prompt,
            (false, true) => Truncated::Response,
            (true, true) => Truncated::PromptAndResponse,
        }
    }
}

/// Counts of [`Truncated`] over many examples. `prompt` counts every row that lost prompt
/// tokens and `response` every row whose response was cut, so a row that lost both (its whole
/// prompt, say, and the response's tail) is in both counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TruncationCounts {
    pub prompt: usize,
    pub response: usize,
    pub skipped: usize,
}

impl TruncationCounts {
    pub fn add(&mut self, truncated: Truncated) {
        match truncated {
            Truncated::No => {}
            Truncated::Prompt => self.prompt += 1,
            Truncated::Response => self.response += 1,
            Truncated::PromptAndResponse => {
                self.prompt += 1;
                self.response += 1;
            }
            Truncated::Skipped => self.skipped += 1,
        }
    }

    pub fn merge(&mut self, other: TruncationCounts) {
        self.prompt += other.prompt;
        self.response += other.response;
        self.skipped += other.skipped;
    }
}

impl std::fmt::Display for TruncationCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows lost prompt tokens, {} had the response cut, {} skipped",
            self.prompt, self.response, self.skipped
        )
    }
}

/// One encoded example: `input_ids[response_start..]` are the scored tokens, that is the
/// response tokens followed by the EOS under [`EosPolicy::Append`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    /// Position of the first response token.
    pub response_start: usize,
    /// Number of response tokens kept (the EOS not included).
    pub response_len: usize,
    /// Char offset in the response where each scored token starts: the kept response tokens
    /// (a token that starts inside a multi-byte char points at that char), then the EOS at the
    /// response's char length. [`Encoded::scored_len`] values.
    pub response_offsets: Vec<u32>,
    /// Whether an EOS closes the sequence.
    pub eos: bool,
    pub truncated: Truncated,
}

impl Encoded {
    /// Number of scored positions: the response tokens and the EOS when appended.
    pub fn scored_len(&self) -> usize {
        self.input_ids.len() - self.response_start
    }

    /// Position of the token the sequence reward and the goal state are read at.
    /// `None` when the sequence is empty (a skipped example).
    pub fn final_position(&self) -> Option<usize> {
        self.input_ids.len().checked_sub(1)
    }
}

/// The tokenizer and the encoding settings shared by training, goal extraction and scoring.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub tokenizer: Tokenizer,
    pub template: Template,
    pub eos: EosPolicy,
    pub eos_id: u32,
    pub max_len: Option<usize>,
    pub truncation: Truncation,
}

/// Names tokenizers commonly give their end-of-sequence token, tried in order.
const EOS_CANDIDATES: [&str; 5] = ["<|im_end|>", "<|endoftext|>", "</s>", "<eos>", "<|eot_id|>"];

/// The EOS token id: `eos_token` of a `tokenizer_config.json` beside the tokenizer when there is
/// one, else the first of the usual EOS names the vocabulary holds.
pub fn find_eos_id(tokenizer: &Tokenizer, model_dir: Option<&Path>) -> Result<u32> {
    if let Some(dir) = model_dir {
        let config = dir.join("tokenizer_config.json");
        if let Ok(text) = fs_err::read_to_string(&config) {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Format {
                    path: config.clone(),
                    message: e.to_string(),
                })?;
            let token = match &value["eos_token"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
                }
                _ => None,
            };
            if let Some(id) = token.and_then(|t| tokenizer.token_to_id(&t)) {
                return Ok(id);
            }
        }
    }
    EOS_CANDIDATES
        .iter()
        .find_map(|t| tokenizer.token_to_id(t))
        .ok_or_else(|| Error::Model(format!("no EOS token found (tried {EOS_CANDIDATES:?})")))
}

fn tokenize(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer
        .encode(text, false)
        .map(|encoding| encoding.get_ids().to_vec())
        .map_err(|e| Error::Model(format!("tokenizer: {e}")))
}

/// Token ids of `text` and the char offset where each token starts.
fn tokenize_with_offsets(tokenizer: &Tokenizer, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let encoding = tokenizer
        .encode_char_offsets(text, false)
        .map_err(|e| Error::Model(format!("tokenizer: {e}")))?;
    let offsets = encoding
        .get_offsets()
        .iter()
        .map(|&(start, _)| start as u32)
        .collect();
    Ok((encoding.get_ids().to_vec(), offsets))
}

impl Encoder {
    /// Encodes every (question, response) pair, in parallel, in order.
    pub fn encode_rows(&self, questions: &[&str], responses: &[&str]) -> Result<Vec<Encoded>> {
        use rayon::prelude::*;
        questions
            .par_iter()
            .zip(responses.par_iter())
            .map(|(question, response)| self.encode(question, response))
            .collect()
    }

    /// Encodes `template(question) ++ response ++ [eos]`, truncated to `max_len` by the policy.
    pub fn encode(&self, question: &str, response: &str) -> Result<Encoded> {
        self.encode_prompt_text(&self.template.prompt(question), response)
    }

    /// Encodes `prompt ++ response ++ [eos]` for a prompt that is already templated (a
    /// reward-server client sends the policy's prompt text as it was generated from), truncated
    /// as [`Encoder::encode`] does. `encode(question, r)` is
    /// `encode_prompt_text(&template.prompt(question), r)`.
    pub fn encode_prompt_text(&self, prompt: &str, response: &str) -> Result<Encoded> {
        let mut prompt = tokenize(&self.tokenizer, prompt)?;
        let response_chars = response.chars().count() as u32;
        let (mut response, mut response_offsets) =
            tokenize_with_offsets(&self.tokenizer, response)?;
        let eos = self.eos == EosPolicy::Append;
        let eos_len = usize::from(eos);
        let mut truncated = Truncated::No;
        if let Some(max_len) = self.max_len {
            let total = prompt.len() + response.len() + eos_len;
            if total > max_len {
                let room = max_len.saturating_sub(eos_len);
                match self.truncation {
                    Truncation::Skip => {
                        return Ok(Encoded {
                            truncated: Truncated::Skipped,
                            eos,
                            ..Encoded::default()
                        })
                    }
                    Truncation::LeftPrompt => {
                        let keep_response = response.len().min(room);
                        let keep_prompt = prompt.len().min(room - keep_response);
                        truncated = Truncated::of(
                            keep_prompt < prompt.len(),
                            keep_response < response.len(),
                        );
                        prompt.drain(..prompt.len() - keep_prompt);
                        response.truncate(keep_response);
                        response_offsets.truncate(keep_response);
                    }
                    Truncation::RightResponse => {
                        let keep_prompt = prompt.len().min(room);
                        let keep_response = response.len().min(room - keep_prompt);
                        truncated = Truncated::of(
                            keep_prompt < prompt.len(),
                            keep_response < response.len(),
                        );
                        prompt.drain(..prompt.len() - keep_prompt);
                        response.truncate(keep_response);
                        response_offsets.truncate(keep_response);
                    }
                }
            }
        }
        let response_start = prompt.len();
        let response_len = response.len();
        let mut input_ids = prompt;
        input_ids.extend(response);
        if eos {
            input_ids.push(self.eos_id);
            response_offsets.push(response_chars);
        }
        Ok(Encoded {
            input_ids,
            response_start,
            response_len,
            response_offsets,
            eos,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_as_names_or_existing_files() {
        assert_eq!(parse_template_arg("chatml").as_deref(), Ok("chatml"));
        assert_eq!(
            parse_template_arg("nemo-release").as_deref(),
            Ok("nemo-release")
        );
        let missing = parse_template_arg("chatm").unwrap_err();
        assert!(missing.contains("neither a template name"), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("t.txt");
        std::fs::write(&good, "Q: {question}\nA: ").unwrap();
        let good = good.to_str().unwrap();
        assert_eq!(parse_template_arg(good).as_deref(), Ok(good));
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "no placeholder").unwrap();
        let bad = parse_template_arg(bad.to_str().unwrap()).unwrap_err();
        assert!(bad.contains("exactly once"), "{bad}");
    }

    fn smollm_tokenizer() -> Option<(Tokenizer, PathBuf)> {
        let dir = crate::testing::shared_file("models/smollm2-135m-instruct")?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).ok()?;
        Some((tokenizer, dir))
    }

    fn encoder(template: Template, eos: EosPolicy) -> Option<Encoder> {
        let (tokenizer, dir) = smollm_tokenizer()?;
        let eos_id = find_eos_id(&tokenizer, Some(&dir)).ok()?;
        Some(Encoder {
            tokenizer,
            template,
            eos,
            eos_id,
            max_len: None,
            truncation: Truncation::LeftPrompt,
        })
    }

    #[test]
    fn nemo_template_matches_the_clean_digest_string() {
        let prompt = Template::Nemo.prompt("What is 2+2?");
        assert!(prompt.starts_with("System:\nYou're an expert Python programmer"));
        assert!(prompt.contains("inside \\boxed{}.\n\nUser:\nWhat is 2+2?\n\nAssistant:\n"));
        assert!(
            !prompt.contains("  "),
            "the clean template has no double spaces"
        );
    }

    #[test]
    fn eos_of_smollm2_is_im_end() {
        let Some(encoder) = encoder(Template::ChatMl, EosPolicy::Append) else {
            return;
        };
        assert_eq!(
            encoder.tokenizer.id_to_token(encoder.eos_id).as_deref(),
            Some("<|im_end|>")
        );
    }

    #[test]
    fn response_tokens_decode_back_to_the_response() {
        for template in [Template::Nemo, Template::ChatMl, Template::Raw] {
            let Some(encoder) = encoder(template, EosPolicy::Append) else {
                return;
            };
            let response = "Natalia sold 48/2 = 24 clips in May.\nSo 48+24 = 72. \\boxed{72}";
            let encoded = encoder.encode("How many clips?", response).unwrap();
            let end = encoded.response_start + encoded.response_len;
            let response_ids = &encoded.input_ids[encoded.response_start..end];
            let decoded = encoder.tokenizer.decode(response_ids, false).unwrap();
            assert_eq!(decoded, response);
            let prompt_ids = &encoded.input_ids[..encoded.response_start];
            let prompt = encoder.tokenizer.decode(prompt_ids, false).unwrap();
            assert_eq!(prompt, encoder.template.prompt("How many clips?"));
            assert_eq!(encoded.input_ids.last(), Some(&encoder.eos_id));
            assert_eq!(encoded.scored_len(), encoded.response_len + 1);
        }
    }

    #[test]
    fn response_offsets_point_at_each_tokens_text() {
        let Some(encoder) = encoder(Template::ChatMl, EosPolicy::Append) else {
            return;
        };
        let response = "Lena has 11 + 17 = 28 beads.\n28 + 13 = 41.\nThe answer is 41.";
        let encoded = encoder.encode("How many beads?", response).unwrap();
        let offsets = &encoded.response_offsets;
        assert_eq!(offsets.len(), encoded.scored_len());
        assert_eq!(offsets[0], 0);
        assert_eq!(*offsets.last().unwrap() as usize, response.len()); // the EOS
        let chars: Vec<char> = response.chars().collect();
        for (index, window) in offsets.windows(2).enumerate() {
            assert!(window[0] < window[1], "offsets rise: {offsets:?}");
            let id = encoded.input_ids[encoded.response_start + index];
            let token = encoder.tokenizer.decode(&[id], false).unwrap();
            let text: String = chars[window[0] as usize..window[1] as usize]
                .iter()
                .collect();
            // A byte-level BPE may report a token's span without its leading space.
            assert_eq!(token.trim(), text.trim(), "token {index}");
        }
    }

    #[test]
    fn eos_none_ends_on_the_last_response_token() {
        let Some(encoder) = encoder(Template::Raw, EosPolicy::None) else {
            return;
        };
        let encoded = encoder.encode("q", "the answer is 4").unwrap();
        assert_eq!(encoded.scored_len(), encoded.response_len);
        assert_ne!(encoded.input_ids.last(), Some(&encoder.eos_id));
    }

    #[test]
    fn truncation_policies_cut_where_documented() {
        let Some(mut encoder) = encoder(Template::Raw, EosPolicy::Append) else {
            return;
        };
        let question = "one two three four five six seven eight";
        let response = "alpha beta gamma delta";
        let full = encoder.encode(question, response).unwrap();
        let (prompt_len, response_len) = (full.response_start, full.response_len);
        assert_eq!(full.truncated, Truncated::No);

        // Room for the whole response plus EOS and 2 prompt tokens: only the prompt is cut.
        encoder.max_len = Some(response_len + 1 + 2);
        let cut = encoder.encode(question, response).unwrap();
        assert_eq!(cut.truncated, Truncated::Prompt);
        assert_eq!(cut.response_start, 2);
        assert_eq!(
            cut.input_ids[..2],
            full.input_ids[prompt_len - 2..prompt_len]
        );
        assert_eq!(cut.input_ids[2..], full.input_ids[prompt_len..]);

        // Room for 2 response tokens and EOS: the prompt is gone, the response cut on the right.
        encoder.max_len = Some(3);
        let cut = encoder.encode(question, response).unwrap();
        assert_eq!(cut.truncated, Truncated::PromptAndResponse);
        assert_eq!((cut.response_start, cut.response_len), (0, 2));
        assert_eq!(
            cut.input_ids,
            vec![
                full.input_ids[prompt_len],
                full.input_ids[prompt_len + 1],
                encoder.eos_id
            ]
        );

        // right-response keeps the prompt and cuts the response.
        encoder.truncation = Truncation::RightResponse;
        encoder.max_len = Some(prompt_len + 1 + 1);
        let cut = encoder.encode(question, response).unwrap();
        assert_eq!(cut.truncated, Truncated::Response);
        assert_eq!((cut.response_start, cut.response_len), (prompt_len, 1));

        encoder.truncation = Truncation::Skip;
        let cut = encoder.encode(question, response).unwrap();
        assert_eq!(cut.truncated, Truncated::Skipped);
        assert!(cut.input_ids.is_empty());
        assert_eq!(cut.final_position(), None);
    }

    #[test]
    fn a_row_losing_prompt_and_response_tokens_counts_in_both() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-tokenizer/tokenizer.json");
        let tokenizer = Tokenizer::from_file(path).unwrap();
        let eos_id = find_eos_id(&tokenizer, None).unwrap();
        let mut encoder = Encoder {
            tokenizer,
            template: Template::Raw,
            eos: EosPolicy::Append,
            eos_id,
            max_len: Some(4),
            truncation: Truncation::LeftPrompt,
        };
        // One token per char: prompt "question\n" is 9 tokens, the response 15, room 4 - EOS = 3.
        // left-prompt: the response keeps 3 tokens, so the whole prompt goes.
        let cut = encoder.encode("question", "a long response").unwrap();
        assert_eq!((cut.response_start, cut.response_len), (0, 3));
        let mut counts = TruncationCounts::default();
        counts.add(cut.truncated);
        // right-response: the prompt keeps its last 3 tokens, the response none.
        encoder.truncation = Truncation::RightResponse;
        let cut = encoder.encode("question", "a long response").unwrap();
        assert_eq!((cut.response_start, cut.response_len), (3, 0));
        counts.add(cut.truncated);
        assert_eq!(
            counts.to_string(),
            "2 rows lost prompt tokens, 2 had the response cut, 0 skipped"
        );
    }

    #[test]
    fn template_file_needs_one_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.txt");
        std::fs::write(&good, "Q: {question}\nA: ").unwrap();
        assert_eq!(
            Template::parse(good.to_str().unwrap()).unwrap().prompt("x"),
            "Q: x\nA: "
        );
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "no placeholder").unwrap();
        assert!(Template::parse(bad.to_str().unwrap()).is_err());
    }
}
