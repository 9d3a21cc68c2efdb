//! Figures: the paper's plots drawn from qrm's report tables, as PNG or SVG.
//!
//! * [`auroc_figure`]: grouped bars (benchmark × reward model, CI whiskers) for whole responses,
//!   or lines with CI bands per benchmark for partial generations (a `qrm-auroc` report).
//! * [`filter_sweep_figure`]: accuracy after Q-filtering and tokens saved against the threshold
//!   (a `qrm-filter --sweep` report).
//! * [`training_figure`]: loss parts and pairwise accuracy against the step (a `qrm-train` log).
//! * [`tokens_html`], [`tokens_svg`]: one response's tokens coloured by Q-value, red below 0 and
//!   blue above (the paper's Figure 4).
//!
//! The output extension picks the format (`.png` or `.svg`). Text is set in DejaVu Sans, which
//! is embedded (`data/fonts/`, Bitstream Vera license), so figures look the same on machines
//! without system fonts.

mod auroc;
mod filter;
mod tokens;
mod training;

pub use auroc::auroc_figure;
pub use filter::filter_sweep_figure;
pub use tokens::{
    diverging_color, readable_tokens, token_row, tokens_figure, tokens_html, tokens_svg,
    RowSelector, TokenRow, MISSING_COLOR, NEGATIVE_COLOR, POSITIVE_COLOR, TOKENS, ZERO_COLOR,
};
pub use training::training_figure;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};
use crate::pipeline::io::write_atomic;

/// The family name figures use; the embedded DejaVu Sans is registered under it.
pub(crate) const FONT: &str = "sans-serif";
static REGULAR_FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");
static BOLD_FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans-Bold.ttf");

/// Registers the embedded fonts with plotters once per process.
pub(crate) fn register_fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, REGULAR_FONT).is_ok()
            && register_font(FONT, FontStyle::Bold, BOLD_FONT).is_ok()
    });
    if registered {
        Ok(())
    } else {
        Err(Error::Format {
            path: PathBuf::from("data/fonts/DejaVuSans.ttf"),
            message: "the embedded font could not be parsed".to_owned(),
        })
    }
}

/// Image formats figures are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The format a path's extension names (`.png`, `.svg`), or a usage error.
    pub fn from_path(path: &Path) -> Result<Self> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("png") => Ok(ImageFormat::Png),
            Some("svg") => Ok(ImageFormat::Svg),
            _ => Err(Error::Usage(format!(
                "{}: unknown figure extension; use .png or .svg",
                path.display()
            ))),
        }
    }
}

pub(crate) type DrawError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type DrawResult = std::result::Result<(), DrawError>;

/// A figure that can be drawn on any plotters backend.
pub(crate) trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws onto a white root area of [`Figure::size`].
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Draws a figure into `path` (PNG or SVG by extension), atomically.
pub(crate) fn save(figure: &impl Figure, path: &Path) -> Result<()> {
    let format = ImageFormat::from_path(path)?;
    register_fonts()?;
    let failed = |error: DrawError| Error::Format {
        path: path.to_owned(),
        message: format!("drawing failed: {error}"),
    };
    match format {
        ImageFormat::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, figure.size()).into_drawing_area();
                root.fill(&WHITE).map_err(|e| failed(e.into()))?;
                figure.draw(&root).map_err(failed)?;
                root.present().map_err(|e| failed(e.into()))?;
            }
            write_text(path, &svg)
        }
        ImageFormat::Png => {
            // The bitmap backend writes by path, so draw into a sibling temporary file with a
            // `.png` suffix and rename it into place once complete.
            let directory = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            };
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let temporary = tempfile::Builder::new()
                .prefix(&format!(".{file_name}."))
                .suffix(".png")
                .tempfile_in(&directory)
                .map_err(|e| Error::io(&directory, e))?;
            {
                let root = BitMapBackend::new(temporary.path(), figure.size()).into_drawing_area();
                root.fill(&WHITE).map_err(|e| failed(e.into()))?;
                figure.draw(&root).map_err(failed)?;
                root.present().map_err(|e| failed(e.into()))?;
            }
            temporary
                .persist(path)
                .map_err(|e| Error::io(path, e.error))?;
            make_readable(path)
        }
    }
}

