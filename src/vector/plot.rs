//! PNG plots of the study (plotters, bitmap backend).
//!
//! Text is drawn in the font embedded in the binary ([`crate::report::font`]),
//! so no system font or fontconfig is needed. Should text still fail, each
//! plot is drawn again without any text, and the run records a warning
//! instead of failing. Images are drawn to a temporary file of the run's
//! [`Transaction`] and appear with the run's other files, or not at all.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::study::{Approach, ApproachResult, StudyRun};
use super::VectorError;
use crate::atomic::{AtomicError, Transaction};

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error + 'static>>;

const HIST_BINS: usize = 120;
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// How an image came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drawn {
    /// With its text.
    WithText,
    /// Without text: no usable font on this machine (the error's text).
    WithoutText(String),
}

/// Draws `path` (a `.png`) of `size` pixels with `draw`, first with text, then,
/// if that fails, without text, into a temporary file of `tx` (the file
/// appears when `tx` is committed).
pub fn draw_png(
    tx: &mut Transaction,
    path: &Path,
    size: (u32, u32),
    draw: &dyn Fn(&Area<'_>, bool) -> DrawResult,
) -> Result<Drawn, VectorError> {
    let attempt = |tmp: &Path, text: bool| -> Result<(), String> {
        if text {
            crate::report::font::register()?;
        }
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root, text).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    };
    match tx.render(path, |tmp| attempt(tmp, true)) {
        Ok(()) => Ok(Drawn::WithText),
        Err(AtomicError::Render { reason: first, .. }) => {
            match tx.render(path, |tmp| attempt(tmp, false)) {
                Ok(()) => Ok(Drawn::WithoutText(first)),
                Err(second) => Err(VectorError::Plot {
                    path: path.display().to_string(),
                    message: format!("{first}; without text: {second}"),
                }),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Histogram of `values` over `[lo, hi]` in `bins` bins (values outside are dropped).
pub fn histogram(values: &[f32], lo: f64, hi: f64, bins: usize) -> Vec<u64> {
    use rayon::prelude::*;
    let width = (hi - lo) / bins as f64;
    if width.is_nan() || width <= 0.0 {
        return vec![values.len() as u64; 1];
    }
    values
        .par_chunks(1 << 16)
        .map(|c| {
            let mut h = vec![0u64; bins];
            for &v in c {
                let b = ((v as f64 - lo) / width).floor();
                if b >= 0.0 && (b as usize) < bins {
                    h[b as usize] += 1;
                } else if v as f64 == hi {
                    h[bins - 1] += 1;
                }
            }
            h
        })
        .reduce(
            || vec![0u64; bins],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

fn x_range(min: f32, max: f32, levels: &[f32]) -> (f64, f64) {
    let lo = levels.iter().fold(min, |a, &b| a.min(b)) as f64;
    let hi = levels.iter().fold(max, |a, &b| a.max(b)) as f64;
    let pad = ((hi - lo) * 0.03).max(1e-3);
    (lo - pad, hi + pad)
}

/// Histogram of the vector with the approach's levels as vertical lines; for
/// EasyQuant, the bins beyond the outlier bounds in red and the bounds dashed.
pub fn plot_histogram(
    tx: &mut Transaction,
    path: &Path,
    values: &[f32],
    (min, max): (f32, f32),
    result: &ApproachResult,
    title: &str,
) -> Result<Drawn, VectorError> {
    let (lo, hi) = x_range(min, max, &result.levels);
    let counts = histogram(values, lo, hi, HIST_BINS);
    let width = (hi - lo) / HIST_BINS as f64;
    let ymax = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.08;
    let bounds = result.outlier_bounds;
    draw_png(tx, path, (1000, 600), &|root, text| {
        let mut b = ChartBuilder::on(root);
        b.margin(12);
        if text {
            b.caption(title, ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(70);
        } else {
            b.x_label_area_size(4).y_label_area_size(4);
        }
        let mut chart = b.build_cartesian_2d(lo..hi, 0.0..ymax)?;
        let mut mesh = chart.configure_mesh();
        let count = |y: &f64| format!("{y:.0}");
        if text {
            mesh.x_desc("value")
                .y_desc("count")
                .y_label_formatter(&count);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let is_out = |x0: f64, x1: f64| match bounds {
            Some((a, b)) => x1 <= a || x0 >= b,
            None => false,
        };
        chart.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x0 = lo + i as f64 * width;
                    let x1 = x0 + width;
                    let out = is_out(x0, x1);
                    // Outlier bins are few values: give them a visible minimum height.
                    let h = if out {
                        (c as f64).max(0.03 * ymax)
                    } else {
                        c as f64
                    };
                    let color = if out {
                        RED.filled()
                    } else {
                        RGBColor(150, 170, 200).filled()
                    };
                    Rectangle::new([(x0, 0.0), (x1, h)], color)
                }),
        )?;
        for &l in &result.levels {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(l as f64, 0.0), (l as f64, ymax)],
                BLUE.stroke_width(2),
            )))?;
        }
        if let Some((a, b)) = bounds {
            for x in [a, b] {
                if x > lo && x < hi {
                    chart.draw_series(DashedLineSeries::new(
                        vec![(x, 0.0), (x, ymax)],
                        8,
                        6,
                        RED.stroke_width(2),
                    ))?;
                }
            }
        }
        Ok(())
    })
}

/// Original and quantized values by index (vectors of at most 100 values),
/// levels as horizontal lines, EasyQuant's kept outliers circled in red.
pub fn plot_original_vs_quantized(
    tx: &mut Transaction,
    path: &Path,
    values: &[f32],
    result: &ApproachResult,
    title: &str,
) -> Result<Drawn, VectorError> {
    let q = result.quantized.clone().unwrap_or_default();
    let all = values.iter().chain(&q).chain(&result.levels);
    let (mn, mx) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
        (a.min(v), b.max(v))
    });
    let pad = ((mx - mn) as f64 * 0.08).max(0.1);
    let (ylo, yhi) = (mn as f64 - pad, mx as f64 + pad);
    let n = values.len();
    let bounds = result.outlier_bounds;
    draw_png(tx, path, (1000, 600), &|root, text| {
        let mut b = ChartBuilder::on(root);
        b.margin(12);
        if text {
            b.caption(title, ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(60);
        } else {
            b.x_label_area_size(4).y_label_area_size(4);
        }
        let mut chart = b.build_cartesian_2d(-0.5..(n as f64 - 0.5), ylo..yhi)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("index").y_desc("value");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        for &l in &result.levels {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(-0.5, l as f64), (n as f64 - 0.5, l as f64)],
                RGBColor(200, 200, 200).stroke_width(1),
            )))?;
        }
        let orig = chart.draw_series(LineSeries::new(
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64, v as f64)),
            BLACK.stroke_width(1),
        ))?;
        if text {
            orig.label("original")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        chart.draw_series(
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| Circle::new((i as f64, v as f64), 4, BLACK.filled())),
        )?;
        let quant = chart.draw_series(q.iter().enumerate().map(|(i, &v)| {
            Rectangle::new(
                [
                    (i as f64 - 0.18, v as f64 - 0.01 * (yhi - ylo)),
                    (i as f64 + 0.18, v as f64 + 0.01 * (yhi - ylo)),
                ],
                BLUE.filled(),
            )
        }))?;
        if text {
            quant
                .label("quantized")
                .legend(|(x, y)| Rectangle::new([(x, y - 3), (x + 20, y + 3)], BLUE.filled()));
        }
        if let Some((a, b)) = bounds {
            let out = chart.draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| (v as f64) < a || (v as f64) > b)
                    .map(|(i, &v)| Circle::new((i as f64, v as f64), 9, RED.stroke_width(2))),
            )?;
            if text {
                out.label("kept exact (outlier)")
                    .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.stroke_width(2)));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// Writes the per-approach plots of the first backend's run into `dir`:
