//! Every chart kind drawn to PNG and SVG from a synthetic run: non-empty,
//! the expected pixel size, not a blank canvas, text present in the SVG.

mod report_support;

use quantscope::report::charts::{place_labels, render_png, render_svg, ChartKind};
use quantscope::report::data::VisualizationData;

fn data() -> VisualizationData {
    VisualizationData::from_run(&report_support::rich_run(7, "host-a"))
}

#[test]
fn every_chart_renders_to_png_at_its_size() {
    let d = data();
    let out = std::env::var_os("QUANTSCOPE_CHART_DIR");
    for kind in ChartKind::ALL {
        let png = render_png(kind, &d).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), kind.size(&d), "{kind:?}");
        // Not blank: a fair share of pixels are not white.
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let total = (img.width() * img.height()) as usize;
        assert!(
            inked * 50 > total,
            "{kind:?}: only {inked} of {total} pixels drawn"
        );
        if let Some(dir) = &out {
            let p = std::path::Path::new(dir).join(format!("{}.png", kind.name()));
            quantscope::io::write_atomic(&p, &png).unwrap();
        }
    }
}

#[test]
fn every_chart_renders_to_svg_with_text() {
    let d = data();
    for kind in ChartKind::ALL {
        let svg = render_svg(kind, &d).unwrap();
        let (w, h) = kind.size(&d);
        assert!(svg.contains(&format!("width=\"{w}\"")), "{kind:?}");
        assert!(svg.contains(&format!("height=\"{h}\"")), "{kind:?}");
        assert!(svg.contains("<text"), "{kind:?} has no text");
    }
    // Labels name the strategies.
    let svg = render_svg(ChartKind::SpeedAccuracy, &d).unwrap();
    for s in ["gptq-int4", "Pareto front", "accuracy retention"] {
        assert!(svg.contains(s), "speed/accuracy chart lacks '{s}'");
    }
}

#[test]
fn a_run_with_nothing_in_it_still_draws_every_chart() {
    let mut run = report_support::rich_run(3, "host-a");
    run.results.clear();
    run.layers.clear();
    let d = VisualizationData::from_run(&run);
    for kind in ChartKind::ALL {
        let png = render_png(kind, &d).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{kind:?}");
    }
}

#[test]
fn labels_never_overlap_each_other() {
    // Twelve points crowded into a corner.
    let pts: Vec<(i32, i32)> = (0..12)
        .map(|i| (100 + (i % 3) * 6, 100 + (i / 3) * 5))
        .collect();
    let sizes = vec![(60u32, 14u32); 12];
    // A line through the crowd is an obstacle too.
    let line = vec![(0, 130), (800, 130)];
    let placed = place_labels(&pts, &sizes, (800, 600), 9, &[line]);
    let rects: Vec<(i32, i32, i32, i32)> = placed
        .iter()
        .flatten()
        .map(|&(x, y)| (x, y, x + 60, y + 14))
        .collect();
    assert!(rects.len() >= 6, "only {} of 12 placed", rects.len());
    for (i, a) in rects.iter().enumerate() {
        assert!(a.0 >= 0 && a.1 >= 0 && a.2 <= 800 && a.3 <= 600);
        assert!(a.3 <= 128 || a.1 >= 132, "{a:?} crosses the line");
        for b in &rects[i + 1..] {
            let overlap = a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
            assert!(!overlap, "{a:?} overlaps {b:?}");
        }
    }
}
