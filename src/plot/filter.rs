//! The Q-filtering sweep figure: accuracy and tokens saved against the threshold, or against
//! the maximum false-drop rate α of a calibrated sweep (`qrm-filter --sweep-alpha`).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use polars::prelude::DataFrame;

use super::{
    bold, decimals_for, distinct_in_order, draw_legend, legend_width, nothing_to_plot,
    padded_range, required_f64, save, series_color, text, tick_label, titled, DrawResult, Figure,
    LegendEntry, Mark, AXIS_LABEL_SIZE, GREY, PANEL_TITLE_SIZE, TICK_LABEL_SIZE,
};
use crate::error::Result;
use crate::pipeline::schema::{Columns, BENCHMARK, RM};

const REPORT: &str = "<filter sweep report>";

/// Draws a `qrm-filter --sweep` report into `path` (`.png` or `.svg`): accuracy after filtering
/// (left panel, with the unfiltered accuracy dashed) and tokens saved (right panel) against the
/// Q-value threshold, one line per reward model × benchmark.
///
/// Columns: `rm`, `benchmark` (Utf8), `threshold`, `accuracy`, `accuracy_filtered`,
/// `tokens_saved_pct` (numbers). Accuracies at most 1 are taken as fractions and shown in percent.
/// A report with a `method` column (the calibrated report) is drawn against its `alpha`
/// instead, the x-axis saying "max false-drop α (calibrated)".
pub fn filter_sweep_figure(report: &DataFrame, path: &Path) -> Result<()> {
    let sweep = Sweep::from_frame(report)?;
    if sweep
        .series
        .iter()
        .all(|s| s.points.iter().all(|p| p.accuracy_filtered.is_none()))
    {
        return Err(nothing_to_plot(
            path,
            "no row of the sweep report has an `accuracy_filtered` value",
        ));
    }
    save(&sweep, path)
}

#[derive(Debug, Clone, Copy)]
struct SweepPoint {
    threshold: f64,
    accuracy_filtered: Option<f64>,
    tokens_saved_pct: Option<f64>,
}

#[derive(Debug, Clone)]
struct SweepSeries {
    label: String,
    /// Accuracy without filtering (the first value the series' rows hold).
    accuracy: Option<f64>,
    points: Vec<SweepPoint>,
}

#[derive(Debug, Clone)]
struct Sweep {
    series: Vec<SweepSeries>,
    /// The x-axis title.
    x_label: &'static str,
    /// 100 when accuracies are fractions, 1 when they are already percentages.
    accuracy_scale: f64,
}

impl Sweep {
    fn from_frame(report: &DataFrame) -> Result<Self> {
        let path = Path::new(REPORT);
        if report.height() == 0 {
            return Err(nothing_to_plot(path, "the sweep report has no rows"));
        }
        let columns = Columns::new(report, path);
        let rm = columns.str_not_null(RM)?;
        let benchmark = columns.str_not_null(BENCHMARK)?;
        let calibrated = columns.has("method");
        let (x_column, x_label) = if calibrated {
            ("alpha", "max false-drop α (calibrated)")
        } else {
            ("threshold", "Q-value threshold")
        };
        let threshold = required_f64(&columns, x_column)?;
        let accuracy = required_f64(&columns, "accuracy")?;
        let accuracy_filtered = required_f64(&columns, "accuracy_filtered")?;
        let tokens_saved_pct = required_f64(&columns, "tokens_saved_pct")?;

        let rms = distinct_in_order(rm.iter().flatten());
        let benchmarks = distinct_in_order(benchmark.iter().flatten());
        let label = |index: usize| {
            let rm = rm.get(index).unwrap_or_default();
            let benchmark = benchmark.get(index).unwrap_or_default();
            match (rms.len() > 1, benchmarks.len() > 1) {
                (true, true) => format!("{rm} · {benchmark}"),
                (false, true) => benchmark.to_owned(),
                _ => rm.to_owned(),
            }
        };
        let mut series: Vec<SweepSeries> = Vec::new();
        for index in 0..report.height() {
            let Some(threshold) = threshold[index] else {
                continue;
            };
            let label = label(index);
            let position = match series.iter().position(|s| s.label == label) {
                Some(position) => position,
                None => {
                    series.push(SweepSeries {
                        label,
                        accuracy: None,
                        points: Vec::new(),
                    });
                    series.len() - 1
                }
            };
            let entry = &mut series[position];
            entry.accuracy = entry.accuracy.or(accuracy[index]);
            entry.points.push(SweepPoint {
                threshold,
                accuracy_filtered: accuracy_filtered[index],
                tokens_saved_pct: tokens_saved_pct[index],
            });
        }
        for entry in &mut series {
            entry
                .points
                .sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
        }
        let largest_accuracy = accuracy
            .iter()
            .chain(accuracy_filtered.iter())
            .flatten()
            .fold(0.0f64, |m, &v| m.max(v));
        let accuracy_scale = if largest_accuracy <= 1.0 { 100.0 } else { 1.0 };
        Ok(Self {
            series,
            x_label,
            accuracy_scale,
        })
    }
}

