//! Every chart of a run, drawn with plotters from [`VisualizationData`] to
//! PNG (bitmap) or SVG (for the HTML report), always in the embedded font.
//!
//! Habits that keep them readable at a glance: a title and axis units on
//! every chart; the Okabe–Ito palette (distinguishable with the common
//! colour-vision deficiencies) for strategies, marker shapes for backends so
//! colour is never the only cue; legends in their own strip beside the
//! plot, never over data; point labels placed where they overlap no other
//! label; log axes where values span more than a decade.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::data::{PairKey, TimelineSeries, VisualizationData};
use super::font::FAMILY;
use super::ReportError;
use crate::backend::BackendKind;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Okabe & Ito's colour-blind-safe palette (black moved last: it is the
/// axes' colour).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(86, 180, 233),
    RGBColor(204, 121, 167),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

/// Every chart kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartKind {
    /// Memory per strategy, one panel per backend, stacked weights + overhead.
    Memory,
    /// Speed vs accuracy with the Pareto front.
    SpeedAccuracy,
    /// Memory vs accuracy with the Pareto front.
    MemoryAccuracy,
    /// Radar of the normalized comparison, one per backend.
    Radar,
    /// Memory timeline of every pair with phase bands.
    Timeline,
    /// Per-layer weight NMSE, layers x strategies.
    LayerHeatmap,
    /// One page of the four that matter most.
    Summary,
}

impl ChartKind {
    /// Every kind, in the order the report shows them.
    pub const ALL: [ChartKind; 7] = [
        ChartKind::Summary,
        ChartKind::Memory,
        ChartKind::SpeedAccuracy,
        ChartKind::MemoryAccuracy,
        ChartKind::Radar,
        ChartKind::Timeline,
        ChartKind::LayerHeatmap,
    ];

    /// File stem and element id.
    pub fn name(self) -> &'static str {
        match self {
            ChartKind::Memory => "memory",
            ChartKind::SpeedAccuracy => "speed_accuracy",
            ChartKind::MemoryAccuracy => "memory_accuracy",
            ChartKind::Radar => "radar",
            ChartKind::Timeline => "memory_timeline",
            ChartKind::LayerHeatmap => "layer_sensitivity",
            ChartKind::Summary => "summary",
        }
    }

    /// Pixel size of the chart for `data` (the timeline and the heat map
    /// grow with the number of pairs and layers).
    pub fn size(self, data: &VisualizationData) -> (u32, u32) {
        match self {
            ChartKind::Memory => (1000, 560),
            ChartKind::SpeedAccuracy | ChartKind::MemoryAccuracy => (1000, 620),
            ChartKind::Radar => (1000, 520),
            ChartKind::Timeline => {
                let n = timeline_pairs(data).len().max(1) as u32;
                (1200, 90 + n.div_ceil(TIMELINE_COLS) * 230)
            }
            ChartKind::LayerHeatmap => {
                let rows = data.layer_sensitivity.layers.len().max(1) as u32;
                (1000, (110 + rows * 22).max(300))
            }
            ChartKind::Summary => (1600, 1100),
        }
    }
}

/// A PNG of `kind`.
pub fn render_png(kind: ChartKind, data: &VisualizationData) -> Result<Vec<u8>, ReportError> {
    let err = |message: String| ReportError::Chart {
        chart: kind.name().into(),
        message,
    };
    super::font::register().map_err(err)?;
    let (w, h) = kind.size(data);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(kind, &root, data).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, w, h, image::ColorType::Rgb8)
        .map_err(|e| err(format!("PNG encoding: {e}")))?;
    Ok(png)
}

