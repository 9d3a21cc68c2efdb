//! The AUROC figure: grouped bars for whole responses, lines with CI bands for partial ones.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use polars::prelude::DataFrame;

use super::{
    distinct_in_order, draw_legend, legend_width, nothing_to_plot, optional_f64, padded_range,
    required_f64, save, series_color, text, titled, DrawResult, Figure, LegendEntry, Mark,
    AXIS_LABEL_SIZE, GREY, PANEL_TITLE_SIZE, TICK_LABEL_SIZE, VALUE_LABEL_SIZE,
};
use crate::error::Result;
use crate::pipeline::schema::{Columns, BENCHMARK, RM};

const REPORT: &str = "<auroc report>";

/// Draws a `qrm-auroc` report into `path` (`.png` or `.svg`).
///
/// Rows with a null `percentile` are whole responses: grouped bars, one group per benchmark and
/// one bar per reward model (per `rm · score` when the report holds several scores), with the
/// confidence interval as whiskers. Rows with a `percentile` are partial generations: one panel
/// per benchmark with AUROC against the percent of the response seen, a line per reward model
/// and its confidence band. A report holding both draws the partial figure.
///
/// Columns: `rm`, `benchmark` (Utf8), `auroc` (Float64, nullable); optional `score` (Utf8),
/// `percentile`, `ci_low`, `ci_high` (Float64, nullable), `ci_method` (Utf8).
pub fn auroc_figure(report: &DataFrame, path: &Path) -> Result<()> {
    let rows = AurocRows::from_frame(report)?;
    if rows.points.iter().all(|p| p.auroc.is_none()) {
        return Err(nothing_to_plot(
            path,
            "no row of the AUROC report has a value (each group needs both classes)",
        ));
    }
    if rows.points.iter().any(|p| p.percentile.is_some()) {
        save(&PartialFigure::new(rows), path)
    } else {
        save(&BarFigure::new(rows), path)
    }
}

#[derive(Debug, Clone)]
struct AurocPoint {
    series: usize,
    benchmark: usize,
    percentile: Option<f64>,
    auroc: Option<f64>,
    ci: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
struct AurocRows {
    series: Vec<String>,
    benchmarks: Vec<String>,
    ci_methods: Vec<String>,
    /// Per benchmark, the number of responses when every row of it agrees on one.
    sizes: Vec<Option<u64>>,
    points: Vec<AurocPoint>,
}

impl AurocRows {
    fn from_frame(report: &DataFrame) -> Result<Self> {
        let path = Path::new(REPORT);
        if report.height() == 0 {
            return Err(nothing_to_plot(path, "the AUROC report has no rows"));
        }
        let columns = Columns::new(report, path);
        let rm = columns.str_not_null(RM)?;
        let benchmark = columns.str_not_null(BENCHMARK)?;
        let score = if columns.has("score") {
            Some(columns.str("score")?)
        } else {
            None
        };
        let ci_method = if columns.has("ci_method") {
            Some(columns.str("ci_method")?)
        } else {
            None
        };
        let auroc = required_f64(&columns, "auroc")?;
        let percentile = optional_f64(&columns, "percentile")?;
        let ci_low = optional_f64(&columns, "ci_low")?;
        let ci_high = optional_f64(&columns, "ci_high")?;

        let scores = score
            .map(|s| distinct_in_order(s.iter().map(|v| v.unwrap_or(""))))
            .unwrap_or_default();
        let label = |index: usize| -> String {
            let rm = rm.get(index).unwrap_or_default();
            match score.and_then(|s| s.get(index)) {
                Some(score) if scores.len() > 1 => format!("{rm} · {score}"),
                _ => rm.to_owned(),
            }
        };
        let labels: Vec<String> = (0..report.height()).map(label).collect();
        // A `--compare A,B` report holds model B in `rm_b` / `auroc_b` (no interval of its own):
        // it becomes a second series.
        let compared = if columns.has("rm_b") && columns.has("auroc_b") {
            let rm_b = columns.str_not_null("rm_b")?;
            let labels_b: Vec<String> = (0..report.height())
                .map(|index| rm_b.get(index).unwrap_or_default().to_owned())
                .collect();
            Some((labels_b, required_f64(&columns, "auroc_b")?))
        } else {
            None
        };
        let all_labels = labels
            .iter()
            .chain(compared.iter().flat_map(|(labels_b, _)| labels_b));
        let series = distinct_in_order(all_labels.map(String::as_str));
        let benchmarks = distinct_in_order(benchmark.iter().map(|b| b.unwrap_or_default()));
        let ci_methods = ci_method
            .map(|m| distinct_in_order(m.iter().flatten()))
            .unwrap_or_default();
        let point =
            |index: usize, label: &str, auroc: Option<f64>, ci: Option<(f64, f64)>| AurocPoint {
                series: series.iter().position(|s| s == label).unwrap_or(0),
                benchmark: benchmarks
                    .iter()
                    .position(|b| Some(b.as_str()) == benchmark.get(index))
                    .unwrap_or(0),
                percentile: percentile[index],
                auroc,
                ci,
            };
        let mut points: Vec<AurocPoint> = (0..report.height())
            .map(|index| {
                let ci = ci_low[index].zip(ci_high[index]);
                point(index, &labels[index], auroc[index], ci)
            })
            .collect();
        let n = optional_f64(&columns, "n")?;
        // Sizes from the report's rows (model B's points share them).
        let sizes = (0..benchmarks.len())
            .map(|b| {
                let mut values = points_of(&points, b).filter_map(|i| n[i]);
                let first = values.next()?;
                values.all(|v| v == first).then_some(first as u64)
            })
            .collect();
        if let Some((labels_b, auroc_b)) = &compared {
            points.extend(
                (0..report.height())
                    .map(|index| point(index, &labels_b[index], auroc_b[index], None)),
            );
        }
        Ok(Self {
            series,
            benchmarks,
            ci_methods,
            sizes,
            points,
        })
    }

