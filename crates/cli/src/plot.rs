//! Plots (plotters). PNG or SVG by the file's extension; text uses a subset of DejaVu Sans built
//! into the binary (assets/, Bitstream Vera licence), so no system fonts are needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The font is a compile-time constant that parses; failure would be a build defect.
            let _ = plotters::style::register_font("sans-serif", style, FONT);
        }
    });
}

/// Draws a chart's series labels in the house style: a framed, slightly see-through box.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(position).draw()
}

/// One panel of stacked latency bars: for each cut, (device, transfer, server) in ms.
pub struct StackedPanel {
    pub title: String,
    pub bars: Vec<(usize, [f64; 3])>,
    /// The cut the planner chose in this panel.
    pub chosen: Option<usize>,
}

/// Colours of the three stacked parts.
const PARTS: [(&str, RGBColor); 3] =
    [("device", RGBColor(66, 133, 244)), ("transfer", RGBColor(251, 188, 5)), ("server", RGBColor(52, 168, 83))];

/// Draws panels one above the other into `path` (.png or .svg).
pub fn stacked_bars(path: &Path, caption: &str, panels: &[StackedPanel]) -> Result<()> {
    register_font();
    let height = 60 + 300 * panels.len() as u32;
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
            draw(&root, caption, panels)?;
            root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
            draw(&root, caption, panels)?;
            root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        }
        _ => bail!("--plot {}: use a .png or .svg file name", path.display()),
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, caption: &str, panels: &[StackedPanel]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(caption, ("sans-serif", 24)).map_err(err)?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (area, panel) in areas.iter().zip(panels) {
        let n = panel.bars.iter().map(|(c, _)| *c).max().unwrap_or(0) + 1;
        let totals: Vec<f64> = panel.bars.iter().map(|(_, v)| v.iter().sum()).collect();
        // Keep most bars readable: cap the axis near the 75th percentile (at least 3× the best),
        // and mark the bars that go beyond it.
        let best = totals.iter().copied().fold(f64::INFINITY, f64::min);
        let max = totals.iter().copied().fold(0.0, f64::max);
        let mut sorted = totals.clone();
        sorted.sort_by(f64::total_cmp);
        let p75 = sorted.get(sorted.len() * 3 / 4).copied().unwrap_or(max);
        let cap = (p75 * 1.2).max(if best.is_finite() { best * 3.0 } else { 0.0 }).min(max);
        let y_max = if cap > 0.0 { cap * 1.05 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_desc("cut")
            .y_desc("predicted latency (ms)")
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .draw()
            .map_err(err)?;
        for (i, (name, color)) in PARTS.iter().enumerate() {
            let rects = panel.bars.iter().map(|(c, v)| {
                let base: f64 = v[..i].iter().sum::<f64>().min(y_max);
                let top = (base + v[i]).min(y_max);
                let x = *c as f64;
                Rectangle::new([(x - 0.4, base), (x + 0.4, top)], color.filled())
            });
            chart
                .draw_series(rects)
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        // Bars taller than the axis get a black cap.
        let clipped = panel.bars.iter().filter(|(_, v)| v.iter().sum::<f64>() > y_max).map(|(c, _)| {
            let x = *c as f64;
            Rectangle::new([(x - 0.4, y_max * 0.97), (x + 0.4, y_max)], BLACK.filled())
        });
        chart.draw_series(clipped).map_err(err)?;
        if let Some(c) = panel.chosen {
            let x = c as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(x, 0.0), (x, y_max)], BLACK.stroke_width(2))))
                .map_err(err)?
                .label(format!("chosen: cut {c}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLACK.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(err)?;
    }
    Ok(())
}

/// One exit's policy curve: (exit rate, accuracy) points, by increasing threshold.
pub struct ExitCurve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Exit rate (x, %) against the policy's accuracy (y, %), one line per exit, with the final
/// output's accuracy as a horizontal reference; into `path` (.png or .svg).
pub fn exit_curves(path: &Path, caption: &str, curves: &[ExitCurve], baseline: f64) -> Result<()> {
    register_font();
    let size = (900, 560);
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw_curves(&root, caption, curves, baseline)?;
            root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw_curves(&root, caption, curves, baseline)?;
            root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        }
        _ => bail!("--plot {}: use a .png or .svg file name", path.display()),
    }
    Ok(())
}

fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    caption: &str,
    curves: &[ExitCurve],
    baseline: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let lowest = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)).fold(baseline, f64::min);
    // Zoom on the interesting band: a little below the worst policy, a little above the best.
    let y_lo = ((lowest * 100.0 - 0.5).floor()).max(0.0);
    let y_hi = ((baseline * 100.0 + 0.5).ceil()).min(100.0).max(y_lo + 1.0);
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..100f64, y_lo..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("frames answered at the exit (%)")
        .y_desc("accuracy of the policy (%)")
        .draw()
        .map_err(err)?;
    let b = baseline * 100.0;
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(0.0, b), (100.0, b)], BLACK.stroke_width(1))))
        .map_err(err)?
        .label(format!("final output alone ({b:.2}%)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(1)));
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = c.points.iter().map(|&(r, a)| (r * 100.0, a * 100.0)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("exit {}", c.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerLeft).map_err(err)?;
    Ok(())
}

/// `cleave bench trace --plot`: three panels over time, one above the other: the trace's
/// bandwidth with the adaptive device's estimate, the cut chosen per frame (adaptive and
/// oracle), and per-frame latency (adaptive and oracle, with the means of best-static and
/// device-only as reference lines).
pub fn trace_timeline(path: &Path, report: &cleave_bench::trace::TraceReport) -> Result<()> {
    register_font();
    let size = (1200, 960);
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw_timeline(&root, report)?;
            root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw_timeline(&root, report)?;
            root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        }
        _ => bail!("--plot {}: use a .png or .svg file name", path.display()),
    }
    Ok(())
}