/// An SVG document of `kind` (text as SVG text in the `sans-serif` family).
pub fn render_svg(kind: ChartKind, data: &VisualizationData) -> Result<String, ReportError> {
    let err = |message: String| ReportError::Chart {
        chart: kind.name().into(),
        message,
    };
    // The SVG backend asks the font for text extents (label placement).
    super::font::register().map_err(err)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, kind.size(data)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(kind, &root, data).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

use image::ImageEncoder;

/// Draws `kind` on `area`.
pub fn draw<DB: DrawingBackend>(
    kind: ChartKind,
    area: &DrawingArea<DB, Shift>,
    d: &VisualizationData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    match kind {
        ChartKind::Memory => memory_chart(area, d),
        ChartKind::SpeedAccuracy => tradeoff_chart(area, d, Axis::Time),
        ChartKind::MemoryAccuracy => tradeoff_chart(area, d, Axis::Memory),
        ChartKind::Radar => radar_chart(area, d),
        ChartKind::Timeline => timeline_chart(area, d),
        ChartKind::LayerHeatmap => heatmap_chart(area, d),
        ChartKind::Summary => {
            let area = area.titled(
                &format!(
                    "{}: memory, speed and accuracy retention ({})",
                    d.model, d.run_id
                ),
                font(24),
            )?;
            let panels = area.split_evenly((2, 2));
            memory_chart(&panels[0], d)?;
            radar_chart(&panels[1], d)?;
            tradeoff_chart(&panels[2], d, Axis::Time)?;
            tradeoff_chart(&panels[3], d, Axis::Memory)?;
            Ok(())
        }
    }
}

fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
}

fn text_at(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    font(size).pos(Pos::new(h, v))
}

/// The divisor and unit that make `max_bytes` a number people read.
pub fn byte_unit(max_bytes: f64) -> (f64, &'static str) {
    if max_bytes >= 1e9 {
        (1e9, "GB")
    } else if max_bytes >= 1e6 {
        (1e6, "MB")
    } else {
        (1e3, "KB")
    }
}

/// The divisor and unit for seconds.
pub fn time_unit(max_s: f64) -> (f64, &'static str) {
    if max_s >= 1.0 {
        (1.0, "s")
    } else if max_s >= 1e-3 {
        (1e-3, "ms")
    } else {
        (1e-6, "µs")
    }
}

/// Strategies in first-seen order: each gets one colour in every chart.
fn strategies(d: &VisualizationData) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for p in &d.tradeoff_analysis.points {
        if !v.contains(&p.key.strategy) {
            v.push(p.key.strategy.clone());
        }
    }
    v
}

fn backends(d: &VisualizationData) -> Vec<BackendKind> {
    let mut v: Vec<BackendKind> = Vec::new();
    for p in &d.tradeoff_analysis.points {
        if !v.contains(&p.key.backend) {
            v.push(p.key.backend);
        }
    }
    v
}

fn colour_of(strats: &[String], s: &str) -> RGBColor {
    let i = strats.iter().position(|x| x == s).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

/// Draws a backend's marker (circle, triangle, square) centred at `(x, y)` pixels.
fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    backend: BackendKind,
    (x, y): (i32, i32),
    size: i32,
    style: ShapeStyle,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    match backend {
        BackendKind::Cpu => area.draw(&Circle::new((x, y), size, style))?,
        BackendKind::Wgpu => area.draw(&Polygon::new(
            vec![
                (x, y - size - 1),
                (x - size - 1, y + size),
                (x + size + 1, y + size),
            ],
            style,
        ))?,
        BackendKind::Cuda => area.draw(&Rectangle::new(
            [(x - size, y - size), (x + size, y + size)],
            style,
        ))?,
    }
    Ok(())
}

/// A thin black outline around a marker, so light colours stand out on white.
fn outline<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    backend: BackendKind,
    (x, y): (i32, i32),
    size: i32,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let s = BLACK.stroke_width(1);
    match backend {
        BackendKind::Cpu => area.draw(&Circle::new((x, y), size, s))?,
        BackendKind::Wgpu => area.draw(&PathElement::new(
            vec![
                (x, y - size - 1),
                (x - size - 1, y + size),
                (x + size + 1, y + size),
                (x, y - size - 1),
            ],
            s,
        ))?,
        BackendKind::Cuda => area.draw(&Rectangle::new(
            [(x - size, y - size), (x + size, y + size)],
            s,
        ))?,
    }
    Ok(())
}

fn no_data<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, why: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        title.to_string(),
        (w as i32 / 2, 12),
        text_at(20, HPos::Center, VPos::Top),
    ))?;
    area.draw(&Text::new(
        why.to_string(),
        (w as i32 / 2, h as i32 / 2),
        text_at(16, HPos::Center, VPos::Center),
    ))?;
    Ok(())
}