    /// Legend entries: the series, the interval when any row has one, and the chance line when
    /// it is drawn.
    fn legend(&self, interval_mark: Mark, chance: bool) -> Vec<LegendEntry> {
        let series_mark = if interval_mark == Mark::Band {
            Mark::Line
        } else {
            Mark::Bar
        };
        let mut entries: Vec<LegendEntry> = self
            .series
            .iter()
            .enumerate()
            .map(|(index, name)| LegendEntry::new(name.clone(), series_color(index), series_mark))
            .collect();
        if self.points.iter().any(|p| p.ci.is_some()) {
            let label = if self.ci_methods.is_empty() {
                "confidence interval".to_owned()
            } else {
                format!("CI ({})", self.ci_methods.join(", "))
            };
            entries.push(LegendEntry::new(label, GREY, interval_mark));
        }
        if chance {
            entries.push(LegendEntry::new("chance (0.5)", GREY, Mark::Dashed));
        }
        entries
    }

    /// Every AUROC value and CI bound of the points that `keep` selects.
    fn values(&self, keep: impl Fn(&AurocPoint) -> bool) -> Vec<f64> {
        self.points
            .iter()
            .filter(|p| keep(p))
            .flat_map(|p| {
                [p.auroc, p.ci.map(|c| c.0), p.ci.map(|c| c.1)]
                    .into_iter()
                    .flatten()
            })
            .collect()
    }
}

/// Row indices of the points of benchmark `benchmark`.
fn points_of(points: &[AurocPoint], benchmark: usize) -> impl Iterator<Item = usize> + '_ {
    (0..points.len()).filter(move |&i| points[i].benchmark == benchmark)
}

impl AurocRows {
    /// `name` or `name (n = 1319)` when the benchmark's rows agree on their size.
    fn benchmark_label(&self, benchmark: usize) -> String {
        let name = self.benchmarks[benchmark].clone();
        match self.sizes.get(benchmark).copied().flatten() {
            Some(n) => format!("{name} (n = {n})"),
            None => name,
        }
    }
}

// ---------------------------------------------------------------- whole responses: bars

struct BarFigure {
    rows: AurocRows,
}

impl BarFigure {
    fn new(mut rows: AurocRows) -> Self {
        rows.points.retain(|p| p.percentile.is_none());
        Self { rows }
    }
}