/// Writes a text file (SVG, HTML) atomically.
pub(crate) fn write_text(path: &Path, contents: &str) -> Result<()> {
    write_atomic(path, |writer| {
        writer
            .write_all(contents.as_bytes())
            .map_err(|e| Error::io(path, e))
    })?;
    make_readable(path)
}

/// The error for a report that holds nothing to draw.
pub(crate) fn nothing_to_plot(path: &Path, why: &str) -> Error {
    Error::Format {
        path: path.to_owned(),
        message: format!("nothing to plot: {why}"),
    }
}

// ---------------------------------------------------------------- style

/// Tableau 10: distinct, print-safe series colours.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the `index`-th series.
pub(crate) fn series_color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

// Sizes are plotters font sizes; ab_glyph draws an em of `size / 1.24` pixels.
pub(crate) const TITLE_SIZE: u32 = 34;
pub(crate) const PANEL_TITLE_SIZE: u32 = 27;
pub(crate) const AXIS_LABEL_SIZE: u32 = 24;
pub(crate) const TICK_LABEL_SIZE: u32 = 20;
pub(crate) const LEGEND_SIZE: u32 = 21;
pub(crate) const VALUE_LABEL_SIZE: u32 = 17;
pub(crate) const GREY: RGBColor = RGBColor(110, 110, 110);

pub(crate) fn text(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

pub(crate) fn bold(size: u32) -> TextStyle<'static> {
    (FONT, size, FontStyle::Bold).into_font().color(&BLACK)
}

/// Draws the figure title centred at the top and returns the area below it.
pub(crate) fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> std::result::Result<DrawingArea<DB, Shift>, DrawError>
where
    DB::ErrorType: 'static,
{
    // ab_glyph draws glyphs about a quarter of an em above the text position; the top margin
    // keeps the title's ascenders inside the image.
    Ok(root.margin(14, 0, 0, 0).titled(title, bold(TITLE_SIZE))?)
}

/// A tick label with `decimals` decimals that never reads `-0.00`.
pub(crate) fn tick_label(value: f64, decimals: usize) -> String {
    let label = format!("{value:.decimals$}");
    match label.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_owned(),
        _ => label,
    }
}

/// Decimals that tell ticks `span` apart (about eight ticks on the axis).
pub(crate) fn decimals_for(span: f64) -> usize {
    match span / 8.0 {
        step if step >= 1.0 => 0,
        step if step >= 0.1 => 1,
        step if step >= 0.01 => 2,
        _ => 3,
    }
}

/// Makes a figure written through a temporary file readable like any other new file
/// (temporary files are created owner-only).
pub(crate) fn make_readable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// What a legend entry shows beside its label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mark {
    /// A filled square (bars).
    Bar,
    /// A line with a dot (lines with markers).
    Line,
    /// A dashed line (reference values).
    Dashed,
    /// A thin whisker with caps (confidence intervals).
    Whisker,
    /// A light filled band (confidence bands).
    Band,
}

/// One legend row.
#[derive(Debug, Clone)]
pub(crate) struct LegendEntry {
    pub label: String,
    pub color: RGBColor,
    pub mark: Mark,
}

impl LegendEntry {
    pub fn new(label: impl Into<String>, color: RGBColor, mark: Mark) -> Self {
        Self {
            label: label.into(),
            color,
            mark,
        }
    }
}

const SWATCH: i32 = 34;
const LEGEND_ROW: i32 = 30;

/// Width in pixels a legend of these entries needs, padding included (fonts must be registered).
pub(crate) fn legend_width(heading: &str, entries: &[LegendEntry]) -> u32 {
    let measure = |style: TextStyle<'_>, label: &str| {
        style
            .font
            .box_size(label)
            .map(|(width, _)| width)
            .unwrap_or(label.chars().count() as u32 * LEGEND_SIZE / 2)
    };
    let widest_label = entries
        .iter()
        .map(|entry| measure(text(LEGEND_SIZE), &entry.label))
        .max()
        .unwrap_or(0);
    let heading_width = measure(bold(LEGEND_SIZE), heading);
    (widest_label + SWATCH as u32 + 16).max(heading_width) + 40
}

