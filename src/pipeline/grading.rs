//! Final-answer extraction and grading, so users can label their own generations.
//!
//! * [`extract_answer`] finds the final answer in a model's text: a JSON `"answer"` field,
//!   the last `\boxed{...}`, GSM8K's `#### N`, "The answer is X" / "Answer: X", and as a last
//!   resort the last number in the text.
//! * [`parse_number`] reads an answer as a number when it holds exactly one: `1,234`,
//!   `$18.00`, `-0.5`, `3/4`, `\frac{1}{2}`, `50\%`, `5 kg`.
//! * [`answers_match`] compares two answers: as numbers within a relative tolerance when both
//!   parse, otherwise as normalised strings (LaTeX spacing, `\text{}`, `\left`/`\right`,
//!   `\dfrac`, `$`, case and spaces removed).

use std::sync::LazyLock;

use regex::Regex;

/// Relative tolerance used when none is given: `|a - b| <= 1e-4 · max(1, |b|)`.
pub const DEFAULT_TOLERANCE: f64 = 1e-4;

/// Where in a text an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// The `answer` field of a JSON object (fenced or not).
    Json,
    /// The last `\boxed{...}` or `\fbox{...}`.
    Boxed,
    /// GSM8K's `#### N` line.
    Hashes,
    /// "The answer is X" or an "Answer: X" line.
    AnswerIs,
    /// The last number in the text.
    LastNumber,
}

// The patterns are literals: `every_pattern_compiles` checks them, so `None` (a rule that
// matches nothing) cannot happen in a tested build.
static JSON_ANSWER_STRING: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#""answer"\s*:\s*"((?:[^"\\]|\\.)*)""#).ok());
static JSON_ANSWER_NUMBER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#""answer"\s*:\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)"#).ok());
static HASHES: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"####\s*([^\n]+)").ok());
static ANSWER_IS: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)\banswer\s+is\s*:?\s*([^\n]+)").ok());
static ANSWER_LINE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?im)^[\s*#]*(?:final\s+)?answer\s*[*]*\s*:\s*[*]*\s*([^\n]+)$").ok()
});
/// A number: optional sign, thousands groups or plain digits, optional decimals and exponent.
static NUMBER: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|-?\.[0-9]+")
        .ok()
});
/// `a/b` or `\frac{a}{b}` (after `\dfrac`/`\tfrac` became `\frac`), each side a plain number.
static FRACTION: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(-)?\\frac\{\s*(-?[0-9]+(?:\.[0-9]+)?)\s*\}\{\s*(-?[0-9]+(?:\.[0-9]+)?)\s*\}|(-?[0-9]+(?:\.[0-9]+)?)\s*/\s*(-?[0-9]+(?:\.[0-9]+)?)",
    )
    .ok()
});
static TEXT_COMMAND: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\\(?:text|textbf|mathrm|mbox|textrm)\{([^{}]*)\}").ok());

/// The final answer in `text`, if one is found (see [`extract_answer_with_source`]).
pub fn extract_answer(text: &str) -> Option<String> {
    extract_answer_with_source(text).map(|(answer, _)| answer)
}

/// The final answer in `text` and where it was found, trying in order: a JSON `answer`
/// field, the last `\boxed{}`, the last `#### N`, the last "answer is X" or "Answer: X", and
/// the last number.
pub fn extract_answer_with_source(text: &str) -> Option<(String, AnswerSource)> {
    let found = json_answer(text)
        .map(|a| (a, AnswerSource::Json))
        .or_else(|| last_boxed(text).map(|a| (a, AnswerSource::Boxed)))
        .or_else(|| last_capture(HASHES.as_ref(), text).map(|a| (a, AnswerSource::Hashes)))
        .or_else(|| {
            let is = ANSWER_IS.as_ref()?.captures_iter(text).last();
            let line = ANSWER_LINE.as_ref()?.captures_iter(text).last();
            // Whichever comes last in the text is the final statement.
            let pick = match (is, line) {
                (Some(a), Some(b)) => Some(if a.get(0)?.start() > b.get(0)?.start() {
                    a
                } else {
                    b
                }),
                (a, b) => a.or(b),
            }?;
            Some((trim_sentence(pick.get(1)?.as_str()), AnswerSource::AnswerIs))
        })
        .or_else(|| {
            NUMBER
                .as_ref()?
                .find_iter(text)
                .last()
                .map(|m| (m.as_str().to_owned(), AnswerSource::LastNumber))
        })?;
    let answer = clean_answer(&found.0);
    (!answer.is_empty()).then_some((answer, found.1))
}