impl Sweep {
    fn legend(&self) -> Vec<LegendEntry> {
        let mut legend: Vec<LegendEntry> = self
            .series
            .iter()
            .enumerate()
            .map(|(index, s)| LegendEntry::new(s.label.clone(), series_color(index), Mark::Line))
            .collect();
        legend.push(LegendEntry::new("without filtering", GREY, Mark::Dashed));
        legend
    }
}

impl Figure for Sweep {
    fn size(&self) -> (u32, u32) {
        (1200 + legend_width("Reward model", &self.legend()), 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let area = titled(root, "Q-value filtering: accuracy and tokens saved")?;
        let legend = self.legend();
        let legend_w = legend_width("Reward model", &legend);
        let (width, _) = area.dim_in_pixel();
        let (panels, legend_area) = area.split_horizontally(width.saturating_sub(legend_w));
        draw_legend(&legend_area.margin(40, 0, 0, 0), "Reward model", &legend)?;
        let (left, right) = panels.split_horizontally(panels.dim_in_pixel().0 / 2);

        let thresholds = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.threshold));
        let (x_low, x_high) = padded_range(thresholds, 0.03).unwrap_or((-1.0, 1.0));
        let x_decimals = decimals_for(x_high - x_low);
        let scale = self.accuracy_scale;

        // Left: accuracy after filtering, with the unfiltered accuracy dashed.
        let accuracies = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .filter_map(|p| p.accuracy_filtered)
                .chain(s.accuracy)
                .map(move |v| v * scale)
        });
        let (y_low, y_high) = padded_range(accuracies, 0.1).unwrap_or((0.0, 100.0));
        let (y_low, y_high) = (y_low.max(0.0), y_high.min(101.0));
        let mut chart = ChartBuilder::on(&left)
            .caption("Accuracy after filtering", bold(PANEL_TITLE_SIZE))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(80)
            .build_cartesian_2d(x_low..x_high, y_low..y_high)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| tick_label(*x, x_decimals))
            .y_label_formatter(&|y| tick_label(*y, decimals_for(y_high - y_low)))
            .label_style(text(TICK_LABEL_SIZE))
            .x_desc(self.x_label)
            .y_desc(if scale == 100.0 {
                "accuracy (%)"
            } else {
                "accuracy"
            })
            .axis_desc_style(text(AXIS_LABEL_SIZE))
            .draw()?;
        for (index, series) in self.series.iter().enumerate() {
            let color = series_color(index);
            if let Some(accuracy) = series.accuracy {
                chart.draw_series(DashedLineSeries::new(
                    vec![(x_low, accuracy * scale), (x_high, accuracy * scale)],
                    10,
                    6,
                    color.stroke_width(2),
                ))?;
            }
            let line: Vec<(f64, f64)> = series
                .points
                .iter()
                .filter_map(|p| Some((p.threshold, p.accuracy_filtered? * scale)))
                .collect();
            draw_line_with_markers(&mut chart, &line, color)?;
        }

        // Right: tokens saved.
        let saved = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|p| p.tokens_saved_pct));
        let (_, saved_high) = padded_range(saved.chain([0.0]), 0.08).unwrap_or((0.0, 100.0));
        let mut chart = ChartBuilder::on(&right)
            .caption("Tokens saved", bold(PANEL_TITLE_SIZE))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(80)
            .build_cartesian_2d(x_low..x_high, 0.0..saved_high.clamp(1.0, 100.0))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| tick_label(*x, x_decimals))
            .y_label_formatter(&|y| tick_label(*y, decimals_for(saved_high)))
            .label_style(text(TICK_LABEL_SIZE))
            .x_desc(self.x_label)
            .y_desc("tokens saved (%)")
            .axis_desc_style(text(AXIS_LABEL_SIZE))
            .draw()?;
        for (index, series) in self.series.iter().enumerate() {
            let line: Vec<(f64, f64)> = series
                .points
                .iter()
                .filter_map(|p| Some((p.threshold, p.tokens_saved_pct?)))
                .collect();
            draw_line_with_markers(&mut chart, &line, series_color(index))?;
        }
        Ok(())
    }
}