/// Draws a legend (a bold heading, then one row per entry) at the top left of `area`.
pub(crate) fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    heading: &str,
    entries: &[LegendEntry],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let left = 14;
    let mut top = 12;
    if !heading.is_empty() {
        area.draw(&Text::new(
            heading.to_owned(),
            (left, top),
            bold(LEGEND_SIZE),
        ))?;
        top += LEGEND_ROW + 4;
    }
    for entry in entries {
        let middle = top + LEGEND_ROW / 2 - 4;
        let color = entry.color;
        match entry.mark {
            Mark::Bar => area.draw(&Rectangle::new(
                [(left, middle - 9), (left + SWATCH, middle + 9)],
                color.filled(),
            ))?,
            Mark::Line => {
                area.draw(&PathElement::new(
                    vec![(left, middle), (left + SWATCH, middle)],
                    color.stroke_width(3),
                ))?;
                area.draw(&Circle::new((left + SWATCH / 2, middle), 5, color.filled()))?;
            }
            Mark::Dashed => {
                for start in (0..SWATCH).step_by(10) {
                    area.draw(&PathElement::new(
                        vec![
                            (left + start, middle),
                            (left + (start + 6).min(SWATCH), middle),
                        ],
                        color.stroke_width(2),
                    ))?;
                }
            }
            Mark::Whisker => {
                let x = left + SWATCH / 2;
                let style = color.stroke_width(2);
                area.draw(&PathElement::new(
                    vec![(x, middle - 10), (x, middle + 10)],
                    style,
                ))?;
                area.draw(&PathElement::new(
                    vec![(x - 6, middle - 10), (x + 6, middle - 10)],
                    style,
                ))?;
                area.draw(&PathElement::new(
                    vec![(x - 6, middle + 10), (x + 6, middle + 10)],
                    style,
                ))?;
            }
            Mark::Band => area.draw(&Rectangle::new(
                [(left, middle - 9), (left + SWATCH, middle + 9)],
                color.mix(0.25).filled(),
            ))?,
        }
        area.draw(&Text::new(
            entry.label.clone(),
            (left + SWATCH + 12, middle - (LEGEND_SIZE as i32) / 2),
            text(LEGEND_SIZE),
        ))?;
        top += LEGEND_ROW;
    }
    Ok(())
}

// ---------------------------------------------------------------- data helpers

/// Distinct values in order of first appearance.
pub(crate) fn distinct_in_order<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for value in values {
        if !seen.iter().any(|s| s == value) {
            seen.push(value.to_owned());
        }
    }
    seen
}

/// `(low, high)` covering the finite values with `padding` (a fraction of the span) on each
/// side; a single value gets a span of its own. `None` when there is no finite value.
pub(crate) fn padded_range(
    values: impl IntoIterator<Item = f64>,
    padding: f64,
) -> Option<(f64, f64)> {
    let (low, high) = values.into_iter().filter(|v| v.is_finite()).fold(
        None,
        |range: Option<(f64, f64)>, v| match range {
            None => Some((v, v)),
            Some((low, high)) => Some((low.min(v), high.max(v))),
        },
    )?;
    let span = high - low;
    if span <= f64::EPSILON * high.abs().max(1.0) {
        let half = if low == 0.0 { 0.5 } else { low.abs() * 0.1 };
        return Some((low - half, high + half));
    }
    Some((low - span * padding, high + span * padding))
}

/// Exponential moving average with TensorBoard's bias correction: `weight` 0 returns the input.
pub(crate) fn smooth(values: &[f64], weight: f64) -> Vec<f64> {
    let mut average = 0.0;
    let mut total_weight = 0.0;
    values
        .iter()
        .map(|&value| {
            average = average * weight + (1.0 - weight) * value;
            total_weight = total_weight * weight + (1.0 - weight);
            average / total_weight
        })
        .collect()
}

/// Reads an optional numeric column as `Option<f64>` per row (absent column = all `None`).
pub(crate) fn optional_f64(
    columns: &crate::pipeline::schema::Columns<'_>,
    name: &str,
) -> Result<Vec<Option<f64>>> {
    if !columns.has(name) {
        return Ok(vec![None; columns.frame.height()]);
    }
    if matches!(columns.frame.column(name), Ok(column) if column.dtype().is_null()) {
        return Ok(vec![None; columns.frame.height()]);
    }
    Ok(columns
        .f64(name)?
        .iter()
        .map(|v| v.filter(|v| v.is_finite()))
        .collect())
}

