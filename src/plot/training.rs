//! The training-log figure: loss parts and pairwise accuracy against the optimiser step.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use polars::prelude::DataFrame;

use super::{
    bold, decimals_for, nothing_to_plot, optional_f64, padded_range, required_f64, save,
    series_color, smooth, text, tick_label, titled, DrawResult, Figure, AXIS_LABEL_SIZE,
    LEGEND_SIZE, PANEL_TITLE_SIZE, TICK_LABEL_SIZE,
};
use crate::error::Result;
use crate::pipeline::schema::Columns;

const LOG: &str = "<training log>";

/// Draws a `qrm-train` JSONL log into `path` (`.png` or `.svg`): the loss and its Bradley–Terry
/// and contrastive parts (left), and pairwise accuracy (right), against the step. Training
/// curves are drawn raw (faint) and smoothed (an exponential moving average, debiased as
/// TensorBoard does); evaluation rows are drawn as points.
///
/// Columns: `step` and `loss`; optional `loss_bt`, `loss_contrastive`, `accuracy`,
/// `eval_loss`, `eval_accuracy` (numbers, null on the rows they do not apply to).
pub fn training_figure(log: &DataFrame, path: &Path) -> Result<()> {
    let figure = TrainingLog::from_frame(log)?;
    if figure.losses.iter().all(|c| c.points.is_empty()) {
        return Err(nothing_to_plot(
            path,
            "the training log has no `loss` values",
        ));
    }
    save(&figure, path)
}

/// One curve: `(step, value)` in step order.
#[derive(Debug, Clone)]
struct Curve {
    label: &'static str,
    points: Vec<(f64, f64)>,
    /// Training curves are smoothed; evaluation curves are drawn as points.
    eval: bool,
}

#[derive(Debug, Clone)]
struct TrainingLog {
    losses: Vec<Curve>,
    accuracies: Vec<Curve>,
    smoothing: f64,
    steps: usize,
}

impl TrainingLog {
    fn from_frame(log: &DataFrame) -> Result<Self> {
        let path = Path::new(LOG);
        if log.height() == 0 {
            return Err(nothing_to_plot(path, "the training log has no rows"));
        }
        let columns = Columns::new(log, path);
        let step = required_f64(&columns, "step")?;
        let mut order: Vec<usize> = (0..log.height()).filter(|&i| step[i].is_some()).collect();
        order.sort_by(|&a, &b| step[a].unwrap_or(0.0).total_cmp(&step[b].unwrap_or(0.0)));
        let curve = |label: &'static str, values: Vec<Option<f64>>, eval: bool| Curve {
            label,
            points: order
                .iter()
                .filter_map(|&i| Some((step[i]?, values[i]?)))
                .collect(),
            eval,
        };
        let loss = required_f64(&columns, "loss")?;
        let train_rows = order.iter().filter(|&&i| loss[i].is_some()).count();
        let mut losses = vec![
            curve("loss", loss, false),
            curve("Bradley–Terry", optional_f64(&columns, "loss_bt")?, false),
            curve(
                "contrastive",
                optional_f64(&columns, "loss_contrastive")?,
                false,
            ),
            curve("eval loss (BT)", optional_f64(&columns, "eval_loss")?, true),
        ];
        // Without a contrastive part the total is the Bradley–Terry loss: draw it once.
        if losses[0].points == losses[1].points {
            losses.remove(0);
            losses[0].label = "loss (Bradley–Terry)";
        }
        let accuracies = vec![
            curve("train", optional_f64(&columns, "accuracy")?, false),
            curve("eval", optional_f64(&columns, "eval_accuracy")?, true),
        ];
        // Heavier smoothing for longer runs: about a twentieth of the run's steps.
        let smoothing = match train_rows {
            0..=9 => 0.0,
            10..=99 => 0.6,
            100..=999 => 0.9,
            _ => 0.97,
        };
        Ok(Self {
            losses: losses
                .into_iter()
                .filter(|c| !c.points.is_empty())
                .collect(),
            accuracies: accuracies
                .into_iter()
                .filter(|c| !c.points.is_empty())
                .collect(),
            smoothing,
            steps: train_rows,
        })
    }
}

impl Figure for TrainingLog {
    fn size(&self) -> (u32, u32) {
        (1500, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let title = if self.smoothing > 0.0 {
            format!(
                "Training: {} steps (lines smoothed, EMA {})",
                self.steps, self.smoothing
            )
        } else {
            format!("Training: {} steps", self.steps)
        };
        let area = titled(root, &title)?;
        let (left, right) = area.split_horizontally(area.dim_in_pixel().0 / 2);
        self.panel(&left, "Loss", "loss", &self.losses, false)?;
        if self.accuracies.is_empty() {
            let (width, height) = right.dim_in_pixel();
            right.draw(&Text::new(
                "the log has no accuracy",
                (width as i32 / 2, height as i32 / 2),
                text(AXIS_LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Center)),
            ))?;
        } else {
            self.panel(
                &right,
                "Pairwise accuracy",
                "accuracy",
                &self.accuracies,
                true,
            )?;
        }
        Ok(())
    }
}