/// The reference answer inside an expected-answer cell: the `#### N` or `\boxed{}` of a full
/// reference solution (GSM8K `answer`, MATH `solution`), otherwise the cell itself.
pub fn reference_answer(expected: &str) -> String {
    if let Some(answer) = last_capture(HASHES.as_ref(), expected).or_else(|| last_boxed(expected)) {
        return clean_answer(&answer);
    }
    clean_answer(expected)
}

/// The `answer` of the first JSON object in `text` (a fenced block or bare), with a regex
/// fallback for the almost-JSON models often write (raw newlines, backticks).
fn json_answer(text: &str) -> Option<String> {
    if !text.contains("\"answer\"") {
        return None;
    }
    // A bounded number of tries keeps brace-heavy text (LaTeX) linear.
    for (start, _) in text.match_indices('{').take(16) {
        let mut stream =
            serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
        if let Some(Ok(serde_json::Value::Object(object))) = stream.next() {
            match object.get("answer") {
                Some(serde_json::Value::String(s)) => return Some(s.clone()),
                Some(serde_json::Value::Number(n)) => return Some(n.to_string()),
                Some(serde_json::Value::Null) | None => {}
                Some(other) => return Some(other.to_string()),
            }
            break;
        }
    }
    if let Some(captures) = JSON_ANSWER_STRING.as_ref().and_then(|p| p.captures(text)) {
        let raw = captures.get(1)?.as_str();
        let unescaped = serde_json::from_str::<String>(&format!("\"{raw}\""))
            .unwrap_or_else(|_| raw.to_owned());
        return Some(unescaped);
    }
    last_capture(JSON_ANSWER_NUMBER.as_ref(), text)
}

/// The content of the last `\boxed{...}` (or `\fbox{...}`), braces balanced.
fn last_boxed(text: &str) -> Option<String> {
    let start = text
        .rfind("\\boxed")
        .map(|i| i + "\\boxed".len())
        .into_iter()
        .chain(text.rfind("\\fbox").map(|i| i + "\\fbox".len()))
        .max()?;
    let rest = text[start..].trim_start();
    if let Some(body) = rest.strip_prefix('{') {
        let mut depth = 1usize;
        for (offset, character) in body.char_indices() {
            match character {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..offset].to_owned());
                    }
                }
                _ => {}
            }
        }
        None
    } else {
        // `\boxed 5`: the token up to the next space or `$`.
        let token: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '$')
            .collect();
        (!token.is_empty()).then_some(token)
    }
}

fn last_capture(pattern: Option<&Regex>, text: &str) -> Option<String> {
    pattern?
        .captures_iter(text)
        .last()
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_owned())
}

/// Cuts an "answer is ..." capture at the end of its sentence ("42. So ..." → "42").
fn trim_sentence(text: &str) -> String {
    // A decimal point is followed by a digit, not a space, so ". " ends the sentence.
    let end = text.find(". ").unwrap_or(text.len());
    text[..end].to_owned()
}

/// Strips what surrounds an answer without changing it: spaces, markdown bold, math `$`
/// delimiters and a final period.
fn clean_answer(answer: &str) -> String {
    let mut text = answer.trim();
    loop {
        let before = text;
        text = text.trim_matches('*').trim();
        text = text.strip_suffix('.').unwrap_or(text).trim();
        if let Some(inner) = text
            .strip_prefix("\\(")
            .and_then(|t| t.strip_suffix("\\)"))
            .or_else(|| text.strip_prefix("\\[").and_then(|t| t.strip_suffix("\\]")))
        {
            text = inner.trim();
        }
        // A `$...$` math span is unwrapped; a leading currency sign (`$18`) is kept.
        if text.len() >= 2 && text.starts_with('$') && text.ends_with('$') {
            text = text.trim_matches('$').trim();
        }
        // Quotes left by almost-JSON (`"83"`, `\"60\"`).
        for quote in ["\\\"", "\""] {
            if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
                text = inner.trim();
            }
        }
        if text.matches('"').count() == 1 {
            text = text.trim_matches('"').trim();
        }
        if text == before {
            break;
        }
    }
    text.to_owned()
}

/// A canonical string form of an answer for exact comparison: LaTeX spacing and sizing,
/// `\text{}` wrappers, `$`, degree and percent signs, spaces and a final period removed,
/// `\dfrac`/`\tfrac` written `\frac`, lower case.
pub fn normalize_answer(answer: &str) -> String {
    let mut text = clean_answer(answer);
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("\\$", ""),
        ("\\%", ""),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("$", ""),
        ("%", ""),
    ] {
        text = text.replace(from, to);
    }
    if let Some(command) = TEXT_COMMAND.as_ref() {
        while command.is_match(&text) {
            text = command.replace_all(&text, "$1").into_owned();
        }
    }
    let mut text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    while text.ends_with('.') {
        text.pop();
    }
    text.to_lowercase()
}