fn draw_timeline<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &cleave_bench::trace::TraceReport,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    // The measured ratio when there is one (a CPU quota's effect is only known by measuring).
    let speed = match report.device_speed.measured_ratio {
        Some(r) => format!("device measured {r:.1}× slower"),
        None => format!("device {:.1}× slower", report.device_speed.slowdown),
    };
    let caption = format!(
        "{} on {} ({} ms delay each way, {speed})",
        std::path::Path::new(&report.model).file_name().and_then(|s| s.to_str()).unwrap_or(&report.model),
        std::path::Path::new(&report.trace).file_name().and_then(|s| s.to_str()).unwrap_or(&report.trace),
        report.delay_ms,
    );
    let root = root.titled(&caption, ("sans-serif", 22)).map_err(err)?;
    let panels = root.split_evenly((3, 1));
    let find = |name: &str| report.strategies.iter().find(|s| s.strategy == name);
    let adaptive = find("adaptive").map(|s| s.per_frame.as_slice()).unwrap_or(&[]);
    let oracle = find("oracle").map(|s| s.per_frame.as_slice()).unwrap_or(&[]);
    let t_max = report.bandwidth.last().map(|p| p.0).unwrap_or(1.0).max(1.0);
    let blue = RGBColor(66, 133, 244);
    let orange = RGBColor(234, 67, 53);
    let grey = RGBColor(120, 120, 120);

    // 1. Bandwidth.
    let bw_max =
        report.bandwidth.iter().map(|p| p.1).chain(adaptive.iter().filter_map(|f| f.estimate_mbps)).fold(1.0, f64::max)
            * 1.1;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("uplink", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..bw_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("time (s)").y_desc("Mbit/s").draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(report.bandwidth.iter().copied(), grey.stroke_width(2)))
        .map_err(err)?
        .label("trace capacity (1 s window)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], grey.stroke_width(2)));
    chart
        .draw_series(adaptive.iter().filter_map(|f| f.estimate_mbps.map(|e| Circle::new((f.t_s, e), 3, blue.filled()))))
        .map_err(err)?
        .label("adaptive's estimate")
        .legend(move |(x, y)| Circle::new((x + 7, y), 3, blue.filled()));
    legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(err)?;

    // 2. Chosen cut.
    let last = report.last_cut as f64;
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(format!("chosen cut (0 = send the input, {} = device-only)", report.last_cut), ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, -0.5f64..(last + 0.5))
        .map_err(err)?;
    chart.configure_mesh().x_desc("time (s)").y_desc("cut").draw().map_err(err)?;
    chart
        .draw_series(oracle.iter().map(|f| Cross::new((f.t_s, f.cut as f64), 4, orange.stroke_width(1))))
        .map_err(err)?
        .label("oracle")
        .legend(move |(x, y)| Cross::new((x + 7, y), 4, orange.stroke_width(1)));
    chart
        .draw_series(adaptive.iter().map(|f| Circle::new((f.t_s, f.cut as f64), 3, blue.filled())))
        .map_err(err)?
        .label("adaptive")
        .legend(move |(x, y)| Circle::new((x + 7, y), 3, blue.filled()));
    legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(err)?;

    // 3. Latency.
    let mean = |name: &str| find(name).map(|s| s.mean_ms).filter(|v| v.is_finite());
    let mut lat: Vec<f64> = adaptive.iter().chain(oracle).map(|f| f.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let p98 = lat.get(lat.len() * 98 / 100).copied().unwrap_or(1.0);
    let y_max = [Some(p98), mean("best-static"), mean("device-only")].into_iter().flatten().fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&panels[2])
        .caption("latency per frame (release → answer)", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("time (s)").y_desc("ms").draw().map_err(err)?;
    let clip = |v: f64| v.min(y_max);
    chart
        .draw_series(LineSeries::new(oracle.iter().map(|f| (f.t_s, clip(f.latency_ms))), orange.stroke_width(1)))
        .map_err(err)?
        .label("oracle")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], orange.stroke_width(1)));
    chart
        .draw_series(LineSeries::new(adaptive.iter().map(|f| (f.t_s, clip(f.latency_ms))), blue.stroke_width(2)))
        .map_err(err)?
        .label("adaptive")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], blue.stroke_width(2)));
    for (name, color) in [("best-static", RGBColor(52, 168, 83)), ("device-only", BLACK)] {
        if let Some(m) = mean(name) {
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(0.0, m), (t_max, m)], color.stroke_width(1))))
                .map_err(err)?
                .label(format!("{name} mean ({m:.0} ms)"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(1)));
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(err)?;
    Ok(())
}
