//! One response's tokens coloured by Q-value (the paper's Figure 4), as HTML or SVG.
//!
//! The colour scale is diverging: red at −1 (the step moves away from the goal state), white at
//! 0, blue at +1 (towards it), linear in between and clamped outside [−1, 1].

use std::fmt::Write as _;
use std::path::Path;

use plotters::style::{FontDesc, FontFamily, FontStyle};
use polars::prelude::*;

use super::{register_fonts, write_text, FONT};
use crate::error::{Error, Result};
use crate::metrics::checks::check_finite;
use crate::pipeline::schema::{Columns, IS_CORRECT, QUESTION_ID, Q_VALUES, REWARD, RM, SAMPLE};

/// The optional scores column holding each response token's text (`qrm-score --emit-tokens`).
pub const TOKENS: &str = "tokens";

/// Colour at Q = −1 (ColorBrewer RdBu's red end).
pub const NEGATIVE_COLOR: [u8; 3] = [178, 24, 43];
/// Colour at Q = 0.
pub const ZERO_COLOR: [u8; 3] = [255, 255, 255];
/// Colour at Q = +1 (ColorBrewer RdBu's blue end).
pub const POSITIVE_COLOR: [u8; 3] = [33, 102, 172];
/// Colour of a token whose value is not a number.
pub const MISSING_COLOR: [u8; 3] = [215, 215, 215];

/// The diverging colour of a Q-value: [`NEGATIVE_COLOR`] at −1, white at 0, [`POSITIVE_COLOR`]
/// at +1, interpolated linearly in RGB and clamped outside [−1, 1]; NaN is [`MISSING_COLOR`].
pub fn diverging_color(value: f32) -> [u8; 3] {
    if value.is_nan() {
        return MISSING_COLOR;
    }
    let value = value.clamp(-1.0, 1.0);
    let end = if value < 0.0 {
        NEGATIVE_COLOR
    } else {
        POSITIVE_COLOR
    };
    let weight = value.abs();
    let mut color = [0u8; 3];
    for channel in 0..3 {
        let white = f32::from(ZERO_COLOR[channel]);
        let mixed = white + weight * (f32::from(end[channel]) - white);
        color[channel] = mixed.round() as u8;
    }
    color
}

/// Black or white, whichever reads better on `background` (by Rec. 709 luma).
fn text_color(background: [u8; 3]) -> &'static str {
    let [r, g, b] = background.map(f32::from);
    if 0.2126 * r + 0.7152 * g + 0.0722 * b < 128.0 {
        "#ffffff"
    } else {
        "#000000"
    }
}

fn hex(color: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", color[0], color[1], color[2])
}

/// Escapes text for HTML and XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn tooltip(index: usize, value: Option<f32>) -> String {
    match value {
        Some(value) if value.is_nan() => format!("token {index}: q = NaN"),
        Some(value) => format!("token {index}: q = {value:+.3}"),
        None => format!("token {index}: no value"),
    }
}

/// Summary statistics of the finite values: `n · mean · min · max`.
fn summary(tokens: usize, q_values: &[f32]) -> String {
    let finite: Vec<f32> = q_values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return format!("{tokens} tokens");
    }
    let mean = finite.iter().map(|&v| f64::from(v)).sum::<f64>() / finite.len() as f64;
    let min = finite.iter().copied().fold(f32::INFINITY, f32::min);
    let max = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    format!("{tokens} tokens · mean q {mean:+.3} · min {min:+.3} · max {max:+.3}")
}

const SCALE_STOPS: [(f32, &str); 5] = [
    (-1.0, "−1"),
    (-0.5, "−0.5"),
    (0.0, "0"),
    (0.5, "+0.5"),
    (1.0, "+1"),
];