/// The answer as a number when it holds exactly one: a fraction (`3/4`, `\frac{3}{4}`) or a
/// number with optional thousands commas, currency, unit words or a percent sign around it.
pub fn parse_number(answer: &str) -> Option<f64> {
    let text = normalize_answer(answer);
    if let Some(captures) = FRACTION.as_ref().and_then(|p| p.captures(&text)) {
        let whole = captures.get(0)?;
        let rest = format!("{}{}", &text[..whole.start()], &text[whole.end()..]);
        if !rest.chars().any(|c| c.is_ascii_digit()) {
            let (sign, numerator, denominator) = match captures.get(2) {
                Some(numerator) => (
                    if captures.get(1).is_some() { -1.0 } else { 1.0 },
                    numerator.as_str(),
                    captures.get(3)?.as_str(),
                ),
                None => (1.0, captures.get(4)?.as_str(), captures.get(5)?.as_str()),
            };
            let numerator: f64 = numerator.parse().ok()?;
            let denominator: f64 = denominator.parse().ok()?;
            return (denominator != 0.0).then(|| sign * numerator / denominator);
        }
    }
    let mut numbers = NUMBER.as_ref()?.find_iter(&text);
    let first = numbers.next()?;
    if numbers.next().is_some() {
        return None;
    }
    first.as_str().replace(',', "").parse().ok()
}

/// The number a worded answer starts with (`"4 (3 onions and 1 potato)"` → 4, `"2:00 pm"` →
/// 2), or `None` when the answer is mathematics rather than words: LaTeX (`\\`, `{`), or a
/// number followed by `,`, `;` or `/` (a list or a ratio, `"3, 5, 7"`).
pub fn first_number(answer: &str) -> Option<f64> {
    let text = normalize_answer(answer);
    if text.contains(['\\', '{']) {
        return None;
    }
    let found = NUMBER.as_ref()?.find(&text)?;
    if text[found.end()..].starts_with([',', ';', '/']) {
        return None;
    }
    found.as_str().replace(',', "").parse().ok()
}

/// Whether two answers agree.
///
/// * Both hold one number ([`parse_number`]): `|p - e| <= tolerance · max(1, |e|)`.
/// * The reference is one number and the prediction holds several: the prediction's
///   [`first_number`] is compared the same way, as ZeroEval's grader does (a sentence such as
///   "6 pizzas (3 cheese and 3 pepperoni)" counts as 6).
/// * Otherwise the [`normalize_answer`] strings must be equal and not empty.
pub fn answers_match(predicted: &str, expected: &str, tolerance: f64) -> bool {
    let close = |p: f64, e: f64| (p - e).abs() <= tolerance * e.abs().max(1.0);
    let strings_equal = || {
        let predicted = normalize_answer(predicted);
        !predicted.is_empty() && predicted == normalize_answer(expected)
    };
    match (parse_number(predicted), parse_number(expected)) {
        (Some(p), Some(e)) => close(p, e),
        (None, Some(e)) => first_number(predicted).is_some_and(|p| close(p, e)) || strings_equal(),
        _ => strings_equal(),
    }
}

/// The outcome of grading one response.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    /// The answer that was compared: the given predicted answer, or the one extracted from
    /// the response when none was given.
    pub predicted_answer: Option<String>,
    /// Whether it matches the reference answer.
    pub is_correct: bool,
}

