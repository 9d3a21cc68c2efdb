//! Final-answer extraction and grading, so users can label their own generations.
//!
//! * [`extract_answer`] finds the final answer in a model's text: a JSON `"answer"` field,
//!   the last `\boxed{...}`, GSM8K's `#### N`, the `A: N` last line of GSM8K's example model
//!   solutions, "The answer is X" / "Answer: X", and as a last resort the last number.
//! * [`parse_exact`] reads an answer as an exact rational when it is one number: `1,234`,
//!   `$18.00`, `-0.5`, `3/4`, `\frac{1}{2}`, `50\%`, `5 kg`, `x = 5`.
//! * [`answers_match`] compares two answers: exactly as rationals when both are numbers (a
//!   [`Tolerance`] is opt-in), as unordered lists for bare comma lists (`2, 5`), element-wise
//!   for tuples, otherwise as normalised strings (LaTeX spacing, `\text{}`, `\left`/`\right`,
//!   `\dfrac`, `$`, case and spaces removed). The rules, with examples, are in
//!   `docs/grading.md`.

use std::sync::LazyLock;

use regex::Regex;

/// Where in a text an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// The `answer` field of a JSON object (fenced or not).
    Json,
    /// The last `\boxed{...}` or `\fbox{...}`.
    Boxed,
    /// GSM8K's `#### N` line.
    Hashes,
    /// An `A: N` line, the ending of GSM8K's example model solutions and `ground_truth`.
    ALine,
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
/// `A: 18` at the start of a line (GSM8K's `example_model_solutions.jsonl`).
static A_LINE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?m)^[ \t]*A:[ \t]*([^\n]*[^\s][^\n]*)$").ok());
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
static TEXT_COMMAND: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\\(?:text|textbf|mathrm|mbox|textrm)\{([^{}]*)\}").ok());

/// The final answer in `text`, if one is found (see [`extract_answer_with_source`]).
pub fn extract_answer(text: &str) -> Option<String> {
    extract_answer_with_source(text).map(|(answer, _)| answer)
}