/// `histogram_<approach>_<size>.png` for every approach, and
/// `original_vs_quantized_<approach>_<size>.png` for vectors of at most 100
/// values. Returns the files written and the warnings.
pub fn plot_run(
    tx: &mut Transaction,
    dir: &Path,
    run: &StudyRun,
    values: &[f32],
) -> Result<(Vec<PathBuf>, Vec<String>), VectorError> {
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    let Some(first) = run.runs.first() else {
        return Ok((files, warnings));
    };
    let size = run.config.spec.size.label();
    let range = (run.vector.min, run.vector.max);
    let mut note = |d: Drawn, p: &Path| {
        if let Drawn::WithoutText(e) = d {
            warnings.push(format!("{}: drawn without text ({e})", p.display()));
        }
    };
    for r in &first.results {
        let title = format!(
            "{} ({} bits, N = {}, L2/N = {:.4e}){}",
            r.approach.title(),
            run.config.bits,
            run.vector.n,
            r.l2_over_n,
            r.outliers
                .map(|o| format!(", {o} outliers kept"))
                .unwrap_or_default()
        );
        let p = dir.join(format!("histogram_{}_{size}.png", r.approach.name()));
        note(plot_histogram(tx, &p, values, range, r, &title)?, &p);
        files.push(p);
        if r.quantized.is_some() {
            let p = dir.join(format!(
                "original_vs_quantized_{}_{size}.png",
                r.approach.name()
            ));
            note(plot_original_vs_quantized(tx, &p, values, r, &title)?, &p);
            files.push(p);
        }
    }
    Ok((files, warnings))
}