impl TrainingLog {
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        caption: &str,
        y_desc: &str,
        curves: &[Curve],
        accuracy: bool,
    ) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let steps = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0));
        let (x_low, x_high) = padded_range(steps, 0.02).unwrap_or((0.0, 1.0));
        let values = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
        let (mut y_low, mut y_high) = padded_range(values, 0.08).unwrap_or((0.0, 1.0));
        if accuracy {
            (y_low, y_high) = (y_low.max(0.0), y_high.min(1.02));
        } else {
            y_low = y_low.max(0.0).min(y_high - f64::EPSILON);
        }
        let mut chart = ChartBuilder::on(area)
            .caption(caption, bold(PANEL_TITLE_SIZE))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(84)
            .build_cartesian_2d(x_low.max(0.0)..x_high, y_low..y_high)?;
        let x_decimals = if x_high - x_low >= 4.0 { 0 } else { 1 };
        let y_decimals = decimals_for(y_high - y_low);
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| tick_label(*x, x_decimals))
            .y_label_formatter(&|y| tick_label(*y, y_decimals))
            .label_style(text(TICK_LABEL_SIZE))
            .x_desc("step")
            .y_desc(y_desc)
            .axis_desc_style(text(AXIS_LABEL_SIZE))
            .draw()?;
        for (index, curve) in curves.iter().enumerate() {
            self.draw_curve(&mut chart, curve, series_color(index))?;
        }
        chart
            .configure_series_labels()
            .position(if accuracy {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            })
            .margin(12)
            .label_font(text(LEGEND_SIZE))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        Ok(())
    }

    fn draw_curve<DB: DrawingBackend>(
        &self,
        chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
        curve: &Curve,
        color: RGBColor,
    ) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let few = curve.points.len() <= 30;
        if curve.eval {
            chart.draw_series(LineSeries::new(
                curve.points.clone(),
                color.mix(0.6).stroke_width(2),
            ))?;
            chart
                .draw_series(
                    curve
                        .points
                        .iter()
                        .map(|&p| Circle::new(p, 6, color.filled())),
                )?
                .label(curve.label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 6, color.filled()));
            return Ok(());
        }
        let values: Vec<f64> = curve.points.iter().map(|p| p.1).collect();
        let smoothed: Vec<(f64, f64)> = curve
            .points
            .iter()
            .zip(smooth(&values, self.smoothing))
            .map(|(p, s)| (p.0, s))
            .collect();
        if self.smoothing > 0.0 {
            chart.draw_series(LineSeries::new(
                curve.points.clone(),
                color.mix(0.25).stroke_width(1),
            ))?;
        }
        chart
            .draw_series(LineSeries::new(smoothed.clone(), color.stroke_width(3)))?
            .label(curve.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        if few {
            chart.draw_series(smoothed.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::test_support::{assert_svg_texts, png_size, samples_dir};
    use polars::prelude::*;
    use std::io::Write;

    /// A log as `qrm-train` writes it: every row has the training fields, every 50th step adds
    /// the eval fields. Read through `read_table` like the CLI does.
    fn log(steps: usize, contrastive: bool) -> DataFrame {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        for step in 1..=steps {
            let t = step as f64 / steps as f64;
            // A deterministic wiggle stands in for minibatch noise.
            let noise = ((step * 7919) % 13) as f64 / 13.0 - 0.5;
            let bt = 0.69 * (1.0 - 0.5 * t) + 0.08 * noise;
            let mut row = serde_json::json!({
                "step": step, "epoch": t, "loss": bt, "loss_bt": bt,
                "accuracy": (0.5 + 0.3 * t + 0.1 * noise).min(1.0),
                "learning_rate": 9e-6, "grad_norm": 1.0, "tokens_per_s": 1000.0,
            });
            if contrastive {
                let c = 0.4 * (1.0 - 0.6 * t) + 0.05 * noise;
                row["loss_contrastive"] = c.into();
                row["loss"] = (bt + 0.5 * c).into();
            }
            if step % 50 == 0 {
                row["eval_accuracy"] = (0.55 + 0.25 * t).into();
                row["eval_loss"] = (0.7 - 0.3 * t).into();
            }
            writeln!(file, "{row}").unwrap();
        }
        crate::pipeline::io::read_table(&path).unwrap()
    }

    #[test]
    fn training_png_has_the_figure_size() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("training.png");
        training_figure(&log(300, true), &path).unwrap();
        assert_eq!(png_size(&path), (1500, 620));
    }

    #[test]
    fn training_svg_has_panels_axes_and_legend() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("training.svg");
        training_figure(&log(300, true), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_svg_texts(
            &svg,
            &[
                "Training: 300 steps (lines smoothed, EMA 0.9)",
                "Loss",
                "Pairwise accuracy",
                "step",
                "contrastive",
                "eval loss (BT)",
                "eval",
            ],
        );
    }

    #[test]
    fn log_without_contrastive_or_eval_draws_what_it_has() {
        let frame = log(20, false);
        let figure = TrainingLog::from_frame(&frame).unwrap();
        let labels: Vec<&str> = figure.losses.iter().map(|c| c.label).collect();
        assert_eq!(labels, ["loss (Bradley–Terry)"]);
        let directory = tempfile::tempdir().unwrap();
        training_figure(&frame, &directory.path().join("t.png")).unwrap();
    }

    #[test]
    fn one_step_log_draws() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("one.png");
        training_figure(&log(1, true), &path).unwrap();
        assert_eq!(png_size(&path), (1500, 620));
    }

    #[test]
    fn log_without_loss_column_names_it() {
        let frame = df!("step" => [1i64, 2]).unwrap();
        let directory = tempfile::tempdir().unwrap();
        let error = training_figure(&frame, &directory.path().join("t.png")).unwrap_err();
        assert!(error.to_string().contains("`loss`"), "{error}");
    }

    #[test]
    #[ignore = "writes sample figures to look at: target/plot-samples or $QRM_PLOT_SAMPLES"]
    fn training_samples() {
        let directory = samples_dir();
        training_figure(&log(600, true), &directory.join("training.png")).unwrap();
        training_figure(&log(8, false), &directory.join("training_short.png")).unwrap();
    }
}