/// The final answer in `text` and where it was found, trying in order: a JSON `answer`
/// field, the last `\boxed{}`, the last `#### N`, the last `A: N` line, the last "answer is X"
/// or "Answer: X", and the last number.
pub fn extract_answer_with_source(text: &str) -> Option<(String, AnswerSource)> {
    let found = json_answer(text)
        .map(|a| (a, AnswerSource::Json))
        .or_else(|| last_boxed(text).map(|a| (a, AnswerSource::Boxed)))
        .or_else(|| last_capture(HASHES.as_ref(), text).map(|a| (a, AnswerSource::Hashes)))
        .or_else(|| last_capture(A_LINE.as_ref(), text).map(|a| (a, AnswerSource::ALine)))
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

/// The reference answer inside an expected-answer cell: the `#### N`, `A: N` line or
/// `\boxed{}` of a full reference solution (GSM8K `answer`, GSM8K example `ground_truth`, MATH
/// `solution`), otherwise the cell itself.
pub fn reference_answer(expected: &str) -> String {
    if let Some(answer) = last_capture(HASHES.as_ref(), expected)
        .or_else(|| last_capture(A_LINE.as_ref(), expected))
        .or_else(|| last_boxed(expected))
    {
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

/// Strips what surrounds an answer without changing it: spaces, markdown bold and code
/// backticks, math `$` delimiters, a final period and a stray final backslash (`67\`, left by
/// almost-JSON).
fn clean_answer(answer: &str) -> String {
    let mut text = answer.trim();
    loop {
        let before = text;
        text = text.trim_matches(['*', '`']).trim();
        text = text.strip_suffix('.').unwrap_or(text).trim();
        if text.ends_with('\\') && !text.ends_with("\\\\") {
            text = text[..text.len() - 1].trim();
        }
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

/// An answer with LaTeX spacing and sizing, `\text{}`-style wrappers, `\dfrac`/`\tfrac`,
/// escaped `\$`/`\%` and degree signs rewritten, whitespace runs collapsed to one space. The
/// common first step of [`normalize_answer`] and the number readers; spaces are kept because
/// they separate list items (`2, 5`) from thousands groups (`2,500`).
fn prepare(answer: &str) -> String {
    let mut text = clean_answer(answer);
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("{,}", ","),
        ("\\,", ""),
        ("\\;", " "),
        ("\\:", " "),
        ("\\ ", " "),
        ("~", " "),
        ("\\$", "$"),
        ("\\%", "%"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("°", ""),
        ("\u{2212}", "-"),
    ] {
        text = text.replace(from, to);
    }
    if let Some(command) = TEXT_COMMAND.as_ref() {
        while command.is_match(&text) {
            text = command.replace_all(&text, "$1").into_owned();
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A canonical string form of an answer for exact comparison: [`prepare`]d, then `$`, `%`,
/// spaces and a final period removed, lower case.
pub fn normalize_answer(answer: &str) -> String {
    let mut text: String = prepare(answer)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '$' && *c != '%')
        .collect();
    while text.ends_with('.') {
        text.pop();
    }
    text.to_lowercase()
}

/// An exact rational number: reduced, denominator positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    numerator: i128,
    denominator: i128,
}

impl Rational {
    /// `numerator / denominator` reduced; `None` for a zero denominator or `i128::MIN`.
    pub fn new(numerator: i128, denominator: i128) -> Option<Self> {
        if denominator == 0 || numerator == i128::MIN || denominator == i128::MIN {
            return None;
        }
        let divisor = gcd(numerator.unsigned_abs(), denominator.unsigned_abs());
        // Both magnitudes are below 2^127, so the divisor fits an i128.
        let divisor = i128::try_from(divisor).ok()?;
        let sign = if denominator < 0 { -1 } else { 1 };
        Some(Self {
            numerator: sign * (numerator / divisor),
            denominator: sign * (denominator / divisor),
        })
    }

    pub fn numerator(self) -> i128 {
        self.numerator
    }

    pub fn denominator(self) -> i128 {
        self.denominator
    }

    pub fn is_integer(self) -> bool {
        self.denominator == 1
    }

    pub fn to_f64(self) -> f64 {
        self.numerator as f64 / self.denominator as f64
    }

    fn divide(self, other: Self) -> Option<Self> {
        Self::new(
            self.numerator.checked_mul(other.denominator)?,
            self.denominator.checked_mul(other.numerator)?,
        )
    }

    fn negate(self) -> Self {
        Self {
            numerator: -self.numerator,
            denominator: self.denominator,
        }
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// A decimal literal (`-1,234.50`, `.5`, `2.5e3`) as an exact rational; `None` when it does
/// not fit an i128 fraction.
fn parse_decimal(literal: &str) -> Option<Rational> {
    let literal = literal.trim();
    let (negative, body) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal.strip_prefix('+').unwrap_or(literal)),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], body[at + 1..].parse::<i32>().ok()?),
        None => (body, 0),
    };
    let mantissa = mantissa.replace(',', "");
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((&mantissa, ""));
    let digits = format!("{whole}{fraction}");
    if digits.is_empty() || digits.len() > 36 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut numerator: i128 = digits.parse().ok()?;
    let scale = i32::try_from(fraction.len()).ok()? - exponent;
    let mut denominator: i128 = 1;
    if scale >= 0 {
        denominator = 10i128.checked_pow(u32::try_from(scale).ok()?)?;
    } else {
        numerator = numerator.checked_mul(10i128.checked_pow(scale.unsigned_abs())?)?;
    }
    let value = Rational::new(numerator, denominator)?;
    Some(if negative { value.negate() } else { value })
}

/// A decimal number inside an answer: thousands groups only as `,ddd` right after a digit.
const DECIMAL: &str =
    r"[-+]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9]+";

/// A whole answer that is one number: an optional `x =`, currency, then `\frac{a}{b}`,
/// `\frac12`, `a/b` or a decimal, then an optional `%` and unit words.
static EXACT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(?:[A-Za-z]\s*=\s*)?(?:\$|€|£|¥)?\s*(?:(?P<fneg>-)?\s*\\frac\s*\{{\s*(?P<fnum>{DECIMAL})\s*\}}\s*\{{\s*(?P<fden>{DECIMAL})\s*\}}|(?P<gneg>-)?\\frac(?P<gnum>[0-9])(?P<gden>[0-9])|(?P<snum>{DECIMAL})\s*/\s*(?P<sden>{DECIMAL})|(?P<plain>{DECIMAL}))(?:\s*%)?(?P<gap>\s*)(?P<unit>/?\s*\p{{L}}[\p{{L}}\s./]*)?$"
    ))
    .ok()
});