/// A vertical legend in its own strip: (swatch drawer, label) rows.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[(LegendSwatch, String)],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let mut y = 46;
    area.draw(&Text::new(
        title.to_string(),
        (8, y),
        text_at(14, HPos::Left, VPos::Center),
    ))?;
    y += 22;
    for (swatch, label) in rows {
        match *swatch {
            LegendSwatch::Fill(c) => {
                area.draw(&Rectangle::new([(10, y - 6), (24, y + 6)], c.filled()))?
            }
            LegendSwatch::Marker(b) => marker(area, b, (17, y), 5, BLACK.filled())?,
            LegendSwatch::Line(c) => {
                area.draw(&PathElement::new(vec![(8, y), (26, y)], c.stroke_width(2)))?
            }
            LegendSwatch::Dashed(c) => {
                area.draw(&PathElement::new(vec![(8, y), (13, y)], c.stroke_width(2)))?;
                area.draw(&PathElement::new(vec![(17, y), (22, y)], c.stroke_width(2)))?;
                area.draw(&PathElement::new(vec![(26, y), (28, y)], c.stroke_width(2)))?;
            }
        }
        area.draw(&Text::new(
            label.clone(),
            (34, y),
            text_at(13, HPos::Left, VPos::Center),
        ))?;
        y += 20;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum LegendSwatch {
    Fill(RGBColor),
    Marker(BackendKind),
    Line(RGBColor),
    Dashed(RGBColor),
}

const WEIGHTS: RGBColor = PALETTE[0];
const OVERHEAD: RGBColor = PALETTE[1];

/// Stacked bars of weights + inference overhead per strategy, one panel per
/// backend on a shared y axis (so panels compare at a glance).
fn memory_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &VisualizationData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let title = "Memory per strategy: packed weights + inference overhead";
    let bs = backends(d);
    if d.memory_breakdown.is_empty() {
        return no_data(area, title, "no results");
    }
    let max = d
        .memory_breakdown
        .iter()
        .map(|m| (m.weight_bytes + m.overhead_bytes) as f64)
        .fold(1.0f64, f64::max);
    let (div, unit) = byte_unit(max);
    let area = area.titled(title, font(20))?;
    let (w, _) = area.dim_in_pixel();
    let (plot, key) = area.split_horizontally(w.saturating_sub(170));
    let panels = plot.split_evenly((1, bs.len().max(1)));
    let strats = strategies(d);
    for (panel, &b) in panels.iter().zip(&bs) {
        let here: Vec<_> = strats
            .iter()
            .filter_map(|s| {
                d.memory_breakdown
                    .iter()
                    .find(|m| m.key.backend == b && &m.key.strategy == s)
            })
            .collect();
        let names: Vec<String> = here.iter().map(|m| m.key.strategy.clone()).collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("backend: {}", b.name()), font(16))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((0..here.len()).into_segmented(), 0.0..max / div * 1.08)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|_| String::new())
            .y_desc(format!("memory ({unit})"))
            .y_label_style(font(12))
            .axis_desc_style(font(13))
            .draw()?;
        for (i, m) in here.iter().enumerate() {
            let wv = m.weight_bytes as f64 / div;
            let ov = m.overhead_bytes as f64 / div;
            let x0 = SegmentValue::Exact(i);
            let x1 = SegmentValue::Exact(i + 1);
            let mut r = Rectangle::new([(x0.clone(), 0.0), (x1.clone(), wv)], WEIGHTS.filled());
            r.set_margin(0, 0, 6, 6);
            chart.draw_series(std::iter::once(r))?;
            let mut r = Rectangle::new([(x0, wv), (x1, wv + ov)], OVERHEAD.filled());
            r.set_margin(0, 0, 6, 6);
            chart.draw_series(std::iter::once(r))?;
        }
        // Strategy names under their bars, every other one a line lower
        // when they would not fit side by side.
        let base = panel.get_base_pixel();
        let slot = if here.len() > 1 {
            let a = chart.backend_coord(&(SegmentValue::CenterOf(0), 0.0)).0;
            let b = chart.backend_coord(&(SegmentValue::CenterOf(1), 0.0)).0;
            b - a
        } else {
            i32::MAX
        };
        let widest = names
            .iter()
            .map(|n| {
                panel
                    .estimate_text_size(n, &font(12))
                    .map(|s| s.0 as i32)
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let stagger = widest + 4 > slot;
        for (i, n) in names.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(SegmentValue::CenterOf(i), 0.0));
            let dy = if stagger && i % 2 == 1 { 18 } else { 4 };
            panel.draw(&Text::new(
                n.clone(),
                (x - base.0, y - base.1 + dy),
                text_at(12, HPos::Center, VPos::Top),
            ))?;
        }
    }
    legend(
        &key,
        "memory",
        &[
            (LegendSwatch::Fill(WEIGHTS), "packed weights".into()),
            (LegendSwatch::Fill(OVERHEAD), "inference overhead".into()),
        ],
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Axis {
    Time,
    Memory,
}

/// An axis range with some air, on a log scale when it spans over a decade.
fn padded(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    if log {
        (lo / 1.6, hi * 1.6)
    } else {
        let pad = ((hi - lo) * 0.12).max(hi.abs() * 1e-4).max(1e-12);
        ((lo - pad).max(0.0), hi + pad)
    }
}

/// Accuracy retention against time per input or packed memory, every pair a
/// labelled point, the Pareto front dashed.
fn tradeoff_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &VisualizationData,
    axis: Axis,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let t = &d.tradeoff_analysis;
    let title = match axis {
        Axis::Time => "Speed vs accuracy retention (Pareto front dashed)",
        Axis::Memory => "Memory vs accuracy retention (Pareto front dashed)",
    };
    let pts: Vec<(f64, f64)> = t
        .points
        .iter()
        .map(|p| {
            let x = match axis {
                Axis::Time => p.inference_time_s,
                Axis::Memory => p.memory_bytes as f64,
            };
            (x, p.accuracy)
        })
        .collect();
    let usable: Vec<usize> = (0..pts.len()).filter(|&i| pts[i].0 > 0.0).collect();
    if usable.is_empty() {
        return no_data(area, title, "no results with a positive time and memory");
    }
    let xmax = usable.iter().map(|&i| pts[i].0).fold(0.0f64, f64::max);
    let xmin = usable
        .iter()
        .map(|&i| pts[i].0)
        .fold(f64::INFINITY, f64::min);
    let (div, unit) = match axis {
        Axis::Time => time_unit(xmax),
        Axis::Memory => byte_unit(xmax),
    };
    let (xmin, xmax) = (xmin / div, xmax / div);
    let log = xmax / xmin > 10.0;
    let (ylo, yhi) = {
        let lo = usable
            .iter()
            .map(|&i| pts[i].1)
            .fold(f64::INFINITY, f64::min);
        let hi = usable
            .iter()
            .map(|&i| pts[i].1)
            .fold(f64::NEG_INFINITY, f64::max);
        padded(lo, hi, false)
    };
    let yhi = yhi.min(1.0 + (yhi - ylo) * 0.1);
    let (x0, x1) = padded(xmin, xmax, log);
    let x_desc = match axis {
        Axis::Time => format!(
            "median time per input ({unit}{})",
            if log { ", log" } else { "" }
        ),
        Axis::Memory => format!("packed weights ({unit}{})", if log { ", log" } else { "" }),
    };
    let front = match axis {
        Axis::Time => &t.speed_accuracy_front,
        Axis::Memory => &t.memory_accuracy_front,
    };
    let area = area.titled(title, font(20))?;
    let (w, _) = area.dim_in_pixel();
    let (plot, key) = area.split_horizontally(w.saturating_sub(170));
    let strats = strategies(d);
    let bs = backends(d);
    // Both axis types go through one generic body.
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc.clone())
                .y_desc("accuracy retention (mean cosine)")
                .max_light_lines(3)
                .light_line_style(RGBColor(238, 238, 238))
                .x_label_style(font(12))
                .y_label_style(font(12))
                .axis_desc_style(font(13))
                .x_label_formatter(&|v: &f64| {
                    // On a log axis, only 1-2-5 ticks get a number: the
                    // others crowd into each other near each decade's end.
                    let lead = v / 10f64.powf(v.log10().floor());
                    let nice = [1.0, 2.0, 5.0].iter().any(|n| (lead - n).abs() < 1e-6);
                    if !log || nice {
                        short_number(*v)
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|v: &f64| format!("{v:.4}"))
                .draw()?;
            let fp: Vec<(f64, f64)> = front
                .iter()
                .filter(|&&i| i < pts.len() && pts[i].0 > 0.0)
                .map(|&i| (pts[i].0 / div, pts[i].1))
                .collect();
            chart.draw_series(DashedLineSeries::new(
                fp,
                7,
                5,
                BLACK.mix(0.6).stroke_width(2),
            ))?;
            let pa = chart.plotting_area().strip_coord_spec();
            let base = chart.plotting_area().get_base_pixel();
            let (pw, ph) = pa.dim_in_pixel();
            let px: Vec<(i32, i32)> = usable
                .iter()
                .map(|&i| {
                    let (x, y) = chart.backend_coord(&(pts[i].0 / div, pts[i].1));
                    (x - base.0, y - base.1)
                })
                .collect();
            for (k, &i) in usable.iter().enumerate() {
                let p = &t.points[i];
                let c = colour_of(&strats, &p.key.strategy);
                marker(&pa, p.key.backend, px[k], 6, c.filled())?;
                outline(&pa, p.key.backend, px[k], 6)?;
            }
            let labels: Vec<String> = usable
                .iter()
                .map(|&i| {
                    let p = &t.points[i];
                    if bs.len() > 1 {
                        format!("{} ({})", p.key.strategy, p.key.backend.name())
                    } else {
                        p.key.strategy.clone()
                    }
                })
                .collect();
            let sizes: Vec<(u32, u32)> = labels
                .iter()
                .map(|l| {
                    pa.estimate_text_size(l, &font(12))
                        .unwrap_or((l.len() as u32 * 7, 12))
                })
                .collect();
            let front_px: Vec<(i32, i32)> = front
                .iter()
                .filter(|&&i| i < pts.len() && pts[i].0 > 0.0)
                .map(|&i| {
                    let (x, y) = chart.backend_coord(&(pts[i].0 / div, pts[i].1));
                    (x - base.0, y - base.1)
                })
                .collect();
            let placed = place_labels(&px, &sizes, (pw as i32, ph as i32), 9, &[front_px]);
            for (k, pos) in placed.iter().enumerate() {
                if let Some((lx, ly)) = pos {
                    let i = usable[k];
                    let c = colour_of(&strats, &t.points[i].key.strategy);
                    // Text in a darker shade of the point's colour: tied to
                    // its point, readable on white.
                    let dark = RGBColor(c.0 / 2, c.1 / 2, c.2 / 2);
                    pa.draw(&Text::new(
                        labels[k].clone(),
                        (*lx, *ly),
                        text_at(12, HPos::Left, VPos::Top).color(&dark),
                    ))?;
                }
            }
        }};
    }
    let mut builder = ChartBuilder::on(&plot);
    builder
        .margin(10)
        .x_label_area_size(44)
        .y_label_area_size(72);
    if log {
        body!(builder.build_cartesian_2d((x0..x1).log_scale(), ylo..yhi)?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, ylo..yhi)?);
    }
    let mut rows: Vec<(LegendSwatch, String)> = strats
        .iter()
        .map(|s| (LegendSwatch::Fill(colour_of(&strats, s)), s.clone()))
        .collect();
    rows.extend(
        bs.iter()
            .map(|&b| (LegendSwatch::Marker(b), b.name().to_string())),
    );
    rows.push((LegendSwatch::Dashed(BLACK), "Pareto front".into()));
    legend(&key, "strategy / backend", &rows)
}