/// One bar of the summary: a configuration's figure for an approach.
struct Bar {
    config: String,
    approach: Approach,
    error: f64,
    latency: f64,
}

/// The `--all-configs` summary: for each vector size, a panel of the error
/// (`‖v − q‖₂ / N`) and a panel of the latency (fit + quantize, log scale) per
/// approach, one bar per backend and thread setting.
pub fn plot_summary(
    tx: &mut Transaction,
    path: &Path,
    runs: &[StudyRun],
) -> Result<Drawn, VectorError> {
    let mut sizes: Vec<String> = Vec::new();
    let mut bars: Vec<(String, Bar)> = Vec::new();
    for run in runs {
        let size = run.config.spec.size.label();
        if !sizes.contains(&size) {
            sizes.push(size.clone());
        }
        for b in &run.runs {
            let config = format!(
                "{} {}",
                b.backend.name(),
                if b.threads > 1 {
                    format!("{} threads", b.threads)
                } else {
                    "1 thread".into()
                }
            );
            for r in &b.results {
                bars.push((
                    size.clone(),
                    Bar {
                        config: config.clone(),
                        approach: r.approach,
                        error: r.l2_over_n,
                        latency: r.latency_s.max(1e-6),
                    },
                ));
            }
        }
    }
    let mut configs: Vec<String> = Vec::new();
    for (_, b) in &bars {
        if !configs.contains(&b.config) {
            configs.push(b.config.clone());
        }
    }
    let approaches: Vec<Approach> = Approach::ALL
        .into_iter()
        .filter(|a| bars.iter().any(|(_, b)| b.approach == *a))
        .collect();
    let cols = sizes.len().max(1) as u32;
    draw_png(tx, path, (700 * cols, 900), &|root, text| {
        let root = if text {
            root.titled(
                "Vector quantization: error and latency per approach, by backend and size",
                ("sans-serif", 24),
            )?
        } else {
            root.clone()
        };
        let panels = root.split_evenly((2, sizes.len().max(1)));
        for (si, size) in sizes.iter().enumerate() {
            let here: Vec<&Bar> = bars
                .iter()
                .filter(|(s, _)| s == size)
                .map(|(_, b)| b)
                .collect();
            for (row, metric) in ["error", "latency"].into_iter().enumerate() {
                let area = &panels[row * sizes.len() + si];
                let value = |b: &Bar| if row == 0 { b.error } else { b.latency };
                let vmax = here
                    .iter()
                    .map(|b| value(b))
                    .fold(0.0f64, f64::max)
                    .max(1e-12);
                let vmin = here
                    .iter()
                    .map(|b| value(b))
                    .fold(f64::INFINITY, f64::min)
                    .min(vmax);
                let g = approaches.len() as f64;
                let slot = 0.8 / configs.len().max(1) as f64;
                let name = |x: &f64| -> String {
                    let i = x.floor();
                    if (x - i - 0.5).abs() < 1e-6 && (i as usize) < approaches.len() {
                        approaches[i as usize].name().to_string()
                    } else {
                        String::new()
                    }
                };
                let title = if row == 0 {
                    format!("{size}: L2 norm / N")
                } else {
                    format!("{size}: latency, fit + quantize (s, log)")
                };
                let mut b = ChartBuilder::on(area);
                b.margin(10);
                if text {
                    b.caption(&title, ("sans-serif", 18))
                        .x_label_area_size(35)
                        .y_label_area_size(75);
                } else {
                    b.x_label_area_size(4).y_label_area_size(4);
                }
                let rect = |i: usize, c: usize, v: f64, y0: f64| {
                    let x0 = i as f64 + 0.1 + c as f64 * slot;
                    Rectangle::new(
                        [(x0, y0), (x0 + slot * 0.9, v)],
                        PALETTE[c % PALETTE.len()].filled(),
                    )
                };
                let place = |bar: &Bar| {
                    let i = approaches
                        .iter()
                        .position(|a| *a == bar.approach)
                        .unwrap_or(0);
                    let c = configs.iter().position(|c| *c == bar.config).unwrap_or(0);
                    (i, c)
                };
                if metric == "error" {
                    let mut chart = b.build_cartesian_2d(0.0..g, 0.0..vmax * 1.1)?;
                    let mut mesh = chart.configure_mesh();
                    let figure = |y: &f64| format!("{y:.2e}");
                    mesh.y_label_formatter(&figure);
                    mesh.disable_x_mesh()
                        .x_labels(2 * approaches.len() + 1)
                        .x_label_formatter(&name);
                    if !text {
                        mesh.x_labels(0).y_labels(0);
                    }
                    mesh.draw()?;
                    for (c, cfg) in configs.iter().enumerate() {
                        let s = chart.draw_series(here.iter().filter(|b| b.config == *cfg).map(
                            |bar| {
                                let (i, _) = place(bar);
                                rect(i, c, value(bar), 0.0)
                            },
                        ))?;
                        if text {
                            let color = PALETTE[c % PALETTE.len()];
                            s.label(cfg.as_str()).legend(move |(x, y)| {
                                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                            });
                        }
                    }
                    if text {
                        chart
                            .configure_series_labels()
                            .position(SeriesLabelPosition::UpperRight)
                            .background_style(WHITE.mix(0.85))
                            .border_style(BLACK)
                            .draw()?;
                    }
                } else {
                    let lo = vmin / 2.0;
                    let mut chart = b.build_cartesian_2d(0.0..g, (lo..vmax * 2.0).log_scale())?;
                    let mut mesh = chart.configure_mesh();
                    let seconds = |y: &f64| format!("{y:.1e}");
                    mesh.y_label_formatter(&seconds);
                    mesh.disable_x_mesh()
                        .x_labels(2 * approaches.len() + 1)
                        .x_label_formatter(&name);
                    if !text {
                        mesh.x_labels(0).y_labels(0);
                    }
                    mesh.draw()?;
                    chart.draw_series(here.iter().map(|bar| {
                        let (i, c) = place(bar);
                        rect(i, c, value(bar), lo)
                    }))?;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_font_falls_back_to_no_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let mut tx = Transaction::new();
        let drawn = draw_png(&mut tx, &p, (64, 48), &|root, text| {
            if text {
                return Err("no font".into());
            }
            root.draw(&Rectangle::new([(2, 2), (20, 20)], RED.filled()))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(drawn, Drawn::WithoutText("no font".into()));
        assert!(!p.exists(), "visible before the commit");
        tx.commit().unwrap();
        assert!(std::fs::read(&p).unwrap().starts_with(b"\x89PNG"));
        // Nothing else left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn histogram_counts_every_value_in_range() {
        let v: Vec<f32> = (0..1000).map(|i| i as f32 / 999.0).collect();
        let h = histogram(&v, 0.0, 1.0, 10);
        assert_eq!(h.iter().sum::<u64>(), 1000);
    }
}