/// The answer as an exact rational when it is one number: an integer (`1,234`: a comma
/// directly followed by three digits groups thousands), a finite decimal, `a/b`,
/// `\frac{a}{b}`, with an optional `x =` before it, a currency sign before it, and `%` or unit
/// words (`5 kg`, `18 dollars`, `25000/year`) after it. The percent sign is dropped (`50\%` is
/// 50). A single letter glued to the number (`5x`) is a variable, not a unit, except the unit
/// symbols g, m, s, l, k, F, C (`48g`); `3\sqrt{5}`, `2\pi`, `x^2` are not numbers.
pub fn parse_exact(answer: &str) -> Option<Rational> {
    let text = prepare(answer);
    let captures = EXACT.as_ref()?.captures(&text)?;
    if let Some(unit) = captures.name("unit") {
        let unit = unit.as_str().trim().to_lowercase();
        let glued = captures.name("gap").is_none_or(|g| g.as_str().is_empty());
        // One glued letter is a variable (`5x`) unless it is a unit symbol (`48g`, `-10°F`).
        let variable = glued && unit.chars().count() == 1 && !"gmslkfc".contains(unit.as_str());
        if variable || unit.starts_with("sqrt") || unit == "pi" || unit == "i" {
            return None;
        }
    }
    let group = |name: &str| captures.name(name).map(|m| m.as_str());
    if let (Some(numerator), Some(denominator)) = (group("fnum"), group("fden")) {
        let value = parse_decimal(numerator)?.divide(parse_decimal(denominator)?)?;
        return Some(if group("fneg").is_some() {
            value.negate()
        } else {
            value
        });
    }
    if let (Some(numerator), Some(denominator)) = (group("gnum"), group("gden")) {
        let value = parse_decimal(numerator)?.divide(parse_decimal(denominator)?)?;
        return Some(if group("gneg").is_some() {
            value.negate()
        } else {
            value
        });
    }
    if let (Some(numerator), Some(denominator)) = (group("snum"), group("sden")) {
        return parse_decimal(numerator)?.divide(parse_decimal(denominator)?);
    }
    parse_decimal(group("plain")?)
}

/// The answer as a number when it is one ([`parse_exact`]), as a float.
pub fn parse_number(answer: &str) -> Option<f64> {
    parse_exact(answer).map(Rational::to_f64)
}

/// The number a worded answer starts with (`"4 (3 onions and 1 potato)"` → 4, `"2:00 pm"` →
/// 2), or `None` when the answer is mathematics rather than words: LaTeX (`\\`, `{`), a number
/// glued to anything but `:`, `)` or a full stop (a list, a ratio or a variable: `"3, 5, 7"`, `"9/19"`,
/// `"2x"`, `"x^2"`), or followed by an operator, a root or π (`"24 + sqrt(193)"`,
/// `"10 - 2 = 8"`).
pub fn first_number(answer: &str) -> Option<Rational> {
    let text = prepare(answer);
    if text.contains(['\\', '{']) {
        return None;
    }
    let found = NUMBER.as_ref()?.find(&text)?;
    // The number stands on its own: not glued to a variable or exponent (`x^2`, `2x`).
    let before = text[..found.start()].chars().last();
    if before.is_some_and(|c| !(c.is_whitespace() || "($=:".contains(c))) {
        return None;
    }
    let rest = &text[found.end()..];
    // A sentence may end right after it ("... is 160. The blue car ...").
    let sentence_end = rest
        .strip_prefix(['.', '!', '?'])
        .is_some_and(|r| r.is_empty() || r.starts_with(char::is_whitespace));
    if !(rest.is_empty()
        || sentence_end
        || rest.starts_with(|c: char| c.is_whitespace() || ":)".contains(c)))
    {
        return None;
    }
    let after = rest.trim_start().to_lowercase();
    let operator = after.starts_with(['+', '*', '^', '×', '·', '√', 'π', '='])
        || after.starts_with("sqrt")
        || (after.starts_with("pi") && !after[2..].starts_with(char::is_alphabetic))
        || (after.starts_with('-')
            && after[1..]
                .trim_start()
                .starts_with(|c: char| c.is_ascii_digit()));
    if operator {
        return None;
    }
    parse_decimal(found.as_str())
}

