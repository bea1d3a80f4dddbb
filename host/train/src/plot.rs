//! The run's loss/learning-rate plot and GRPO's reward plot (PNG, plotters' bitmap backend) drawn from metrics.jsonl.
//! Labels need a TrueType font; DejaVu Sans is used where the system has it, otherwise the
//! curves are drawn without text rather than not at all.

use crate::error::{Result, file_err};
use plotters::prelude::*;
use std::path::Path;

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> bool {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONCE.get_or_init(|| {
        for f in FONTS {
            if let Ok(bytes) = std::fs::read(f) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Reads metrics.jsonl and draws loss (train and eval) and learning rate against the step.
pub fn plot(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| file_err(metrics, e))?;
    let (mut loss, mut eval, mut lr) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        if let Some(l) = v.get("loss").and_then(|s| s.as_f64()) {
            loss.push((step, l));
        }
        if let Some(l) = v.get("eval_loss").and_then(|s| s.as_f64()) {
            eval.push((step, l));
        }
        if let Some(l) = v.get("lr").and_then(|s| s.as_f64()) {
            lr.push((step, l));
        }
    }
    let text = register_font();
    draw(&loss, &eval, &lr, png, text).map_err(|e| file_err(png, e))
}

fn draw(
    loss: &[(f64, f64)],
    eval: &[(f64, f64)],
    lr: &[(f64, f64)],
    png: &Path,
    text: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(png, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let max_step = loss.iter().chain(eval).map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = loss
        .iter()
        .chain(eval)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo * 0.95, hi * 1.05 + 1e-9)
    } else {
        (0.0, 1.0)
    };
    let mut c = ChartBuilder::on(&top);
    c.margin(10)
        .x_label_area_size(if text { 30 } else { 0 })
        .y_label_area_size(if text { 50 } else { 0 });
    if text {
        c.caption("loss", ("sans-serif", 20));
    }
    let mut chart = c.build_cartesian_2d(0f64..max_step, lo..hi)?;
    if text {
        chart.configure_mesh().x_desc("step").draw()?;
    }
    chart
        .draw_series(LineSeries::new(loss.iter().copied(), &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    chart
        .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    chart.draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    if text {
        chart.configure_series_labels().border_style(BLACK).draw()?;
    }
    let lr_max = lr.iter().map(|p| p.1).fold(1e-12, f64::max);
    let mut c = ChartBuilder::on(&bottom);
    c.margin(10)
        .x_label_area_size(if text { 30 } else { 0 })
        .y_label_area_size(if text { 50 } else { 0 });
    if text {
        c.caption("learning rate", ("sans-serif", 16));
    }
    let mut chart = c.build_cartesian_2d(0f64..max_step, 0f64..lr_max * 1.05)?;
    if text {
        chart
            .configure_mesh()
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()?;
    }
    chart.draw_series(LineSeries::new(lr.iter().copied(), &GREEN))?;
    root.present()?;
    Ok(())
}

/// GRPO's reward plot: the mean reward per step, its 10-step running mean, each reward
/// function's mean, and the held-out reward, against the step.
pub fn plot_rewards(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| file_err(metrics, e))?;
    let mut series: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        for (k, val) in &v {
            let keep = k == "reward"
                || k == "eval_reward"
                || (k.starts_with("rewards/") && k.ends_with("/mean"));
            if let (true, Some(x)) = (keep, val.as_f64()) {
                series.entry(k.clone()).or_default().push((step, x));
            }
        }
    }
    let reward = series.get("reward").cloned().unwrap_or_default();
    let avg: Vec<(f64, f64)> = (0..reward.len())
        .map(|i| {
            let w = &reward[i.saturating_sub(9)..=i];
            (
                reward[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    series.insert("reward (10-step mean)".into(), avg);
    let text = register_font();
    draw_rewards(&series, png, text).map_err(|e| file_err(png, e))
}

fn draw_rewards(
    series: &std::collections::BTreeMap<String, Vec<(f64, f64)>>,
    png: &Path,
    text: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(png, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = series.values().flatten();
    let max_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all.fold((0f64, 1f64), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let mut c = ChartBuilder::on(&root);
    c.margin(10)
        .x_label_area_size(if text { 30 } else { 0 })
        .y_label_area_size(if text { 50 } else { 0 });
    if text {
        c.caption("reward", ("sans-serif", 20));
    }
    let mut chart = c.build_cartesian_2d(0f64..max_step, lo..hi * 1.05 + 1e-9)?;
    if text {
        chart.configure_mesh().x_desc("step").draw()?;
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let width = if name.starts_with("reward") { 2 } else { 1 };
        chart
            .draw_series(LineSeries::new(
                pts.iter().copied(),
                color.stroke_width(width),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
    }
    if text {
        chart.configure_series_labels().border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
