//! Accuracy-versus-ε charts: one panel per norm, one line per attack.

use std::sync::OnceLock;

use palisade_attack::{Norm, RobustnessReport};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::ReportError;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const PANEL: (u32, u32) = (760, 520);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn fonts() -> Result<(), ReportError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    if *LOADED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok()) {
        Ok(())
    } else {
        Err(ReportError::Plot(
            "the bundled font could not be loaded".into(),
        ))
    }
}

fn norms(r: &RobustnessReport) -> Vec<Norm> {
    [Norm::Linf, Norm::L2]
        .into_iter()
        .filter(|n| {
            r.curves
                .iter()
                .any(|c| c.norm == *n && !c.points.is_empty())
        })
        .collect()
}

fn size(r: &RobustnessReport) -> Result<(u32, u32), ReportError> {
    let k = norms(r).len() as u32;
    if k == 0 {
        return Err(ReportError::NothingToPlot);
    }
    Ok((PANEL.0 * k, PANEL.1))
}

/// The chart as an SVG document.
pub fn robustness_svg(r: &RobustnessReport) -> Result<String, ReportError> {
    fonts()?;
    let (w, h) = size(r)?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        draw(&root, r)?;
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

/// The chart as PNG bytes.
pub fn robustness_png(r: &RobustnessReport) -> Result<Vec<u8>, ReportError> {
    fonts()?;
    let (w, h) = size(r)?;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, r)?;
        root.present().map_err(plot_err)?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&buf)?;
    }
    Ok(png_bytes)
}

fn plot_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> ReportError {
    ReportError::Plot(e.to_string())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &RobustnessReport,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let ns = norms(r);
    let panels = root.split_evenly((1, ns.len()));
    for (panel, norm) in panels.iter().zip(&ns) {
        let curves: Vec<_> = r
            .curves
            .iter()
            .filter(|c| c.norm == *norm && !c.points.is_empty())
            .collect();
        let max_eps = curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.eps))
            .fold(0.0f32, f32::max)
            .max(1e-6);
        let name = match norm {
            Norm::Linf => "L∞",
            Norm::L2 => "L2",
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "Robust accuracy vs ε ({name}) · {} · n = {}",
                    r.model, r.samples
                ),
                ("sans-serif", 19),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(58)
            .build_cartesian_2d(0f32..max_eps * 1.03, 0f32..1.02f32)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(format!("ε ({name}, input units)"))
            .y_desc("accuracy")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(246, 246, 246))
            .draw()
            .map_err(plot_err)?;
        // Clean accuracy as a dashed reference line.
        let clean = r.clean_accuracy;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, clean), (max_eps * 1.03, clean)],
                6,
                4,
                RGBColor(120, 120, 120).stroke_width(1),
            ))
            .map_err(plot_err)?
            .label(format!("clean ({:.1}%)", 100.0 * clean))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(120, 120, 120)));
        for (k, c) in curves.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts: Vec<(f32, f32)> = c
                .points
                .iter()
                .map(|p| (p.eps, p.robust_accuracy))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
                .map_err(plot_err)?
                .label(c.attack.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    pts.iter()
                        .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
                )
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}