/// An opt-in tolerance for numeric answers that are not both integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// `|p - e| <= t`.
    Absolute(f64),
    /// `|p - e| <= t · |e|`, e the reference.
    Relative(f64),
}

/// Two numbers agree: equal as rationals; or, with a tolerance and unless both are integers,
/// within it.
fn numbers_match(predicted: Rational, expected: Rational, tolerance: Option<Tolerance>) -> bool {
    if predicted == expected {
        return true;
    }
    if predicted.is_integer() && expected.is_integer() {
        return false;
    }
    let (p, e) = (predicted.to_f64(), expected.to_f64());
    match tolerance {
        None => false,
        Some(Tolerance::Absolute(t)) => (p - e).abs() <= t,
        Some(Tolerance::Relative(t)) => (p - e).abs() <= t * e.abs(),
    }
}

/// The items of a bare list: split at commas outside brackets and braces, except a comma
/// directly between a digit and exactly three digits (a thousands separator, `1,234`).
fn split_list(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                let digit_before = index > 0 && bytes[index - 1].is_ascii_digit();
                let group = bytes.get(index + 1..index + 4);
                let three_digits = group.is_some_and(|g| g.iter().all(u8::is_ascii_digit));
                let ends = bytes.get(index + 4).is_none_or(|b| !b.is_ascii_digit());
                if !(digit_before && three_digits && ends) {
                    items.push(text[start..index].trim());
                    start = index + 1;
                }
            }
            _ => {}
        }
    }
    items.push(text[start..].trim());
    items
}

/// `(inner)` or `[inner]`-style: the opening bracket, the inside and the closing bracket, when
/// the first bracket closes at the very end (`(1, 2)`, `[0, 1)`; not `(1)(2)`).
fn bracketed(text: &str) -> Option<(char, &str, char)> {
    let open = text.chars().next().filter(|c| ['(', '['].contains(c))?;
    let close = text.chars().last().filter(|c| [')', ']'].contains(c))?;
    if text.len() < 2 {
        return None;
    }
    let mut depth = 0i32;
    for (index, character) in text.char_indices() {
        match character {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 && index + character.len_utf8() != text.len() {
                    return None;
                }
            }
            _ => {}
        }
    }
    Some((open, &text[1..text.len() - 1], close))
}

/// Whether two answers agree (the rules, in order; `docs/grading.md` has examples):
///
/// 1. Both are one number ([`parse_exact`]): equal as rationals, so `10001` ≠ `10000` and
///    `0.5` = `\frac{1}{2}`; an opt-in [`Tolerance`] applies unless both are integers.
/// 2. Either is a bare list of two or more items holding digits (`2, 5`): both must be lists
///    of the same length whose items match one to one in any order (`2, 5` = `5,2`; never
///    `2` or `25`).
/// 3. Both are tuples or intervals with the same brackets (`(1, 2)`, `[0, 1)`): items match in
///    order.
/// 4. The reference is one number and the prediction a worded answer: the prediction's
///    [`first_number`] is compared, as ZeroEval's grader does ("6 pizzas (3 cheese and 3
///    pepperoni)" counts as 6).
/// 5. Otherwise the [`normalize_answer`] strings must be equal and not empty (`3\sqrt{5}` ≠
///    `3`).
pub fn answers_match(predicted: &str, expected: &str, tolerance: Option<Tolerance>) -> bool {
    values_match(&prepare(predicted), &prepare(expected), tolerance, true)
}