/// A standalone HTML page showing `tokens` on backgrounds coloured by `q_values` (see
/// [`diverging_color`]), with each value in the token's tooltip. Text is escaped, whitespace and
/// newlines are kept. Tokens past the end of `q_values` are shown uncoloured.
pub fn tokens_html(tokens: &[String], q_values: &[f32], title: &str) -> String {
    let title = escape(title);
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Verdana, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.3em; }}
.summary {{ color: #555; }}
.scale span {{ display: inline-block; padding: 0.1em 0.6em; font-size: 0.85em; border: 1px solid #ccc; }}
.tokens {{ white-space: pre-wrap; font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 15px; line-height: 1.9; border: 1px solid #ddd; padding: 1em; }}
.tokens span {{ border-radius: 2px; box-shadow: inset -1px 0 #ffffff; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="summary">{summary}</p>
<p class="scale">Q-value: "#,
        summary = escape(&summary(tokens.len(), q_values)),
    );
    for (stop, label) in SCALE_STOPS {
        let background = diverging_color(stop);
        let _ = write!(
            html,
            r#"<span style="background:{};color:{}">{label}</span>"#,
            hex(background),
            text_color(background),
        );
    }
    html.push_str("</p>\n<div class=\"tokens\">");
    for (index, token) in tokens.iter().enumerate() {
        let value = q_values.get(index).copied();
        let tip = escape(&tooltip(index, value));
        match value {
            Some(value) => {
                let background = diverging_color(value);
                let _ = write!(
                    html,
                    r#"<span style="background:{};color:{}" title="{tip}">{}</span>"#,
                    hex(background),
                    text_color(background),
                    escape(token),
                );
            }
            None => {
                let _ = write!(html, r#"<span title="{tip}">{}</span>"#, escape(token));
            }
        }
    }
    html.push_str("</div>\n</body>\n</html>\n");
    html
}

const SVG_WIDTH: f64 = 1000.0;
const SVG_MARGIN: f64 = 24.0;
const SVG_FONT_SIZE: f64 = 16.0;
const SVG_LINE_HEIGHT: f64 = 28.0;
const SVG_TOKENS_TOP: f64 = 96.0;

/// Width in pixels of `text` set in DejaVu Sans at `font_size` px per em.
fn text_width(text: &str, font_size: f64) -> f64 {
    // plotters' sizes are ab_glyph scales, the font's ascent-to-descent height; DejaVu Sans's
    // is 2384/2048 em.
    let scale = font_size * 2384.0 / 2048.0;
    let measured = register_fonts().ok().and_then(|()| {
        FontDesc::new(FontFamily::Name(FONT), scale, FontStyle::Normal)
            .box_size(text)
            .ok()
    });
    match measured {
        Some((width, _)) => f64::from(width),
        None => text.chars().count() as f64 * font_size * 0.6,
    }
}

/// An SVG of `tokens` on backgrounds coloured by `q_values` (see [`diverging_color`]), wrapped
/// to a 1000-pixel width, with a `<title>` tooltip per token and the colour scale under the
/// title. Newlines in tokens start new lines; tokens past the end of `q_values` are uncoloured.
pub fn tokens_svg(tokens: &[String], q_values: &[f32], title: &str) -> String {
    let mut body = String::new();
    let right = SVG_WIDTH - SVG_MARGIN;
    let (mut x, mut y) = (SVG_MARGIN, SVG_TOKENS_TOP);
    for (index, token) in tokens.iter().enumerate() {
        let value = q_values.get(index).copied();
        let background = value.map(diverging_color);
        let tip = escape(&tooltip(index, value));
        let display = token.replace('\t', "    ");
        for (piece_index, piece) in display.split('\n').enumerate() {
            if piece_index > 0 {
                x = SVG_MARGIN;
                y += SVG_LINE_HEIGHT;
            }
            if piece.is_empty() {
                continue;
            }
            let width = text_width(piece, SVG_FONT_SIZE);
            if x + width > right && x > SVG_MARGIN {
                x = SVG_MARGIN;
                y += SVG_LINE_HEIGHT;
            }
            let _ = write!(body, "<g><title>{tip}</title>");
            if let Some(background) = background {
                let _ = write!(
                    body,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                    y - SVG_LINE_HEIGHT + 6.0,
                    // A hairline gap keeps neighbouring tokens of similar colour apart.
                    (width - 1.0).max(1.0),
                    SVG_LINE_HEIGHT - 4.0,
                    hex(background),
                );
            }
            let fill = background.map(text_color).unwrap_or("#000000");
            if piece.trim().is_empty() {
                let _ = write!(body, "</g>");
            } else {
                let _ = write!(
                    body,
                    r#"<text x="{x:.1}" y="{:.1}" fill="{fill}" textLength="{width:.1}" lengthAdjust="spacingAndGlyphs">{}</text></g>"#,
                    y - 8.0,
                    escape(piece),
                );
            }
            body.push('\n');
            x += width;
        }
    }
    let height = y + SVG_MARGIN;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height:.0}" viewBox="0 0 {SVG_WIDTH} {height:.0}" xml:space="preserve" font-family="DejaVu Sans, Verdana, sans-serif" font-size="{SVG_FONT_SIZE}">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{SVG_MARGIN}" y="34" font-size="20" font-weight="bold">{}</text>
<text x="{SVG_MARGIN}" y="60" font-size="14" fill="#555555">{}</text>
"##,
        escape(title),
        escape(&summary(tokens.len(), q_values)),
    );
    // The colour scale: one swatch per stop, labelled with its value.
    let _ = write!(
        svg,
        r##"<text x="{}" y="60" font-size="14" text-anchor="end" fill="#555555">Q-value</text>"##,
        SVG_WIDTH - SVG_MARGIN - 5.0 * 44.0 - 8.0
    );
    for (index, (stop, label)) in SCALE_STOPS.into_iter().enumerate() {
        let background = diverging_color(stop);
        let left = SVG_WIDTH - SVG_MARGIN - (5 - index) as f64 * 44.0;
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="44" width="44" height="22" fill="{}" stroke="#cccccc"/><text x="{}" y="60" font-size="12" text-anchor="middle" fill="{}">{label}</text>"##,
            hex(background),
            left + 22.0,
            text_color(background),
        );
    }
    svg.push('\n');
    svg.push_str(&body);
    svg.push_str("</svg>\n");
    svg
}

/// Which scores row to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSelector {
    /// The n-th row, counted from 1 as qrm's error messages count.
    Number(usize),
    /// The row with this `question_id` and `sample`.
    Sample { question_id: String, sample: String },
}

/// One scores row's tokens and Q-values, and a title describing it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub tokens: Vec<String>,
    pub q_values: Vec<f32>,
    pub title: String,
}

/// Finds the row `selector` names in a scores table read from `path` and returns its readable
/// tokens (see [`readable_tokens`]), its `q_values` and a title naming the question, sample,
/// reward model, reward and correctness where the table has them.
///
/// A NaN or ±inf among the row's `q_values` is the error of [`check_finite`] (file, row,
/// column), as in qrm-auroc and qrm-filter; under `drop_nan` those values are drawn
/// uncoloured ([`MISSING_COLOR`]) and counted on stderr.
pub fn token_row(
    scores: &DataFrame,
    path: &Path,
    selector: &RowSelector,
    drop_nan: bool,
) -> Result<TokenRow> {
    let columns = Columns::new(scores, path);
    let index = match selector {
        RowSelector::Number(number) => {
            if *number == 0 || *number > scores.height() {
                return Err(Error::Usage(format!(
                    "{}: --row {number} is out of range: rows are numbered 1 to {}",
                    path.display(),
                    scores.height()
                )));
            }
            number - 1
        }
        RowSelector::Sample {
            question_id,
            sample,
        } => {
            let question_ids = columns.str(QUESTION_ID)?;
            let samples = columns.str(SAMPLE)?;
            let matches: Vec<usize> = (0..scores.height())
                .filter(|&i| {
                    question_ids.get(i) == Some(question_id.as_str())
                        && samples.get(i) == Some(sample.as_str())
                })
                .collect();
            match matches.as_slice() {
                [index] => *index,
                [] => {
                    return Err(Error::Usage(format!(
                        "{}: no row has question_id {question_id:?} and sample {sample:?}",
                        path.display()
                    )))
                }
                several => {
                    let rows: Vec<String> = several.iter().map(|i| (i + 1).to_string()).collect();
                    return Err(Error::Usage(format!(
                        "{}: rows {} all have question_id {question_id:?} and sample \
                         {sample:?}; pick one with --row",
                        path.display(),
                        rows.join(", ")
                    )));
                }
            }
        }
    };

    if !columns.has(TOKENS) {
        return Err(Error::Format {
            path: path.to_owned(),
            message: format!(
                "no `{TOKENS}` column to draw; re-score with `qrm-score --emit-tokens` to keep \
                 each token's text"
            ),
        });
    }
    let tokens_column = scores.column(TOKENS).map_err(|e| Error::table(path, e))?;
    let tokens_list = match tokens_column.dtype() {
        DataType::List(inner) if matches!(**inner, DataType::String) => {
            tokens_column.list().map_err(|e| Error::table(path, e))?
        }
        other => {
            return Err(Error::ColumnType {
                path: path.to_owned(),
                column: TOKENS.to_owned(),
                expected: "List<Utf8>".to_owned(),
                found: other.to_string(),
            })
        }
    };
    let tokens: Vec<String> = tokens_list
        .get_as_series(index)
        .ok_or_else(|| Error::bad_value(path, index, TOKENS, "null token list"))?
        .str()
        .map_err(|e| Error::table(path, e))?
        .iter()
        .map(|t| t.unwrap_or_default().to_owned())
        .collect();
    let q_values: Vec<f32> = columns
        .f64_lists(Q_VALUES)?
        .get_as_series(index)
        .ok_or_else(|| {
            Error::bad_value(
                path,
                index,
                Q_VALUES,
                "null: the row was scored without a goal state",
            )
        })?
        .f64()
        .map_err(|e| Error::table(path, e))?
        .iter()
        .map(|v| v.map_or(f32::NAN, |v| v as f32))
        .collect();
    let non_finite = q_values.iter().filter(|v| !v.is_finite()).count();
    if non_finite > 0 {
        if !drop_nan {
            let mut only = vec![false; scores.height()];
            only[index] = true;
            check_finite(scores, path, &[Q_VALUES], false, &mut only)?;
        }
        tracing::warn!(
            "{}: row {}: {non_finite} non-finite `{Q_VALUES}` value(s) drawn uncoloured \
             (--drop-nan)",
            path.display(),
            index + 1
        );
    }
    if tokens.len() != q_values.len() {
        return Err(Error::bad_value(
            path,
            index,
            TOKENS,
            format!(
                "{} tokens but {} values in `{Q_VALUES}`",
                tokens.len(),
                q_values.len()
            ),
        ));
    }
    Ok(TokenRow {
        tokens: readable_tokens(&tokens),
        q_values,
        title: row_title(&columns, index)?,
    })
}

fn row_title(columns: &Columns<'_>, index: usize) -> Result<String> {
    let mut parts = Vec::new();
    let text = |name: &str| -> Result<Option<String>> {
        if !columns.has(name) {
            return Ok(None);
        }
        Ok(columns.str(name)?.get(index).map(str::to_owned))
    };
    if let Some(question_id) = text(QUESTION_ID)? {
        parts.push(question_id);
    }
    if let Some(sample) = text(SAMPLE)? {
        parts.push(format!("sample {sample}"));
    }
    if let Some(rm) = text(RM)? {
        parts.push(rm);
    }
    if columns.has(REWARD) {
        if let Some(reward) = columns.f64(REWARD)?.get(index) {
            parts.push(format!("reward {reward:+.3}"));
        }
    }
    if columns.has(IS_CORRECT) {
        if let Ok(correct) = columns
            .frame
            .column(IS_CORRECT)
            .and_then(|c| c.bool().cloned())
        {
            match correct.get(index) {
                Some(true) => parts.push("correct".to_owned()),
                Some(false) => parts.push("incorrect".to_owned()),
                None => {}
            }
        }
    }
    if parts.is_empty() {
        parts.push(format!("row {}", index + 1));
    }
    Ok(parts.join(" · "))
}

/// Token strings as text: byte-level BPE pieces (`Ġthe`, `Ċ`, as GPT-2-style tokenizers such
/// as SmolLM2's spell them) are decoded to their bytes (` the`, a newline); tokens that already
/// read as text are returned unchanged.
///
/// The pieces are decoded only when every character of every token belongs to the byte-level
/// alphabet, none is a plain space or newline, and some token holds one of the alphabet's
/// stand-ins for bytes below `!` (`Ġ` for a space, `Ċ` for a newline). A character whose UTF-8
/// bytes are split across tokens is shown with the token that completes it.
pub fn readable_tokens(tokens: &[String]) -> Vec<String> {
    let alphabet = byte_level_alphabet();
    let byte_of = |c: char| alphabet.iter().position(|&a| a == c);
    let all_byte_level = tokens
        .iter()
        .all(|t| t.chars().all(|c| byte_of(c).is_some()));
    let has_stand_ins = tokens
        .iter()
        .any(|t| t.chars().any(|c| byte_of(c).is_some_and(|b| b <= 0x20)));
    if !all_byte_level || !has_stand_ins {
        return tokens.to_vec();
    }
    // A character split across tokens is shown with the token that completes it.
    let mut pending: Vec<u8> = Vec::new();
    tokens
        .iter()
        .map(|token| {
            pending.extend(token.chars().filter_map(|c| byte_of(c).map(|b| b as u8)));
            let complete = match std::str::from_utf8(&pending) {
                Ok(_) => pending.len(),
                // An incomplete sequence at the end waits for the next token.
                Err(error) if error.error_len().is_none() => error.valid_up_to(),
                Err(_) => pending.len(),
            };
            let rest = pending.split_off(complete);
            let text = String::from_utf8_lossy(&pending).into_owned();
            pending = rest;
            text
        })
        .collect()
}

/// GPT-2's `bytes_to_unicode`: the character standing for each byte 0..=255.
fn byte_level_alphabet() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut alphabet = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..256u32 {
        let code = if printable(byte) {
            byte
        } else {
            next += 1;
            next - 1
        };
        alphabet[byte as usize] = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    alphabet
}

/// Draws one scores row's tokens into `output`: HTML for `.html`/`.htm`, SVG for `.svg`.
pub fn tokens_figure(
    scores: &DataFrame,
    input: &Path,
    selector: &RowSelector,
    drop_nan: bool,
    output: &Path,
) -> Result<()> {
    let extension = output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let render: fn(&[String], &[f32], &str) -> String = match extension.as_deref() {
        Some("html" | "htm") => tokens_html,
        Some("svg") => tokens_svg,
        _ => {
            return Err(Error::Usage(format!(
                "{}: unknown extension for a token figure; use .html or .svg",
                output.display()
            )))
        }
    };
    let row = token_row(scores, input, selector, drop_nan)?;
    write_text(output, &render(&row.tokens, &row.q_values, &row.title))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::test_support::samples_dir;

    fn strings(tokens: &[&str]) -> Vec<String> {
        tokens.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn colors_at_the_ends_and_middle_of_the_scale() {
        assert_eq!(diverging_color(-1.0), [178, 24, 43]);
        assert_eq!(diverging_color(0.0), [255, 255, 255]);
        assert_eq!(diverging_color(1.0), [33, 102, 172]);
        // Halfway to red: ((255+178)/2, (255+24)/2, (255+43)/2) = (216.5, 139.5, 149), rounded
        // half away from zero.
        assert_eq!(diverging_color(-0.5), [217, 140, 149]);
        assert_eq!(diverging_color(-3.0), diverging_color(-1.0));
        assert_eq!(diverging_color(7.0), diverging_color(1.0));
        assert_eq!(diverging_color(f32::NAN), MISSING_COLOR);
    }

    #[test]
    fn text_stays_readable_on_dark_ends() {
        assert_eq!(text_color(diverging_color(-1.0)), "#ffffff");
        assert_eq!(text_color(diverging_color(1.0)), "#ffffff");
        assert_eq!(text_color(diverging_color(0.1)), "#000000");
    }

    #[test]
    fn html_escapes_and_keeps_whitespace() {
        let tokens = strings(&["<b>", " &", "\"x\"", "\n", "  y"]);
        let html = tokens_html(&tokens, &[-1.0, 0.0, 1.0, 0.5, 0.25], "a < b & 'c'");
        assert!(html.contains("<title>a &lt; b &amp; &#39;c&#39;</title>"));
        assert!(html.contains(">&lt;b&gt;</span>"));
        assert!(html.contains("> &amp;</span>"));
        assert!(html.contains(">&quot;x&quot;</span>"));
        assert!(html.contains(">\n</span>"));
        assert!(html.contains(">  y</span>"));
        assert!(html.contains("white-space: pre-wrap"));
        assert!(html
            .contains(r#"style="background:#b2182b;color:#ffffff" title="token 0: q = -1.000""#));
        assert!(html
            .contains(r#"style="background:#2166ac;color:#ffffff" title="token 2: q = +1.000""#));
    }

    #[test]
    fn html_shows_tokens_without_values_uncoloured() {
        let html = tokens_html(&strings(&["a", "b"]), &[0.5], "t");
        assert!(html.contains(r#"<span title="token 1: no value">b</span>"#));
    }

    #[test]
    fn svg_wraps_long_text_and_breaks_at_newlines() {
        let words: Vec<String> = (0..200).map(|i| format!(" word{i}")).collect();
        let values: Vec<f32> = (0..200).map(|i| (i as f32 / 100.0) - 1.0).collect();
        let svg = tokens_svg(&words, &values, "wrapped");
        let rows: std::collections::BTreeSet<String> = svg
            .split("<rect x=\"")
            .skip(1)
            .filter_map(|r| r.split("y=\"").nth(1)?.split('"').next().map(str::to_owned))
            .collect();
        // 200 words of about 60 px in a 952 px column: well over ten lines.
        assert!(rows.len() > 10, "{} lines", rows.len());
        for width in svg.split("<rect x=\"").skip(1).filter_map(|r| {
            let x: f64 = r.split('"').next()?.parse().ok()?;
            let w: f64 = r
                .split("width=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()?;
            Some(x + w)
        }) {
            assert!(
                width <= SVG_WIDTH - SVG_MARGIN + 0.1,
                "token ends at {width}"
            );
        }

        let svg = tokens_svg(&strings(&["a", "\n", "b"]), &[0.1, 0.2, 0.3], "t");
        let a_y = svg
            .split(">a</text>")
            .next()
            .unwrap()
            .rsplit("y=\"")
            .next()
            .unwrap();
        let b_y = svg
            .split(">b</text>")
            .next()
            .unwrap()
            .rsplit("y=\"")
            .next()
            .unwrap();
        assert_ne!(a_y.split('"').next(), b_y.split('"').next());
    }

    #[test]
    fn svg_has_title_scale_and_tooltips() {
        let svg = tokens_svg(&strings(&["x<y", " z"]), &[-0.25, 0.75], "q & a");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains(">q &amp; a</text>"));
        assert!(svg.contains(">x&lt;y</text>"));
        assert!(svg.contains("<title>token 1: q = +0.750</title>"));
        assert!(svg.contains(">Q-value</text>"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn byte_level_pieces_become_text() {
        let tokens = strings(&["The", "Ġanswer", "Ġis", "Ċ", "42", "ĠâĤ¬"]);
        assert_eq!(
            readable_tokens(&tokens),
            strings(&["The", " answer", " is", "\n", "42", " €"])
        );
        // "€" is E2 82 AC: split as "â" + "Ĥ¬", it shows with the second piece.
        let split = strings(&["Ġx", "Ġâ", "Ĥ¬"]);
        assert_eq!(readable_tokens(&split), strings(&[" x", " ", "€"]));
        // Already text: unchanged, even with characters from the alphabet.
        let text = strings(&["The", " café", "Ġ"]);
        assert_eq!(readable_tokens(&text), text);
    }

    #[test]
    fn smollm2_pieces_of_a_gsm8k_answer_read_back_as_the_answer() {
        let Some(tokenizer_path) =
            crate::testing::shared_file("models/smollm2-135m-instruct/tokenizer.json")
        else {
            return;
        };
        let Some(questions) = crate::testing::shared_file("gsm8k/test.jsonl") else {
            return;
        };
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).unwrap();
        let text = std::fs::read_to_string(&questions).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        // "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<...": a
        // newline, a curly apostrophe (three UTF-8 bytes) and `<<`, `$` to escape.
        let answer = first["answer"].as_str().unwrap();
        let encoding = tokenizer.encode(answer, false).unwrap();
        let pieces: Vec<String> = encoding.get_tokens().to_vec();
        assert!(pieces.iter().any(|p| p.contains('Ġ')), "{pieces:?}");
        let readable = readable_tokens(&pieces);
        assert_eq!(readable.concat(), answer);
        assert_eq!(readable.len(), pieces.len());
        let values: Vec<f32> = (0..pieces.len()).map(|i| (i as f32 * 0.3).sin()).collect();
        let html = tokens_html(&readable, &values, "gsm8k 0");
        assert!(html.contains("&lt;&lt;"));
        assert_eq!(html.matches("title=\"token ").count(), pieces.len());
    }

    fn scores() -> DataFrame {
        let tokens = Series::new(
            "tokens".into(),
            [
                Series::new("".into(), ["ĠYes", "Ċ"]),
                Series::new("".into(), ["a", "b", "c"]),
            ],
        );
        let q_values = Series::new(
            "q_values".into(),
            [
                Series::new("".into(), [0.5f32, -0.5]),
                Series::new("".into(), [0.1f32, 0.2, 0.3]),
            ],
        );
        df!(
            "question_id" => ["q1", "q1"],
            "sample" => ["0", "1"],
            "rm" => ["qrm", "qrm"],
            "reward" => [1.5f32, -0.25],
            "is_correct" => [true, false],
            "tokens" => tokens,
            "q_values" => q_values,
        )
        .unwrap()
    }

    #[test]
    fn rows_are_found_by_number_or_sample() {
        let path = Path::new("scores.parquet");
        let row = token_row(&scores(), path, &RowSelector::Number(1), false).unwrap();
        assert_eq!(row.tokens, strings(&[" Yes", "\n"]));
        assert_eq!(row.q_values, vec![0.5, -0.5]);
        assert_eq!(row.title, "q1 · sample 0 · qrm · reward +1.500 · correct");
        let selector = RowSelector::Sample {
            question_id: "q1".into(),
            sample: "1".into(),
        };
        let row = token_row(&scores(), path, &selector, false).unwrap();
        assert_eq!(row.tokens, strings(&["a", "b", "c"]));
        assert!(row.title.ends_with("incorrect"));
    }

    #[test]
    fn bad_selections_and_missing_tokens_are_explained() {
        let path = Path::new("scores.parquet");
        let error = token_row(&scores(), path, &RowSelector::Number(3), false).unwrap_err();
        assert!(error.to_string().contains("numbered 1 to 2"), "{error}");
        let selector = RowSelector::Sample {
            question_id: "q9".into(),
            sample: "0".into(),
        };
        let error = token_row(&scores(), path, &selector, false).unwrap_err();
        assert!(error.to_string().contains("no row has"), "{error}");
        let without = scores().drop("tokens").unwrap();
        let error = token_row(&without, path, &RowSelector::Number(1), false).unwrap_err();
        assert!(error.to_string().contains("--emit-tokens"), "{error}");
    }

    #[test]
    fn non_finite_q_values_fail_naming_the_row_unless_drop_nan() {
        let mut frame = scores();
        let q_values = Series::new(
            "q_values".into(),
            [
                Series::new("".into(), [0.5f32, -0.5]),
                Series::new("".into(), [0.1f32, f32::NAN, 0.3]),
            ],
        );
        frame.with_column(q_values.into_column()).unwrap();
        let path = Path::new("s.parquet");
        // Row 1 is finite and draws as before.
        token_row(&frame, path, &RowSelector::Number(1), false).unwrap();
        let error = token_row(&frame, path, &RowSelector::Number(2), false).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("`q_values` is missing or not finite in 1 row(s): 2"),
            "{text}"
        );
        let row = token_row(&frame, path, &RowSelector::Number(2), true).unwrap();
        assert!(row.q_values[1].is_nan());
    }

    #[test]
    fn length_mismatch_names_the_row() {
        let mut frame = scores();
        let q_values = Series::new(
            "q_values".into(),
            [
                Series::new("".into(), [0.5f32]),
                Series::new("".into(), [0.1f32, 0.2, 0.3]),
            ],
        );
        frame.with_column(q_values.into_column()).unwrap();
        let error = token_row(
            &frame,
            Path::new("s.parquet"),
            &RowSelector::Number(1),
            false,
        )
        .unwrap_err();
        assert!(error.to_string().contains("row 1"), "{error}");
        assert!(
            error.to_string().contains("2 tokens but 1 values"),
            "{error}"
        );
    }

    #[test]
    fn figure_extension_picks_html_or_svg() {
        let directory = tempfile::tempdir().unwrap();
        let input = Path::new("scores.parquet");
        let html = directory.path().join("t.html");
        tokens_figure(&scores(), input, &RowSelector::Number(2), false, &html).unwrap();
        assert!(std::fs::read_to_string(&html)
            .unwrap()
            .starts_with("<!DOCTYPE html>"));
        let svg = directory.path().join("t.svg");
        tokens_figure(&scores(), input, &RowSelector::Number(2), false, &svg).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
        let error = tokens_figure(
            &scores(),
            input,
            &RowSelector::Number(2),
            false,
            &directory.path().join("t.png"),
        )
        .unwrap_err();
        assert!(error.to_string().contains(".html or .svg"), "{error}");
    }

    #[test]
    #[ignore = "writes sample figures to look at: target/plot-samples or $QRM_PLOT_SAMPLES"]
    fn tokens_samples() {
        let text = "Natalia sold 48 clips in April. In May she sold half as many: 48 / 2 = 24 \
                    clips.\nAltogether she sold 48 + 24 = 72 clips.\nThe answer is 72.";
        let mut tokens = Vec::new();
        for (line_index, line) in text.split('\n').enumerate() {
            if line_index > 0 {
                tokens.push("\n".to_owned());
            }
            for (word_index, word) in line.split(' ').enumerate() {
                tokens.push(if word_index == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                });
            }
        }
        let values: Vec<f32> = (0..tokens.len())
            .map(|i| ((i as f32) * 0.37).sin() * (1.0 - i as f32 / tokens.len() as f32))
            .collect();
        let directory = samples_dir();
        let title = "gsm8k-main-test-#0 · sample 3 · qrm · reward +1.234 · correct";
        std::fs::write(
            directory.join("tokens.svg"),
            tokens_svg(&tokens, &values, title),
        )
        .unwrap();
        std::fs::write(
            directory.join("tokens.html"),
            tokens_html(&tokens, &values, title),
        )
        .unwrap();

        // Real SmolLM2 pieces of a GSM8K reference answer, when the shared data is here.
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        let tokenizer = data.join("models/smollm2-135m-instruct/tokenizer.json");
        if let Ok(tokenizer) = tokenizers::Tokenizer::from_file(tokenizer) {
            let text = std::fs::read_to_string(data.join("gsm8k/test.jsonl")).unwrap();
            let row: serde_json::Value =
                serde_json::from_str(text.lines().next().unwrap()).unwrap();
            let answer = row["answer"].as_str().unwrap();
            let pieces = tokenizer
                .encode(answer, false)
                .unwrap()
                .get_tokens()
                .to_vec();
            let tokens = readable_tokens(&pieces);
            let values: Vec<f32> = (0..tokens.len())
                .map(|i| ((i as f32) * 0.21).cos() * 0.9)
                .collect();
            let svg = tokens_svg(
                &tokens,
                &values,
                "gsm8k test 0 (SmolLM2 tokens) <reference>",
            );
            std::fs::write(directory.join("tokens_smollm2.svg"), svg).unwrap();
        }
    }
}