/// A compact tick label: 3 significant digits, no exponent for 0.001..1e5.
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Places each label (top-left corner, pixels) beside its point where it
/// overlaps no other label and no point and stays inside `bounds`; a label
/// with no free place is left out (`None`) rather than drawn over another.
pub fn place_labels(
    points: &[(i32, i32)],
    sizes: &[(u32, u32)],
    bounds: (i32, i32),
    gap: i32,
    lines: &[Vec<(i32, i32)>],
) -> Vec<Option<(i32, i32)>> {
    type R = (i32, i32, i32, i32);
    let overlaps = |a: &R, b: &R| a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
    let mut dots: Vec<R> = points
        .iter()
        .map(|&(x, y)| (x - 7, y - 7, x + 7, y + 7))
        .collect();
    // Lines (the Pareto front) are obstacles too: small boxes every few pixels.
    for line in lines {
        for w in line.windows(2) {
            let (a, b) = (w[0], w[1]);
            let len = ((b.0 - a.0).pow(2) as f64 + (b.1 - a.1).pow(2) as f64).sqrt();
            let steps = (len / 4.0).ceil().max(1.0) as i32;
            for k in 0..=steps {
                let x = a.0 + (b.0 - a.0) * k / steps;
                let y = a.1 + (b.1 - a.1) * k / steps;
                dots.push((x - 2, y - 2, x + 2, y + 2));
            }
        }
    }
    let mut taken: Vec<R> = Vec::new();
    points
        .iter()
        .zip(sizes)
        .map(|(&(x, y), &(w, h))| {
            let (w, h) = (w as i32, h as i32);
            let candidates = [
                (x + gap, y - h / 2),
                (x - gap - w, y - h / 2),
                (x - w / 2, y - gap - h),
                (x - w / 2, y + gap),
                (x + gap, y - gap - h),
                (x + gap, y + gap),
                (x - gap - w, y - gap - h),
                (x - gap - w, y + gap),
                (x + gap, y - 2 * h - gap),
                (x + gap, y + h + gap),
                (x - gap - w, y - 2 * h - gap),
                (x - gap - w, y + h + gap),
            ];
            let pick = candidates.into_iter().find(|&(lx, ly)| {
                let r = (lx, ly, lx + w, ly + h);
                lx >= 0
                    && ly >= 0
                    && r.2 <= bounds.0
                    && r.3 <= bounds.1
                    && !taken.iter().any(|t| overlaps(t, &r))
                    && !dots.iter().any(|t| overlaps(t, &r))
            });
            if let Some((lx, ly)) = pick {
                taken.push((lx, ly, lx + w, ly + h));
            }
            pick
        })
        .collect()
}

