//! Training curves as SVG ([`plot_history_svg`], `lcjit fit --plot`), drawn with
//! plotters' SVG backend.
//!
//! One panel per quantity, stacked: the loss first (training and `val_loss`), then each
//! metric with its `val_` twin, then the learning rate when it was logged. Epochs are
//! numbered from 1 as Keras prints them; non-finite values leave a gap in their curve.
//! Text is emitted as SVG `<text>` (no font files are read: plotters is built without
//! its font features), so the picture renders with the viewer's sans-serif font.

use super::History;
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;

/// Pixel width of the picture and height of one panel.
const WIDTH: u32 = 760;
const PANEL: u32 = 280;

/// Training curves (matplotlib's first two colours, which readers know from Keras
/// tutorials) and the learning rate's.
const TRAIN: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const VALID: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const RATE: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

/// One panel: a title and its curves `(label, values, colour)`.
struct Panel<'h> {
    title: String,
    curves: Vec<(&'h str, &'h [f64], RGBColor)>,
}

/// The panels for `h`: each key that is not a `val_` twin or `lr`, with its twin.
fn panels(h: &History) -> Vec<Panel<'_>> {
    let mut out = Vec::new();
    for (k, v) in h.iter() {
        if k == "lr" {
            continue;
        }
        if let Some(base) = k.strip_prefix("val_") {
            if h.get(base).is_some() {
                continue;
            }
        }
        let mut curves = vec![(k, v, TRAIN)];
        let twin = format!("val_{k}");
        if let Some((tk, tv)) = h.iter().find(|(name, _)| *name == twin) {
            curves.push((tk, tv, VALID));
        }
        out.push(Panel {
            title: k.to_string(),
            curves,
        });
    }
    if let Some(lr) = h.get("lr") {
        out.push(Panel {
            title: "learning rate".into(),
            curves: vec![("lr", lr, RATE)],
        });
    }
    out
}

/// The y range of a panel's finite values, with a margin (a flat curve gets ±5 % of its
/// value, or ±1 at zero).
fn y_range(p: &Panel) -> (f64, f64) {
    let vals = p
        .curves
        .iter()
        .flat_map(|c| c.1.iter())
        .filter(|v| v.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        0.08 * span
    } else if lo != 0.0 {
        0.05 * lo.abs()
    } else {
        1.0
    };
    (lo - pad, hi + pad)
}

/// Draws every panel of `h` into an SVG document.
fn render(h: &History) -> std::result::Result<String, String> {
    let panels = panels(h);
    let epochs = h.len().max(1) as i32;
    let mut svg = String::new();
    {
        let height = PANEL * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (area, p) in areas.iter().zip(&panels) {
            draw_panel(area, p, epochs).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_panel(
    area: &Area<'_>,
    p: &Panel,
    epochs: i32,
) -> std::result::Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let (lo, hi) = y_range(p);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .build_cartesian_2d(0..epochs + 1, lo..hi)?;
    let last = epochs;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels((epochs + 2).min(12) as usize)
        .x_label_formatter(&|x| {
            if (1..=last).contains(x) {
                x.to_string()
            } else {
                String::new()
            }
        })
        .y_labels(6)
        .y_label_formatter(&|y| tick(*y, hi - lo))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .bold_line_style(RGBColor(0xcc, 0xcc, 0xcc))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for &(label, values, color) in &p.curves {
        let style = color.stroke_width(2);
        // Split at non-finite values so a gap shows where the value was NaN or infinite.
        let offset = epochs as usize - values.len().min(epochs as usize);
        let points: Vec<Option<(i32, f64)>> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| v.is_finite().then_some(((offset + i + 1) as i32, v)))
            .collect();
        for run in points.split(Option::is_none) {
            let run: Vec<(i32, f64)> = run.iter().flatten().copied().collect();
            chart.draw_series(LineSeries::new(run, style))?;
        }
        chart
            .draw_series(
                points
                    .iter()
                    .flatten()
                    .map(|&pt| Circle::new(pt, 3, color.filled())),
            )?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xbb, 0xbb, 0xbb))
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// A y-axis label with as many decimals as the axis span needs.
fn tick(y: f64, span: f64) -> String {
    if span <= 0.0 || !span.is_finite() {
        return format!("{y:.3}");
    }
    let mag = span.log10().floor();
    if !(-5.0..=5.0).contains(&mag) {
        return format!("{y:.2e}");
    }
    let decimals = (2.0 - mag).clamp(0.0, 8.0) as usize;
    format!("{y:.decimals$}")
}

/// Writes the training curves of `history` to `path` as SVG (atomically).
pub fn plot_history_svg(history: &History, path: &Path) -> Result<()> {
    if history.is_empty() {
        return Err(Error::Usage {
            detail: format!("{}: no epoch was recorded, nothing to plot", path.display()),
        });
    }
    let svg =
        render(history).map_err(|e| Error::internal(format!("drawing {}: {e}", path.display())))?;
    crate::io::write_atomic(path, |w| w.write_all(svg.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::super::Logs;
    use super::*;

    #[test]
    fn one_panel_per_quantity() {
        let mut h = History::new();
        for e in 0..3 {
            let mut l = Logs::new();
            l.set("loss", 1.0 / (e + 1) as f64);
            l.set("mae", 0.5);
            l.set("val_loss", if e == 1 { f64::NAN } else { 0.7 });
            l.set("val_mae", 0.6);
            l.set("lr", 0.01);
            h.record(e, &l);
        }
        let p = panels(&h);
        let titles: Vec<&str> = p.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["loss", "mae", "learning rate"]);
        assert_eq!(p[0].curves.len(), 2);
        let svg = render(&h).expect("render");
        assert!(svg.starts_with("<svg") && svg.contains("val_loss") && svg.contains("epoch"));
        assert_eq!(y_range(&p[2]), (0.01 - 0.0005, 0.01 + 0.0005));
    }
}
