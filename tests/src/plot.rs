//! SVG plots of benchmark results, written next to their JSON (plotters' SVG backend
//! only: text goes out as SVG `<text>`, so no font or image library is needed).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// One named line of a plot.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// The empirical distribution of `samples`: (value, fraction of samples ≤ value).
    pub fn cdf(name: impl Into<String>, samples: &[f64]) -> Self {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let points = v
            .iter()
            .enumerate()
            .map(|(k, x)| (*x, (k + 1) as f64 / n))
            .collect();
        Self {
            name: name.into(),
            points,
        }
    }
}

/// What a plot shows.
pub struct Plot<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    /// Log-scaled y axis (x is always log-scaled).
    pub log_y: bool,
}

/// Draws `series` (x log-scaled) to `<dir of json>/<name>.svg` and returns the path.
pub fn svg(json: &Path, name: &str, plot: &Plot<'_>, series: &[Series]) -> PathBuf {
    let path = json.with_file_name(format!("{name}.svg"));
    draw(&path, plot, series).unwrap_or_else(|e| panic!("cannot plot {}: {e}", path.display()));
    println!("plot: {}", path.display());
    path
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.1, 1.0)
    } else {
        (lo / 1.5, hi * 1.5)
    }
}

fn draw(path: &Path, plot: &Plot<'_>, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = bounds(all().map(|p| p.0));
    let mut builder = ChartBuilder::on(&root);
    let chart = builder
        .caption(plot.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    let colors: Vec<RGBAColor> = (0..series.len())
        .map(|i| Palette99::pick(i).to_rgba())
        .collect();
    macro_rules! lines {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(plot.x)
                .y_desc(plot.y)
                .draw()?;
            for (s, color) in series.iter().zip(&colors) {
                let color = *color;
                let points = s.points.iter().copied().filter(|p| p.0 > 0.0 && p.1 > 0.0);
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
        }};
    }
    if plot.log_y {
        let (y0, y1) = bounds(all().map(|p| p.1));
        lines!(chart.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?);
    } else {
        lines!(chart.build_cartesian_2d((x0..x1).log_scale(), 0f64..1.02f64)?);
    }
    root.present()?;
    Ok(())
}