/// One radar per backend over the normalized metrics (1 = best of the set).
fn radar_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &VisualizationData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = &d.normalized_comparison;
    let title = "Normalized comparison (1 = best of the set; costs inverted)";
    if n.series.is_empty() || n.metrics.len() < 3 {
        return no_data(area, title, "no results");
    }
    let area = area.titled(title, font(20))?;
    let (w, _) = area.dim_in_pixel();
    let (plot, key) = area.split_horizontally(w.saturating_sub(170));
    let bs = backends(d);
    let strats = strategies(d);
    let panels = plot.split_evenly((1, bs.len().max(1)));
    let m = n.metrics.len();
    for (panel, &b) in panels.iter().zip(&bs) {
        let (pw, ph) = panel.dim_in_pixel();
        panel.draw(&Text::new(
            format!("backend: {}", b.name()),
            (pw as i32 / 2, 4),
            text_at(16, HPos::Center, VPos::Top),
        ))?;
        let cx = pw as i32 / 2;
        let cy = ph as i32 / 2 + 14;
        // Room for the axis names around the circle.
        let r = ((pw as f64 / 2.0 - 75.0).min(ph as f64 / 2.0 - 50.0)).max(20.0);
        let at = |k: usize, v: f64| {
            let a = -std::f64::consts::FRAC_PI_2 + k as f64 * std::f64::consts::TAU / m as f64;
            (cx + (r * v * a.cos()) as i32, cy + (r * v * a.sin()) as i32)
        };
        for ring in [0.25, 0.5, 0.75, 1.0] {
            let mut ps: Vec<(i32, i32)> = (0..m).map(|k| at(k, ring)).collect();
            ps.push(ps[0]);
            panel.draw(&PathElement::new(
                ps,
                RGBColor(200, 200, 200).stroke_width(1),
            ))?;
        }
        for k in 0..m {
            panel.draw(&PathElement::new(
                vec![(cx, cy), at(k, 1.0)],
                RGBColor(170, 170, 170),
            ))?;
            let (lx, ly) = at(k, 1.08);
            let h = if lx < cx - 5 {
                HPos::Right
            } else if lx > cx + 5 {
                HPos::Left
            } else {
                HPos::Center
            };
            let v = if ly < cy - 5 {
                VPos::Bottom
            } else if ly > cy + 5 {
                VPos::Top
            } else {
                VPos::Center
            };
            // Short names keep the radar large in narrow panels; the
            // title says costs are inverted.
            let name = match n.metrics[k].as_str() {
                "weight memory" => "weights".to_string(),
                "peak memory" => "peak mem.".to_string(),
                "accuracy per GB" => "acc./GB".to_string(),
                m => m.to_string(),
            };
            panel.draw(&Text::new(name, (lx, ly), text_at(12, h, v)))?;
        }
        for s in n.series.iter().filter(|s| s.key.backend == b) {
            let c = colour_of(&strats, &s.key.strategy);
            let mut ps: Vec<(i32, i32)> = s
                .values
                .iter()
                .enumerate()
                .map(|(k, &v)| at(k, v.clamp(0.0, 1.0)))
                .collect();
            if let Some(&p0) = ps.first() {
                ps.push(p0);
            }
            panel.draw(&Polygon::new(ps.clone(), c.mix(0.08)))?;
            panel.draw(&PathElement::new(ps, c.stroke_width(2)))?;
        }
    }
    let rows: Vec<(LegendSwatch, String)> = strats
        .iter()
        .map(|s| (LegendSwatch::Line(colour_of(&strats, s)), s.clone()))
        .collect();
    legend(&key, "strategy", &rows)
}

