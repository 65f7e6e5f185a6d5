//! The SVG chart: req/s per scenario and listener.

use std::path::Path;

use plotters::prelude::*;

use crate::plan::Listener;

use super::Report;

/// Per listener, in `Listener::ALL` order: plain grey, Lua navy, the empty filter green,
/// flowgate orange.
const COLOURS: [RGBColor; Listener::COUNT] = [
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 128),
    RGBColor(46, 139, 87),
    RGBColor(214, 96, 28),
];

/// Each bar's width and step, as a fraction of a scenario's slot.
const BAR: f64 = 0.19;
const STEP: f64 = 0.2;

/// Left edge of `listener`'s bar in scenario slot `i`.
fn bar_x(i: usize, listener: Listener) -> f64 {
    i as f64 + 0.1 + STEP * listener.index() as f64
}

/// Grouped bars: req/s per scenario and listener, flowgate's ratio to Lua above its bar.
pub fn svg(report: &Report, path: &Path) -> Result<(), String> {
    let n = report.measured.len();
    let width = (160 + 130 * n as u32).max(800);
    let root = SVGBackend::new(path, (width, 560)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let top = report
        .measured
        .iter()
        .flat_map(|m| Listener::ALL.map(|l| m.rps(l)))
        .fold(0.0, f64::max)
        * 1.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "req/s, 1 Envoy worker, wrk -c{} ({}) — above flowgate's bar: flowgate ÷ Lua",
                report.connections, report.date
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top.max(1.0))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .max_light_lines(1)
        .y_desc("requests per second")
        .y_label_formatter(&|v| format!("{:.1}k", v / 1000.0))
        .draw()
        .map_err(|e| fail(&e))?;
    for l in Listener::ALL {
        let colour = COLOURS[l.index()];
        chart
            .draw_series(report.measured.iter().enumerate().map(|(i, m)| {
                let x0 = bar_x(i, l);
                Rectangle::new([(x0, 0.0), (x0 + BAR, m.rps(l))], colour.filled())
            }))
            .map_err(|e| fail(&e))?
            .label(l.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart
        .draw_series(report.measured.iter().enumerate().map(|(i, m)| {
            let x = bar_x(i, Listener::Flowgate);
            Text::new(
                format!("{:.2}x", m.ratio(Listener::Flowgate, Listener::Lua)),
                (x - 0.04, m.rps(Listener::Flowgate) + top * 0.03),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| fail(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, m) in report.measured.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            m.scenario.name.to_string(),
            (x - 4 * m.scenario.name.len() as i32, y + 10),
            ("sans-serif", 14),
        ))
        .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}