/// A line with dots; dots are skipped when the points are too dense to tell apart.
fn draw_line_with_markers<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    line: &[(f64, f64)],
    color: RGBColor,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart.draw_series(LineSeries::new(line.to_vec(), color.stroke_width(3)))?;
    if line.len() <= 40 {
        chart.draw_series(
            line.iter()
                .map(|&point| Circle::new(point, 4, color.filled())),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::test_support::{assert_svg_texts, png_size, samples_dir};
    use polars::prelude::*;

    fn sweep_report() -> DataFrame {
        let mut rm = Vec::new();
        let mut benchmark = Vec::new();
        let mut threshold = Vec::new();
        let mut accuracy = Vec::new();
        let mut accuracy_filtered = Vec::new();
        let mut saved = Vec::new();
        for (m, name) in ["baseline", "q-rm"].iter().enumerate() {
            for (b, bench) in ["gsm8k", "math"].iter().enumerate() {
                let base = 0.55 + 0.2 * b as f64;
                for step in 0..=20 {
                    let t = -0.6 + 0.05 * step as f64;
                    rm.push(*name);
                    benchmark.push(*bench);
                    threshold.push(t);
                    accuracy.push(base);
                    let gain = (0.02 + 0.02 * m as f64) * (1.0 - (t + 0.6) / 1.0).max(0.0);
                    accuracy_filtered.push(base + gain);
                    saved.push(
                        40.0 * (1.0 - (t + 0.6) / 1.0).max(0.0)
                            * (1.0 + m as f64 * 0.3)
                            * (1.0 - 0.2 * b as f64),
                    );
                }
            }
        }
        let n = rm.len();
        df!(
            "rm" => rm,
            "benchmark" => benchmark,
            "threshold" => threshold,
            "accuracy" => accuracy,
            "accuracy_filtered" => accuracy_filtered,
            "proportion_correct" => vec![0.5; n],
            "proportion_correct_filtered" => vec![0.6; n],
            "filtered_pct" => vec![10.0; n],
            "tokens_saved_pct" => saved,
        )
        .unwrap()
    }

    #[test]
    fn sweep_png_has_the_figure_size() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sweep.png");
        filter_sweep_figure(&sweep_report(), &path).unwrap();
        let sweep = Sweep::from_frame(&sweep_report()).unwrap();
        assert_eq!(png_size(&path), sweep.size());
    }

    #[test]
    fn sweep_svg_has_titles_axes_and_series() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sweep.svg");
        filter_sweep_figure(&sweep_report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_svg_texts(
            &svg,
            &[
                "Q-value filtering: accuracy and tokens saved",
                "Q-value threshold",
                "accuracy (%)",
                "tokens saved (%)",
                "q-rm · math",
                "without filtering",
            ],
        );
    }

    #[test]
    fn calibrated_sweep_is_drawn_against_alpha() {
        // The calibrated report: `method` and `alpha`; its thresholds are not the x-axis.
        let mut frame = sweep_report();
        let alpha: Vec<f64> = (0..frame.height())
            .map(|i| (1 + i % 21) as f64 / 20.0)
            .collect();
        frame
            .with_column(Column::new("alpha".into(), alpha))
            .unwrap();
        frame
            .with_column(Column::new("method".into(), vec!["conformal"; 84]))
            .unwrap();
        let sweep = Sweep::from_frame(&frame).unwrap();
        assert_eq!(sweep.x_label, "max false-drop α (calibrated)");
        let first = &sweep.series[0].points;
        assert_eq!((first[0].threshold, first[20].threshold), (0.05, 1.05));
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("alpha.svg");
        filter_sweep_figure(&frame, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_svg_texts(&svg, &["max false-drop α (calibrated)", "tokens saved (%)"]);
        assert!(!svg.contains("Q-value threshold"));
    }

    #[test]
    fn labels_drop_the_constant_part() {
        let frame = sweep_report()
            .lazy()
            .filter(col("rm").eq(lit("q-rm")))
            .collect()
            .unwrap();
        let sweep = Sweep::from_frame(&frame).unwrap();
        let labels: Vec<&str> = sweep.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["gsm8k", "math"]);
        assert_eq!(sweep.accuracy_scale, 100.0);
    }

    #[test]
    fn one_row_sweep_draws() {
        let frame = sweep_report().head(Some(1));
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("one.png");
        filter_sweep_figure(&frame, &path).unwrap();
        assert_eq!(png_size(&path).1, 620);
    }

    #[test]
    fn empty_sweep_is_an_error() {
        let frame = sweep_report().head(Some(0));
        let directory = tempfile::tempdir().unwrap();
        let error = filter_sweep_figure(&frame, &directory.path().join("x.png")).unwrap_err();
        assert!(error.to_string().contains("no rows"), "{error}");
    }

    #[test]
    #[ignore = "writes sample figures to look at: target/plot-samples or $QRM_PLOT_SAMPLES"]
    fn filter_samples() {
        let directory = samples_dir();
        filter_sweep_figure(&sweep_report(), &directory.join("filter_sweep.png")).unwrap();
    }
}