fn values_match(
    predicted: &str,
    expected: &str,
    tolerance: Option<Tolerance>,
    worded: bool,
) -> bool {
    let strings_equal = || {
        let predicted = normalize_answer(predicted);
        !predicted.is_empty() && predicted == normalize_answer(expected)
    };
    let expected_number = parse_exact(expected);
    if let (Some(p), Some(e)) = (parse_exact(predicted), expected_number) {
        return numbers_match(p, e, tolerance);
    }
    let is_list = |items: &[&str]| {
        items.len() > 1
            && items
                .iter()
                .all(|item| item.contains(|c: char| c.is_ascii_digit() || c == '\\'))
    };
    let (predicted_items, expected_items) = (split_list(predicted), split_list(expected));
    let both_lists = predicted_items.len() > 1 && predicted_items.len() == expected_items.len();
    if both_lists || is_list(&predicted_items) || is_list(&expected_items) {
        return strings_equal()
            || (predicted_items.len() == expected_items.len()
                && unordered_match(&predicted_items, &expected_items, tolerance));
    }
    if let (Some((po, pi, pc)), Some((eo, ei, ec))) = (bracketed(predicted), bracketed(expected)) {
        let (pi, ei) = (split_list(pi), split_list(ei));
        if po == eo && pc == ec && pi.len() > 1 && pi.len() == ei.len() {
            return strings_equal()
                || pi
                    .iter()
                    .zip(&ei)
                    .all(|(p, e)| values_match(p, e, tolerance, false));
        }
    }
    if worded {
        if let (Some(e), Some(p)) = (expected_number, first_number(predicted)) {
            if numbers_match(p, e, tolerance) {
                return true;
            }
        }
    }
    strings_equal()
}

