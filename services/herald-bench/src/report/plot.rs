//! The report's plots: grouped bar charts in SVG, drawn with plotters.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A target keeps its colour in every plot; other series (percentiles) take the rest in turn.
fn color(series: &str, i: usize) -> RGBColor {
    match series {
        "Herald" => RGBColor(214, 39, 40),
        "Herald (before)" => RGBColor(255, 152, 150),
        "Socket.IO" => RGBColor(31, 119, 180),
        "ws" => RGBColor(44, 160, 44),
        "JetStream (fsync always)" => RGBColor(255, 127, 14),
        "JetStream (default sync)" => RGBColor(255, 187, 120),
        _ => [
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(23, 190, 207),
        ][i % 3],
    }
}

/// A grouped bar chart: one group per category, one bar per series.
pub(super) fn bars(
    images: &Path,
    file: &str,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let path = images.join(file);
    let root = SVGBackend::new(&path, (860, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let width = series.len() as f64 + 1.0;
    // Room above the tallest bar for the legend, one line per series.
    let headroom = 1.2 + 0.08 * series.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..categories.len() as f64 * width, 0.0..max * headroom)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc(y_label)
        .draw()?;
    // Each category's name under the centre of its group (tick positions would not land there).
    let label = ("sans-serif", 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, name) in categories.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 * width + width / 2.0, 0.0));
        root.draw(&Text::new(name.as_str(), (x, y + 10), label.clone()))?;
    }
    for (s, (name, values)) in series.iter().enumerate() {
        let color = color(name, s);
        chart
            .draw_series(values.iter().enumerate().map(|(c, v)| {
                let x0 = c as f64 * width + 0.5 + s as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.9, *v)], color.filled())
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