const TIMELINE_COLS: u32 = 3;

fn timeline_pairs(d: &VisualizationData) -> Vec<(PairKey, &TimelineSeries)> {
    let mut v = Vec::new();
    for p in &d.tradeoff_analysis.points {
        if let Some(s) = d
            .memory_timeline
            .get(p.key.backend.name())
            .and_then(|m| m.get(&p.key.strategy))
        {
            if !s.timestamps.is_empty() {
                v.push((p.key.clone(), s));
            }
        }
    }
    v
}

/// Phase names in first-seen order over every timeline.
fn phases(pairs: &[(PairKey, &TimelineSeries)]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for (_, s) in pairs {
        for p in &s.phases {
            if !v.contains(p) {
                v.push(p.clone());
            }
        }
    }
    v
}

/// Light band colours for phases (tints of the palette, readable under a line).
fn phase_colour(i: usize) -> RGBAColor {
    PALETTE[i % PALETTE.len()].mix(0.16)
}

/// Memory the backend holds over each pair's life, phases as bands.
fn timeline_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &VisualizationData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let title = "Memory timeline per strategy and backend (phases shaded)";
    let pairs = timeline_pairs(d);
    if pairs.is_empty() {
        return no_data(area, title, "no memory samples in this run");
    }
    let names = phases(&pairs);
    let area = area.titled(title, font(20))?;
    // The phase legend is one row on top, outside every panel.
    let (top, grid) = area.split_vertically(36);
    let mut x = 10;
    for (i, p) in names.iter().enumerate() {
        top.draw(&Rectangle::new(
            [(x, 8), (x + 18, 24)],
            phase_colour(i).filled(),
        ))?;
        top.draw(&Rectangle::new([(x, 8), (x + 18, 24)], BLACK.mix(0.3)))?;
        top.draw(&Text::new(
            p.clone(),
            (x + 24, 16),
            text_at(13, HPos::Left, VPos::Center),
        ))?;
        x += 34 + top.estimate_text_size(p, &font(13))?.0 as i32 + 8;
    }
    let strats = strategies(d);
    let rows = (pairs.len() as u32).div_ceil(TIMELINE_COLS) as usize;
    let panels = grid.split_evenly((rows, TIMELINE_COLS as usize));
    for ((key, s), panel) in pairs.iter().zip(&panels) {
        let n = s.timestamps.len().min(s.memory_values.len());
        let tmax = s.timestamps[..n]
            .iter()
            .copied()
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let ymax = s.memory_values[..n]
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let (div, unit) = byte_unit(ymax);
        let (tdiv, tunit) = time_unit(tmax);
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{} on {}", key.strategy, key.backend.name()),
                font(14),
            )
            .margin(6)
            .x_label_area_size(30)
            .y_label_area_size(54)
            .build_cartesian_2d(0.0..tmax / tdiv * 1.02, 0.0..ymax / div * 1.12)?;
        chart
            .configure_mesh()
            .x_desc(format!("time ({tunit})"))
            .y_desc(unit)
            .x_labels(5)
            .y_labels(4)
            .x_label_style(font(11))
            .y_label_style(font(11))
            .axis_desc_style(font(11))
            .x_label_formatter(&|v: &f64| short_number(*v))
            .y_label_formatter(&|v: &f64| short_number(*v))
            .draw()?;
        // A band runs from a phase's first sample to the next phase's first.
        let mut start = 0;
        for i in 1..=n {
            if i == n || s.phases.get(i) != s.phases.get(start) {
                let t0 = s.timestamps[start] / tdiv;
                let t1 = if i < n { s.timestamps[i] } else { tmax * 1.02 } / tdiv;
                let pi = names
                    .iter()
                    .position(|p| Some(p) == s.phases.get(start))
                    .unwrap_or(0);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(t0, 0.0), (t1, ymax / div * 1.12)],
                    phase_colour(pi).filled(),
                )))?;
                start = i;
            }
        }
        let c = colour_of(&strats, &key.strategy);
        chart.draw_series(LineSeries::new(
            (0..n).map(|i| (s.timestamps[i] / tdiv, s.memory_values[i] as f64 / div)),
            c.stroke_width(2),
        ))?;
        chart.draw_series((0..n).map(|i| {
            Circle::new(
                (s.timestamps[i] / tdiv, s.memory_values[i] as f64 / div),
                2,
                c.filled(),
            )
        }))?;
    }
    Ok(())
}