/// Every predicted item matches a distinct expected item.
fn unordered_match(predicted: &[&str], expected: &[&str], tolerance: Option<Tolerance>) -> bool {
    let mut used = vec![false; expected.len()];
    predicted.iter().all(|p| {
        let found = expected
            .iter()
            .enumerate()
            .find(|(index, e)| !used[*index] && values_match(p, e, tolerance, false));
        match found {
            Some((index, _)) => {
                used[index] = true;
                true
            }
            None => false,
        }
    })
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
    tolerance: Option<Tolerance>,
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

    /// What a table row grades: an answer as given (`predicted_answer`), or a response the
    /// answer is extracted from.
    enum Given {
        A(&'static str),
        R(&'static str),
    }
    use Given::{A, R};

    const GSM8K_GROUND_TRUTH: &str = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u{2019}s market.\nA: 18";

    /// The grading rule, pinned: (given, reference, correct) with no tolerance.
    const CASES: &[(Given, &str, bool)] = &[
        // Integers and large numbers compare exactly.
        (A("10001"), "10000", false),
        (A("120006"), "120000", false),
        (A("120000"), "120,000", true),
        (A("1,234"), "1234", true),
        (A("1234"), "1,234", true),
        (A("70000"), "70,000", true),
        (A("1000000007"), "1000000008", false),
        (
            A("123456789012345678901234567890"),
            "123456789012345678901234567890",
            true,
        ),
        (A("-5"), "5", false),
        (A("0"), "-0", true),
        // Decimals.
        (A("18.00"), "18", true),
        (A("2.50"), "2.5", true),
        (A("0.1"), "0.10000001", false),
        (A(".5"), "0.5", true),
        (A("1e3"), "1000", true),
        // Fractions, reduced before comparing.
        (A("\\frac{1}{2}"), "0.5", true),
        (A("\\dfrac{3}{4}"), "3/4", true),
        (A("6/8"), "\\frac{3}{4}", true),
        (A("-\\frac{3}{4}"), "\\frac{-3}{4}", true),
        (A("\\frac12"), "1/2", true),
        (A("1/3"), "0.3333", false),
        (A("\\frac{1}{3}"), "0.33", false),
        // The percent sign is dropped, not divided by 100.
        (A("50\\%"), "50", true),
        (A("50%"), "0.5", false),
        // Currency and units around one number.
        (A("$18.00"), "18", true),
        (A("5 kg"), "5", true),
        (A("18 dollars"), "18", true),
        (A("45^\\circ"), "45", true),
        (A("\\text{12 cm}"), "12", true),
        (A("5x"), "5", false),
        (A("48g"), "48", true),
        (A("25000/year"), "25000", true),
        (A("-10°F"), "-10", true),
        (A("67\\"), "67", true),
        (A("`26`"), "26", true),
        (A("x = 5"), "5", true),
        // Surds and other symbols are not their leading number.
        (A("3\\sqrt{5}"), "3", false),
        (A("\\sqrt{5}"), "5", false),
        (A("2\\pi"), "2", false),
        (A("x^2"), "2", false),
        (A("24 + sqrt(193)"), "24", false),
        (A("2\\sqrt{3}"), "2 \\sqrt{3}", true),
        // Bare lists are unordered; tuples and intervals are ordered.
        (A("2, 5"), "2,5", true),
        (A("2, 5"), "5, 2", true),
        (A("2, 5"), "2", false),
        (A("2,5"), "25", false),
        (A("2, 5"), "25", false),
        (A("1, 234"), "1234", false),
        (A("1,234, 5"), "5, 1234", true),
        (A("(1, 2)"), "(2, 1)", false),
        (A("(0.5, 2)"), "\\left(\\frac{1}{2}, 2\\right)", true),
        (A("[0, 1)"), "[0, 1]", false),
        // Extraction: \boxed{}, #### N, A: N (response and reference), "the answer is".
        (R("so she pays $\\boxed{18}$."), "18", true),
        (R("\\boxed{\\frac{2}{3}}"), "\\frac{4}{6}", true),
        (
            R("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"),
            "18",
            true,
        ),
        (R("So the total is\n#### 10,001"), "10000", false),
        (
            R("She sells 2 eggs so she makes 2 * 2 = $<<2*2=4>>4 per day\nA: 4"),
            GSM8K_GROUND_TRUTH,
            false,
        ),
        (
            R("9 are for sale so 2 * 9 = $<<2*9=18>>18 per day\nA: 18"),
            GSM8K_GROUND_TRUTH,
            true,
        ),
        (
            R("a profit of $<<90000>>90,000\nA: 90,000"),
            "A: 90000",
            true,
        ),
        (R("The solutions are $\\boxed{2, 5}$."), "5,2", true),
        (R("The answer is $3\\sqrt{5}$."), "3", false),
        // Worded answers against a one-number reference: their first number, if not an
        // expression.
        (A("6 pizzas (3 cheese and 3 pepperoni)"), "6", true),
        (A("10 - 2 = 8"), "8", false),
        (A("The total is 160. The blue car costs 100."), "160", true),
        // Float noise is not the integer without a tolerance (opt-in, see below).
        (A("499.99999999999994"), "500", false),
    ];

    #[test]
    fn grading_rule_table() {
        assert!(CASES.len() >= 40);
        let mut wrong = Vec::new();
        for (given, reference, correct) in CASES {
            let graded = match given {
                A(answer) => grade(Some(answer), "", reference, None),
                R(response) => grade(None, response, reference, None),
            };
            if graded.is_correct != *correct {
                let shown = match given {
                    A(answer) | R(answer) => answer,
                };
                wrong.push(format!(
                    "{shown:?} vs {reference:?}: got {}, want {correct} (answer {:?})",
                    graded.is_correct, graded.predicted_answer
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn rationals_are_exact_and_reduced() {
        assert_eq!(parse_exact("6/8"), Rational::new(3, 4));
        assert_eq!(parse_exact("-1,234.50"), Rational::new(-2469, 2));
        assert_eq!(parse_exact("2.5e-3"), Rational::new(1, 400));
        assert_eq!(parse_exact("1,234"), Rational::new(1234, 1));
        // 37 digits do not fit the i128 reader: not a number, so compared as strings.
        assert_eq!(parse_exact(&"9".repeat(37)), None);
        assert!(answers_match(&"9".repeat(37), &"9".repeat(37), None));
    }

    #[test]
    fn every_pattern_compiles() {
        for pattern in [
            &JSON_ANSWER_STRING,
            &JSON_ANSWER_NUMBER,
            &HASHES,
            &A_LINE,
            &ANSWER_IS,
            &ANSWER_LINE,
            &NUMBER,
            &EXACT,
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
        assert!(answers_match("1,234", "1234", None));
    }

    #[test]
    fn boxed_fraction_with_nested_braces() {
        let text = "So the probability is $\\boxed{\\frac{1}{2}}$.";
        assert_eq!(
            extracted(text),
            ("\\frac{1}{2}".into(), AnswerSource::Boxed)
        );
        assert_eq!(parse_number("\\frac{1}{2}"), Some(0.5));
        assert!(answers_match("\\dfrac{1}{2}", "0.5", None));
        assert!(!answers_match("1/2", "\\frac12x", None));
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
        assert!(answers_match("$18.00", "18", None));
        assert!(!answers_match("$18.50", "18", None));
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
        assert!(answers_match("$64", "64", None));
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
        let graded = grade(None, "I cannot solve this.", "5", None);
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
            None
        ));
        assert!(answers_match("2:00 pm", "2", None));
        assert!(!answers_match("10 - 2 = 8", "8", None));
        // ...but not for lists, ratios or LaTeX, whose first number is not the answer.
        assert!(!answers_match("3, 5, 7", "3", None));
        assert!(!answers_match("\\frac{3\\sqrt{3}}{4}", "3", None));
        assert!(!answers_match("9/19 of them", "9", None));
        assert!(answers_match("x = 5", "5", None));
        // So tuples compare as strings, not by their first element.
        assert!(!answers_match("(1,3)", "(1,2)", None));
        assert!(answers_match("\\left( 1, 2 \\right)", "(1,2)", None));
    }

    #[test]
    fn negative_fraction_and_decimal_forms() {
        assert_eq!(parse_number("-\\frac{3}{4}"), Some(-0.75));
        assert_eq!(parse_number("\\frac{-3}{4}"), Some(-0.75));
        assert_eq!(parse_number("-.5"), Some(-0.5));
        assert_eq!(parse_number("3/0"), None);
    }

    #[test]
    fn tolerance_is_opt_in_absolute_or_relative() {
        // Before: a default relative 1e-4 called these equal (1e-4 · 10000 = 1 ≥ |10001 - 10000|).
        assert!(!answers_match("10001", "10000", None));
        assert!(!answers_match("120006", "120000", None));
        // Without a tolerance, 0.3333 is not 1/3.
        assert!(!answers_match("0.3333", "\\frac{1}{3}", None));
        // Absolute: |0.3333 - 1/3| = 3.3e-5 <= 1e-4; |0.333 - 1/3| = 3.3e-4 > 1e-4.
        let absolute = Some(Tolerance::Absolute(1e-4));
        assert!(answers_match("0.3333", "\\frac{1}{3}", absolute));
        assert!(!answers_match("0.333", "\\frac{1}{3}", absolute));
        // Relative to the reference: 1e-3 · 2.5 = 2.5e-3 >= |2.502 - 2.5| = 2e-3.
        let relative = Some(Tolerance::Relative(1e-3));
        assert!(answers_match("2.502", "2.5", relative));
        assert!(!answers_match("2.503", "2.5", relative));
        // Integers compare exactly whatever the tolerance: 1e-4 · 10000 = 1 would allow 10001.
        assert!(!answers_match(
            "10001",
            "10000",
            Some(Tolerance::Relative(1e-4))
        ));
        assert!(!answers_match(
            "10001",
            "10000",
            Some(Tolerance::Absolute(2.0))
        ));
        assert!(answers_match(
            "10000.5",
            "10000",
            Some(Tolerance::Absolute(0.5))
        ));
    }

    #[test]
    fn symbolic_answers_compare_as_normalised_strings() {
        assert!(answers_match("\\text{(B)}", "(b)", None));
        assert!(answers_match("2\\sqrt{3}", "2 \\sqrt{3}", None));
        assert!(!answers_match("2\\sqrt{3}", "3\\sqrt{2}", None));
        assert!(!answers_match("", "", None));
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
        let graded = grade(Some("18"), "The answer is 20.", "18", None);
        assert_eq!(graded.predicted_answer.as_deref(), Some("18"));
        assert!(graded.is_correct);
        let graded = grade(Some("  "), "The answer is 20.", "#### 20", None);
        assert_eq!(graded.predicted_answer.as_deref(), Some("20"));
        assert!(graded.is_correct);
    }

    #[test]
    fn quotes_from_almost_json_are_stripped() {
        assert_eq!(normalize_answer("\"83\""), "83");
        assert!(answers_match("\\\"60\\\"", "60", None));
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