/// Grades a response against a reference: uses `predicted_answer` when present and not
/// blank, otherwise extracts the answer from `response`; the reference goes through
/// [`reference_answer`]. No answer means incorrect.
pub fn grade(
    predicted_answer: Option<&str>,
    response: &str,
    expected_answer: &str,
    tolerance: f64,
) -> Grade {
    let predicted = predicted_answer
        .map(clean_answer)
        .filter(|a| !a.is_empty())
        .or_else(|| extract_answer(response));
    let expected = reference_answer(expected_answer);
    let is_correct = predicted
        .as_deref()
        .is_some_and(|p| answers_match(p, &expected, tolerance));
    Grade {
        predicted_answer: predicted,
        is_correct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extracted(text: &str) -> (String, AnswerSource) {
        extract_answer_with_source(text).expect("an answer")
    }

    #[test]
    fn every_pattern_compiles() {
        for pattern in [
            &JSON_ANSWER_STRING,
            &JSON_ANSWER_NUMBER,
            &HASHES,
            &ANSWER_IS,
            &ANSWER_LINE,
            &NUMBER,
            &FRACTION,
            &TEXT_COMMAND,
        ] {
            assert!(pattern.is_some());
        }
    }

    #[test]
    fn gsm8k_hashes_with_thousands_comma() {
        let text = "She pays 1,000 + 234 = <<1000+234=1234>>1,234 dollars.\n#### 1,234";
        assert_eq!(extracted(text), ("1,234".into(), AnswerSource::Hashes));
        assert_eq!(parse_number("1,234"), Some(1234.0));
        assert!(answers_match("1,234", "1234", DEFAULT_TOLERANCE));
    }

    #[test]
    fn boxed_fraction_with_nested_braces() {
        let text = "So the probability is $\\boxed{\\frac{1}{2}}$.";
        assert_eq!(
            extracted(text),
            ("\\frac{1}{2}".into(), AnswerSource::Boxed)
        );
        assert_eq!(parse_number("\\frac{1}{2}"), Some(0.5));
        assert!(answers_match("\\dfrac{1}{2}", "0.5", DEFAULT_TOLERANCE));
        assert!(!answers_match("1/2", "\\frac12x", DEFAULT_TOLERANCE));
    }

    #[test]
    fn last_boxed_wins_over_earlier_ones() {
        let text = "First $\\boxed{3}$, corrected: \\boxed{\\sqrt{2}}";
        assert_eq!(extracted(text), ("\\sqrt{2}".into(), AnswerSource::Boxed));
    }

    #[test]
    fn boxed_without_braces() {
        assert_eq!(
            extracted("so $\\boxed 5$."),
            ("5".into(), AnswerSource::Boxed)
        );
    }

    #[test]
    fn unbalanced_boxed_falls_back_to_last_number() {
        assert_eq!(
            extracted("x = 7 so \\boxed{7"),
            ("7".into(), AnswerSource::LastNumber)
        );
    }

    #[test]
    fn currency_with_cents_equals_integer() {
        assert_eq!(parse_number("$18.00"), Some(18.0));
        assert!(answers_match("$18.00", "18", DEFAULT_TOLERANCE));
        assert!(!answers_match("$18.50", "18", DEFAULT_TOLERANCE));
    }

    #[test]
    fn the_answer_is_sentence() {
        assert_eq!(
            extracted("Adding them gives 40 + 2. The answer is 42."),
            ("42".into(), AnswerSource::AnswerIs)
        );
        assert_eq!(
            extracted("The final answer is 3.5. I hope it is correct."),
            ("3.5".into(), AnswerSource::AnswerIs)
        );
    }

    #[test]
    fn answer_line_with_markdown() {
        assert_eq!(
            extracted("Step 1: 6 * 7 = 42\n**Final Answer:** 42"),
            ("42".into(), AnswerSource::AnswerIs)
        );
    }

    #[test]
    fn json_answer_string_and_number() {
        assert_eq!(
            extracted(r#"{"answer": "7"}"#),
            ("7".into(), AnswerSource::Json)
        );
        assert_eq!(
            extracted("```json\n{\"reasoning\": \"2+5=7\", \"answer\": 7}\n```"),
            ("7".into(), AnswerSource::Json)
        );
    }

    #[test]
    fn almost_json_with_raw_newlines_uses_regex_fallback() {
        // A raw newline inside a string is invalid JSON; ZeroEval outputs contain such text.
        let text =
            "```json\n{\n  \"reasoning\": \"line one\nline two\",\n  \"answer\": \"$64\"\n}\n```";
        assert_eq!(extracted(text), ("$64".into(), AnswerSource::Json));
        assert!(answers_match("$64", "64", DEFAULT_TOLERANCE));
    }

    #[test]
    fn last_number_fallback_handles_commas_and_signs() {
        assert_eq!(
            extracted("The total is 1,250 then minus 3 gives -1,253 apples"),
            ("-1,253".into(), AnswerSource::LastNumber)
        );
    }

    #[test]
    fn no_answer_in_text_without_numbers() {
        assert_eq!(extract_answer("I cannot solve this."), None);
        let graded = grade(None, "I cannot solve this.", "5", DEFAULT_TOLERANCE);
        assert_eq!(graded.predicted_answer, None);
        assert!(!graded.is_correct);
    }

    #[test]
    fn units_and_percent_around_one_number() {
        assert_eq!(parse_number("5 kg"), Some(5.0));
        assert_eq!(parse_number("600 mph"), Some(600.0));
        assert_eq!(parse_number("50\\%"), Some(50.0));
        assert_eq!(parse_number("45^\\circ"), Some(45.0));
        assert_eq!(parse_number("\\text{12 cm}"), Some(12.0));
    }

    #[test]
    fn several_numbers_are_not_one_number() {
        assert_eq!(parse_number("(1, 2)"), None);
        assert_eq!(parse_number("10 - 2 = 8"), None);
        // Against a one-number reference, the first number counts (ZeroEval's rule).
        assert!(answers_match(
            "6 pizzas (3 cheese and 3 pepperoni)",
            "6",
            DEFAULT_TOLERANCE
        ));
        assert!(answers_match("2:00 pm", "2", DEFAULT_TOLERANCE));
        assert!(!answers_match("10 - 2 = 8", "8", DEFAULT_TOLERANCE));
        // ...but not for lists, ratios or LaTeX, whose first number is not the answer.
        assert!(!answers_match("3, 5, 7", "3", DEFAULT_TOLERANCE));
        assert!(!answers_match(
            "\\frac{3\\sqrt{3}}{4}",
            "3",
            DEFAULT_TOLERANCE
        ));
        assert!(!answers_match("9/19 of them", "9", DEFAULT_TOLERANCE));
        assert!(answers_match("x = 5", "5", DEFAULT_TOLERANCE));
        // So tuples compare as strings, not by their first element.
        assert!(!answers_match("(1,3)", "(1,2)", DEFAULT_TOLERANCE));
        assert!(answers_match(
            "\\left( 1, 2 \\right)",
            "(1,2)",
            DEFAULT_TOLERANCE
        ));
    }

    #[test]
    fn negative_fraction_and_decimal_forms() {
        assert_eq!(parse_number("-\\frac{3}{4}"), Some(-0.75));
        assert_eq!(parse_number("\\frac{-3}{4}"), Some(-0.75));
        assert_eq!(parse_number("-.5"), Some(-0.5));
        assert_eq!(parse_number("3/0"), None);
    }

    #[test]
    fn tolerance_is_relative_to_the_reference() {
        // |0.3333 - 1/3| = 3.3e-5 <= 1e-4 * max(1, 1/3) = 1e-4.
        assert!(answers_match("0.3333", "\\frac{1}{3}", DEFAULT_TOLERANCE));
        // |0.333 - 1/3| = 3.3e-4 > 1e-4.
        assert!(!answers_match("0.333", "\\frac{1}{3}", DEFAULT_TOLERANCE));
        // 1e6 reference: 1e-4 * 1e6 = 100 allowed.
        assert!(answers_match("1000050", "1,000,000", DEFAULT_TOLERANCE));
        assert!(!answers_match("1000101", "1,000,000", DEFAULT_TOLERANCE));
    }

    #[test]
    fn symbolic_answers_compare_as_normalised_strings() {
        assert!(answers_match("\\text{(B)}", "(b)", DEFAULT_TOLERANCE));
        assert!(answers_match(
            "2\\sqrt{3}",
            "2 \\sqrt{3}",
            DEFAULT_TOLERANCE
        ));
        assert!(!answers_match(
            "2\\sqrt{3}",
            "3\\sqrt{2}",
            DEFAULT_TOLERANCE
        ));
        assert!(!answers_match("", "", DEFAULT_TOLERANCE));
    }

    #[test]
    fn reference_answer_from_full_solutions() {
        let gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72";
        assert_eq!(reference_answer(gsm8k), "72");
        let math = "Thus the answer is $\\boxed{\\frac{\\sqrt{3}}{2}}$.";
        assert_eq!(reference_answer(math), "\\frac{\\sqrt{3}}{2}");
        assert_eq!(reference_answer(" 18 "), "18");
    }

    #[test]
    fn given_predicted_answer_is_used_before_the_response() {
        let graded = grade(Some("18"), "The answer is 20.", "18", DEFAULT_TOLERANCE);
        assert_eq!(graded.predicted_answer.as_deref(), Some("18"));
        assert!(graded.is_correct);
        let graded = grade(
            Some("  "),
            "The answer is 20.",
            "#### 20",
            DEFAULT_TOLERANCE,
        );
        assert_eq!(graded.predicted_answer.as_deref(), Some("20"));
        assert!(graded.is_correct);
    }

    #[test]
    fn quotes_from_almost_json_are_stripped() {
        assert_eq!(normalize_answer("\"83\""), "83");
        assert!(answers_match("\\\"60\\\"", "60", DEFAULT_TOLERANCE));
    }

    #[test]
    fn math_span_delimiters_are_stripped() {
        assert_eq!(
            extracted("Answer: $\\frac{7}{2}$"),
            ("\\frac{7}{2}".into(), AnswerSource::AnswerIs)
        );
        assert_eq!(normalize_answer("\\(x^2\\)"), "x^2");
    }
}