/// A viridis-like ramp (perceptually ordered, colour-blind safe): 0..1.
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Layers (rows) x strategies (columns), colour = log10 of the weight NMSE.
fn heatmap_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &VisualizationData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let l = &d.layer_sensitivity;
    let title = "Per-layer sensitivity: weight NMSE (log10), layers x strategies";
    let values: Vec<f64> = l
        .weight_nmse
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| *v > 0.0)
        .collect();
    if l.layers.is_empty() || l.strategies.is_empty() || values.is_empty() {
        return no_data(area, title, "no per-layer sensitivity in this run");
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min).log10();
    let hi = values
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10();
    let span = (hi - lo).max(1e-9);
    let area = area.titled(title, font(20))?;
    let (w, h) = area.dim_in_pixel();
    let label_w = l
        .layers
        .iter()
        .map(|n| {
            area.estimate_text_size(n, &font(12))
                .map(|s| s.0)
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0) as i32
        + 16;
    let bar_w = 120;
    let top = 40;
    let cols = l.strategies.len() as i32;
    let rows = l.layers.len() as i32;
    let cell_w = ((w as i32 - label_w - bar_w - 20) / cols).max(8);
    let cell_h = ((h as i32 - top - 10) / rows).clamp(4, 30);
    for (j, s) in l.strategies.iter().enumerate() {
        let x = label_w + j as i32 * cell_w + cell_w / 2;
        area.draw(&Text::new(
            s.clone(),
            (x, top - 6),
            text_at(13, HPos::Center, VPos::Bottom),
        ))?;
    }
    for (i, name) in l.layers.iter().enumerate() {
        let y = top + i as i32 * cell_h;
        area.draw(&Text::new(
            name.clone(),
            (label_w - 8, y + cell_h / 2),
            text_at(12, HPos::Right, VPos::Center),
        ))?;
        for j in 0..cols as usize {
            let x = label_w + j as i32 * cell_w;
            let rect = [(x, y), (x + cell_w - 1, y + cell_h - 1)];
            match l
                .weight_nmse
                .get(i)
                .and_then(|r| r.get(j))
                .copied()
                .flatten()
            {
                Some(v) if v > 0.0 => area.draw(&Rectangle::new(
                    rect,
                    viridis((v.log10() - lo) / span).filled(),
                ))?,
                // Not measured: hatched grey, never a colour of the scale.
                _ => area.draw(&Rectangle::new(rect, RGBColor(225, 225, 225).filled()))?,
            }
        }
    }
    // Colour bar with its scale.
    let bx = w as i32 - bar_w + 10;
    let bh = (rows * cell_h).max(100);
    for k in 0..bh {
        let t = 1.0 - k as f64 / bh as f64;
        area.draw(&Rectangle::new(
            [(bx, top + k), (bx + 18, top + k + 1)],
            viridis(t).filled(),
        ))?;
    }
    for (t, v) in [(0.0, hi), (0.5, (lo + hi) / 2.0), (1.0, lo)] {
        let y = top + (t * bh as f64) as i32;
        area.draw(&Text::new(
            format!("1e{v:.1}"),
            (bx + 24, y),
            text_at(12, HPos::Left, VPos::Center),
        ))?;
    }
    area.draw(&Text::new(
        "weight NMSE".to_string(),
        (bx, top - 6),
        text_at(12, HPos::Left, VPos::Bottom),
    ))?;
    Ok(())
}

/// Every chart as `(kind, file name, PNG bytes)`.
pub fn all_png(data: &VisualizationData) -> Result<Vec<(ChartKind, String, Vec<u8>)>, ReportError> {
    ChartKind::ALL
        .iter()
        .map(|&k| Ok((k, format!("{}.png", k.name()), render_png(k, data)?)))
        .collect()
}

/// Every chart as `(kind, file name, SVG text)`.
pub fn all_svg(data: &VisualizationData) -> Result<Vec<(ChartKind, String, String)>, ReportError> {
    ChartKind::ALL
        .iter()
        .map(|&k| Ok((k, format!("{}.svg", k.name()), render_svg(k, data)?)))
        .collect()
}