impl Figure for BarFigure {
    fn size(&self) -> (u32, u32) {
        let bars = self.rows.benchmarks.len() * self.rows.series.len();
        let plot_width = 160 + bars * 48 + self.rows.benchmarks.len() * 40;
        let legend = legend_width("Reward model", &self.rows.legend(Mark::Whisker, true));
        (plot_width.clamp(700, 1500) as u32 + legend, 680)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let rows = &self.rows;
        let area = titled(root, "AUROC on whole responses")?;
        // The axis starts below 0.5, so the chance line is always drawn.
        let legend = rows.legend(Mark::Whisker, true);
        let legend_w = legend_width("Reward model", &legend);
        let (width, _) = area.dim_in_pixel();
        let (plot, legend_area) = area.split_horizontally(width.saturating_sub(legend_w));
        draw_legend(&legend_area.margin(40, 0, 0, 0), "Reward model", &legend)?;

        let values = rows.values(|_| true);
        let lowest = values.iter().copied().fold(0.5, f64::min);
        let highest = values.iter().copied().fold(0.5, f64::max);
        let y_low = ((lowest - 0.05) * 10.0).floor().max(0.0) / 10.0;
        let y_high = ((highest + 0.06) * 20.0).ceil() / 20.0;
        let groups = rows.benchmarks.len();
        let mut chart = ChartBuilder::on(&plot)
            .margin(16)
            .margin_top(28)
            .x_label_area_size(72)
            .y_label_area_size(84)
            .build_cartesian_2d(0.0..groups as f64, y_low..y_high)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .y_label_style(text(TICK_LABEL_SIZE))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .y_desc("AUROC")
            .axis_desc_style(text(AXIS_LABEL_SIZE))
            .draw()?;
        // Benchmark names under their groups, in backend pixels (the root's own coordinates).
        let name_style = text(AXIS_LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Top));
        let size_style = text(TICK_LABEL_SIZE)
            .color(&GREY)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (group, name) in rows.benchmarks.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(group as f64 + 0.5, y_low));
            root.draw(&Text::new(name.clone(), (x, y + 12), name_style.clone()))?;
            if let Some(n) = rows.sizes.get(group).copied().flatten() {
                root.draw(&Text::new(
                    format!("n = {n}"),
                    (x, y + 42),
                    size_style.clone(),
                ))?;
            }
        }

        if y_low < 0.5 {
            chart.draw_series(DashedLineSeries::new(
                vec![(0.0, 0.5), (groups as f64, 0.5)],
                10,
                6,
                GREY.stroke_width(2),
            ))?;
        }

        let series_count = rows.series.len().max(1) as f64;
        let slot = 0.8 / series_count;
        let label_offset = (y_high - y_low) * 0.012;
        // Bars narrower than a value label get no label.
        let (plot_width, _) = chart.plotting_area().dim_in_pixel();
        let bar_pixels = plot_width as f64 / groups as f64 * slot * 0.9;
        let label_style = text(VALUE_LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Bottom));
        let show_labels = bar_pixels >= 52.0;
        for point in &rows.points {
            let color = series_color(point.series);
            let left = point.benchmark as f64 + 0.1 + point.series as f64 * slot + slot * 0.05;
            let right = left + slot * 0.9;
            let center = (left + right) / 2.0;
            let Some(value) = point.auroc else {
                chart.draw_series(std::iter::once(Text::new(
                    "n/a".to_owned(),
                    (center, y_low + label_offset),
                    label_style.clone(),
                )))?;
                continue;
            };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(left, y_low), (right, value)],
                color.mix(0.85).filled(),
            )))?;
            let mut top = value;
            if let Some((low, high)) = point.ci {
                let cap = slot * 0.18;
                let whisker = BLACK.stroke_width(2);
                chart.draw_series([
                    PathElement::new(vec![(center, low), (center, high)], whisker),
                    PathElement::new(vec![(center - cap, low), (center + cap, low)], whisker),
                    PathElement::new(vec![(center - cap, high), (center + cap, high)], whisker),
                ])?;
                top = top.max(high);
            }
            if show_labels {
                chart.draw_series(std::iter::once(Text::new(
                    format!("{value:.3}"),
                    (center, top + label_offset),
                    label_style.clone(),
                )))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- partial generations: lines

struct PartialFigure {
    rows: AurocRows,
    columns: usize,
    panel_rows: usize,
}

impl PartialFigure {
    fn new(mut rows: AurocRows) -> Self {
        rows.points.retain(|p| p.percentile.is_some());
        rows.points.sort_by(|a, b| {
            a.percentile
                .partial_cmp(&b.percentile)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        // Benchmarks with no partial rows get no panel.
        let used = distinct_in_order(
            rows.points
                .iter()
                .map(|p| rows.benchmarks[p.benchmark].as_str()),
        );
        let remap: Vec<usize> = rows
            .benchmarks
            .iter()
            .map(|b| used.iter().position(|u| u == b).unwrap_or(0))
            .collect();
        for point in &mut rows.points {
            point.benchmark = remap[point.benchmark];
        }
        rows.sizes = used
            .iter()
            .map(|u| {
                let old = rows.benchmarks.iter().position(|b| b == u)?;
                rows.sizes.get(old).copied().flatten()
            })
            .collect();
        rows.benchmarks = used;
        let panels = rows.benchmarks.len().max(1);
        let columns = if panels == 4 { 2 } else { panels.min(3) };
        let panel_rows = panels.div_ceil(columns);
        Self {
            rows,
            columns,
            panel_rows,
        }
    }
}

impl PartialFigure {
    /// The AUROC axis, shared by the panels.
    fn y_range(&self) -> (f64, f64) {
        let (low, high) = padded_range(self.rows.values(|_| true), 0.08).unwrap_or((0.5, 1.0));
        (low.max(0.0), high.min(1.02))
    }

    fn shows_chance(&self) -> bool {
        let (low, high) = self.y_range();
        low < 0.5 && high > 0.5
    }
}

impl Figure for PartialFigure {
    fn size(&self) -> (u32, u32) {
        let legend = legend_width(
            "Reward model",
            &self.rows.legend(Mark::Band, self.shows_chance()),
        );
        (
            self.columns as u32 * 560 + legend,
            70 + self.panel_rows as u32 * 460,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let rows = &self.rows;
        let area = titled(root, "AUROC on partial generations")?;
        let legend = rows.legend(Mark::Band, self.shows_chance());
        let legend_w = legend_width("Reward model", &legend);
        let (width, _) = area.dim_in_pixel();
        let (panels, legend_area) = area.split_horizontally(width.saturating_sub(legend_w));
        draw_legend(&legend_area.margin(40, 0, 0, 0), "Reward model", &legend)?;

        let x_values = rows.points.iter().filter_map(|p| p.percentile);
        let (x_low, x_high) =
            padded_range(x_values.map(|p| p * 100.0), 0.04).unwrap_or((0.0, 100.0));
        let (y_low, y_high) = self.y_range();

        for (index, panel) in panels
            .split_evenly((self.panel_rows, self.columns))
            .iter()
            .enumerate()
        {
            if index >= rows.benchmarks.len() {
                break;
            }
            let mut chart = ChartBuilder::on(panel)
                .caption(rows.benchmark_label(index), super::bold(PANEL_TITLE_SIZE))
                .margin(14)
                .x_label_area_size(56)
                .y_label_area_size(76)
                .build_cartesian_2d(x_low..x_high, y_low..y_high)?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(BLACK.mix(0.12))
                .x_labels(6)
                .y_labels(6)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.2}"))
                .label_style(text(TICK_LABEL_SIZE))
                .x_desc("response seen (%)")
                .y_desc("AUROC")
                .axis_desc_style(text(AXIS_LABEL_SIZE))
                .draw()?;
            if self.shows_chance() {
                chart.draw_series(DashedLineSeries::new(
                    vec![(x_low, 0.5), (x_high, 0.5)],
                    10,
                    6,
                    GREY.stroke_width(2),
                ))?;
            }
            for series in 0..rows.series.len() {
                let color = series_color(series);
                let points: Vec<&AurocPoint> = rows
                    .points
                    .iter()
                    .filter(|p| p.benchmark == index && p.series == series)
                    .collect();
                let band: Vec<(f64, (f64, f64))> = points
                    .iter()
                    .filter_map(|p| Some((p.percentile? * 100.0, p.ci?)))
                    .collect();
                if band.len() >= 2 {
                    let outline: Vec<(f64, f64)> = band
                        .iter()
                        .map(|(x, (low, _))| (*x, *low))
                        .chain(band.iter().rev().map(|(x, (_, high))| (*x, *high)))
                        .collect();
                    chart.draw_series(std::iter::once(Polygon::new(
                        outline,
                        color.mix(0.18).filled(),
                    )))?;
                } else if let Some((x, (low, high))) = band.first() {
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(*x, *low), (*x, *high)],
                        color.stroke_width(2),
                    )))?;
                }
                let line: Vec<(f64, f64)> = points
                    .iter()
                    .filter_map(|p| Some((p.percentile? * 100.0, p.auroc?)))
                    .collect();
                chart.draw_series(LineSeries::new(line.clone(), color.stroke_width(3)))?;
                chart.draw_series(
                    line.iter()
                        .map(|&point| Circle::new(point, 5, color.filled())),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::test_support::{assert_svg_texts, png_size, samples_dir};
    use polars::prelude::*;

    /// `(rm, benchmark, percentile, auroc, half-width of the CI)`.
    type Row<'a> = (&'a str, &'a str, Option<f64>, Option<f64>, Option<f64>);

    fn report(rows: &[Row<'_>]) -> DataFrame {
        let rm: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let benchmark: Vec<&str> = rows.iter().map(|r| r.1).collect();
        let percentile: Vec<Option<f64>> = rows.iter().map(|r| r.2).collect();
        let auroc: Vec<Option<f64>> = rows.iter().map(|r| r.3).collect();
        let low: Vec<Option<f64>> = rows.iter().map(|r| Some(r.3? - r.4?)).collect();
        let high: Vec<Option<f64>> = rows.iter().map(|r| Some(r.3? + r.4?)).collect();
        df!(
            "rm" => rm,
            "benchmark" => benchmark,
            "score" => vec!["reward"; rows.len()],
            "percentile" => percentile,
            "n" => vec![500i64; rows.len()],
            "auroc" => auroc,
            "ci_low" => low,
            "ci_high" => high,
            "ci_method" => vec!["bootstrap"; rows.len()],
        )
        .unwrap()
    }

    fn whole_report() -> DataFrame {
        let mut rows = Vec::new();
        for (b, benchmark) in ["gsm8k", "math", "gsm-hard", "svamp"].iter().enumerate() {
            for (m, rm) in ["baseline", "q-rm (contrastive)"].iter().enumerate() {
                let value = 0.62 + 0.05 * m as f64 + 0.03 * b as f64;
                rows.push((*rm, *benchmark, None, Some(value), Some(0.025)));
            }
        }
        report(&rows)
    }

    fn partial_report() -> DataFrame {
        let mut rows = Vec::new();
        for benchmark in ["gsm8k", "math", "svamp", "asdiv"] {
            for (m, rm) in ["baseline", "q-rm (contrastive)"].iter().enumerate() {
                for step in 1..=10 {
                    let fraction = step as f64 / 10.0;
                    let value = 0.52 + (0.15 + 0.06 * m as f64) * fraction.sqrt();
                    rows.push((*rm, benchmark, Some(fraction), Some(value), Some(0.03)));
                }
            }
        }
        report(&rows)
    }

    #[test]
    fn bar_figure_png_has_the_figure_size() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("bars.png");
        auroc_figure(&whole_report(), &path).unwrap();
        let rows = AurocRows::from_frame(&whole_report()).unwrap();
        assert_eq!(png_size(&path), BarFigure::new(rows).size());
    }

    #[test]
    fn bar_figure_svg_has_title_axis_and_legend() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("bars.svg");
        auroc_figure(&whole_report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_svg_texts(
            &svg,
            &[
                "AUROC on whole responses",
                "AUROC",
                "gsm-hard",
                "q-rm (contrastive)",
                "CI (bootstrap)",
                "0.670",
                "n = 500",
            ],
        );
    }

    #[test]
    fn partial_rows_draw_panels_per_benchmark() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("partial.svg");
        auroc_figure(&partial_report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_svg_texts(
            &svg,
            &[
                "AUROC on partial generations",
                "response seen (%)",
                "asdiv (n = 500)",
            ],
        );
    }

    #[test]
    fn several_scores_split_series_by_score() {
        let mut frame = whole_report();
        let scores: Vec<&str> = (0..frame.height())
            .map(|i| if i % 2 == 0 { "reward" } else { "q_value" })
            .collect();
        frame
            .with_column(Column::new("score".into(), scores))
            .unwrap();
        let rows = AurocRows::from_frame(&frame).unwrap();
        assert_eq!(
            rows.series,
            vec!["baseline · reward", "q-rm (contrastive) · q_value"]
        );
    }

    #[test]
    fn a_compare_report_draws_both_models() {
        // qrm-auroc --compare bt,q: model B's AUROC sits in `rm_b` / `auroc_b`, without a CI.
        let frame = df!(
            "rm" => ["bt", "bt"],
            "rm_b" => ["q", "q"],
            "benchmark" => ["synth-id", "synth-ood"],
            "auroc" => [0.5616f64, 0.5956],
            "ci_low" => [0.4888f64, 0.5238],
            "ci_high" => [0.6343f64, 0.6675],
            "auroc_b" => [0.5436f64, 0.5975],
        )
        .unwrap();
        let rows = AurocRows::from_frame(&frame).unwrap();
        assert_eq!(rows.series, vec!["bt", "q"]);
        let b_points: Vec<(usize, Option<f64>)> = rows
            .points
            .iter()
            .filter(|p| p.series == 1)
            .map(|p| (p.benchmark, p.auroc))
            .collect();
        assert_eq!(b_points, vec![(0, Some(0.5436)), (1, Some(0.5975))]);
        assert!(rows
            .points
            .iter()
            .filter(|p| p.series == 1)
            .all(|p| p.ci.is_none()));
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("compare.svg");
        auroc_figure(&frame, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_svg_texts(&svg, &["bt", "q", "0.598"]);
    }

    #[test]
    fn one_row_without_ci_draws_a_bar() {
        let frame = df!(
            "rm" => ["rm"], "benchmark" => ["gsm8k"], "auroc" => [0.7f64],
        )
        .unwrap();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("one.png");
        auroc_figure(&frame, &path).unwrap();
        assert!(png_size(&path).0 > 0);
    }

    #[test]
    fn empty_report_is_an_error_naming_the_problem() {
        let frame = whole_report().head(Some(0));
        let directory = tempfile::tempdir().unwrap();
        let error = auroc_figure(&frame, &directory.path().join("x.png")).unwrap_err();
        assert!(error.to_string().contains("no rows"), "{error}");
    }

    #[test]
    fn report_without_values_is_an_error() {
        let frame = report(&[("rm", "gsm8k", None, None, None)]);
        let directory = tempfile::tempdir().unwrap();
        let error = auroc_figure(&frame, &directory.path().join("x.png")).unwrap_err();
        assert!(error.to_string().contains("both classes"), "{error}");
    }

    #[test]
    fn missing_column_is_named() {
        let frame = df!("rm" => ["a"], "auroc" => [0.5f64]).unwrap();
        let directory = tempfile::tempdir().unwrap();
        let error = auroc_figure(&frame, &directory.path().join("x.png")).unwrap_err();
        assert!(error.to_string().contains("`benchmark`"), "{error}");
    }

    #[test]
    #[ignore = "writes sample figures to look at: target/plot-samples or $QRM_PLOT_SAMPLES"]
    fn auroc_samples() {
        let directory = samples_dir();
        auroc_figure(&whole_report(), &directory.join("auroc_bars.png")).unwrap();
        auroc_figure(&whole_report(), &directory.join("auroc_bars.svg")).unwrap();
        auroc_figure(&partial_report(), &directory.join("auroc_partial.png")).unwrap();
        auroc_figure(&partial_report(), &directory.join("auroc_partial.svg")).unwrap();

        // Crowded: five reward models with long names on six benchmarks, some without a value.
        let models = [
            "smollm2-135m-bt",
            "smollm2-135m-bt+contrastive",
            "smollm2-135m-bt+contrastive-frozen-trunk",
            "llama-3.1-8b-rm",
            "q-rm",
        ];
        let benchmarks = ["gsm8k", "math", "gsm-hard", "svamp", "asdiv", "algebra222"];
        let mut rows = Vec::new();
        for (b, benchmark) in benchmarks.iter().enumerate() {
            for (m, rm) in models.iter().enumerate() {
                let value = (b + m != 7).then_some(0.55 + 0.04 * m as f64 + 0.02 * b as f64);
                rows.push((*rm, *benchmark, None, value, Some(0.04)));
            }
        }
        auroc_figure(&report(&rows), &directory.join("auroc_bars_crowded.png")).unwrap();
        let single: Vec<Row<'_>> = (1..=4)
            .map(|step| {
                (
                    "q-rm",
                    "gsm8k",
                    Some(step as f64 / 4.0),
                    Some(0.6 + 0.03 * step as f64),
                    Some(0.02),
                )
            })
            .collect();
        auroc_figure(
            &report(&single),
            &directory.join("auroc_partial_single.png"),
        )
        .unwrap();
    }
}