/// Reads a required numeric column as `Option<f64>` per row (a column of only nulls, which JSON
/// input gives as type null, is all `None`).
pub(crate) fn required_f64(
    columns: &crate::pipeline::schema::Columns<'_>,
    name: &str,
) -> Result<Vec<Option<f64>>> {
    if matches!(columns.frame.column(name), Ok(column) if column.dtype().is_null()) {
        return Ok(vec![None; columns.frame.height()]);
    }
    Ok(columns
        .f64(name)?
        .iter()
        .map(|v| v.filter(|v| v.is_finite()))
        .collect())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! What the figure tests share: reading back PNG sizes and a directory for sample figures.

    use std::path::{Path, PathBuf};

    /// Width and height from a PNG's IHDR chunk, checking the signature.
    pub fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "not a PNG: {}",
            path.display()
        );
        assert_eq!(&bytes[12..16], b"IHDR");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        (width, height)
    }

    /// The trimmed contents of every `<text>` element of an SVG.
    pub fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|rest| {
                let content = rest.split_once('>')?.1;
                Some(content.split("</text>").next()?.trim().to_owned())
            })
            .collect()
    }

    /// Asserts that the SVG has a text element reading exactly each of `expected`.
    pub fn assert_svg_texts(svg: &str, expected: &[&str]) {
        let texts = svg_texts(svg);
        for text in expected {
            assert!(
                texts.iter().any(|t| t == text),
                "no <text> reads {text:?}; texts: {texts:?}"
            );
        }
    }

    /// Where the ignored `*_samples` tests write figures to look at:
    /// `$QRM_PLOT_SAMPLES`, else `target/plot-samples`.
    pub fn samples_dir() -> PathBuf {
        let directory = std::env::var_os("QRM_PLOT_SAMPLES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/plot-samples"));
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_format_follows_extension() {
        assert_eq!(
            ImageFormat::from_path(Path::new("a/fig.PNG")).unwrap(),
            ImageFormat::Png
        );
        assert_eq!(
            ImageFormat::from_path(Path::new("fig.svg")).unwrap(),
            ImageFormat::Svg
        );
        let error = ImageFormat::from_path(Path::new("fig.pdf")).unwrap_err();
        assert!(error.to_string().contains(".png or .svg"), "{error}");
    }

    #[test]
    fn embedded_fonts_register() {
        register_fonts().unwrap();
        let (width, height) = (FONT, 20).into_font().box_size("AUROC").unwrap();
        assert!(width > 40 && height > 10, "{width}x{height}");
    }

    #[test]
    fn padded_range_pads_and_widens_single_values() {
        // Span 0.2 padded by 10% each side: 0.5 - 0.02 and 0.7 + 0.02.
        let (low, high) = padded_range([0.5, 0.7, f64::NAN], 0.1).unwrap();
        assert!((low - 0.48).abs() < 1e-12 && (high - 0.72).abs() < 1e-12);
        // One value 0.8 gets ±10% of itself.
        let (low, high) = padded_range([0.8], 0.1).unwrap();
        assert!((low - 0.72).abs() < 1e-12 && (high - 0.88).abs() < 1e-12);
        assert!(padded_range([f64::NAN], 0.1).is_none());
    }

    #[test]
    fn tick_labels_never_read_negative_zero() {
        assert_eq!(tick_label(-1e-17, 2), "0.00");
        assert_eq!(tick_label(-0.25, 2), "-0.25");
        assert_eq!(tick_label(0.4, 1), "0.4");
        assert_eq!(decimals_for(40.0), 0);
        // Eight ticks over 1.0 are 0.125 apart: one decimal; over 0.2, 0.025 apart: two.
        assert_eq!(decimals_for(1.0), 1);
        assert_eq!(decimals_for(0.2), 2);
    }

    #[test]
    fn smooth_matches_debiased_ema() {
        // weight 0.5: a1 = 0.5*1 / 0.5 = 1; a2 = (0.25*1 + 0.5*3) / 0.75 = 1.75/0.75 = 2.333...
        let smoothed = smooth(&[1.0, 3.0], 0.5);
        assert!((smoothed[0] - 1.0).abs() < 1e-12);
        assert!((smoothed[1] - 1.75 / 0.75).abs() < 1e-12);
        assert_eq!(smooth(&[1.0, 3.0], 0.0), vec![1.0, 3.0]);
    }
}
