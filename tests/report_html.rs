//! The HTML report: self-contained (no URL at all), every chart inlined,
//! the table's rows equal to the results; and the check a person would do,
//! in headless Chromium: a 1280-px screenshot, no console message, no
//! request leaving the file, every chart with a non-zero rendered size.
//!
//! The browser test is skipped with one line where `chromium` is not
//! installed (`QUANTSCOPE_REQUIRE_CHROMIUM=1` makes that a failure, as in CI).

mod report_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use quantscope::report::charts::ChartKind;
use quantscope::report::compare::compare;
use quantscope::report::html::{comparison_report, run_report};

/// Charts in the report of one run: every kind (the heat map in the
/// per-layer view).
const CHARTS: usize = ChartKind::ALL.len();

#[test]
fn the_report_is_self_contained() {
    let run = report_support::rich_run(21, "host-a");
    let html = run_report(&run).unwrap();
    for bad in [
        "http:", "https:", "//cdn", "<link", "src=", "@import", "url(",
    ] {
        assert!(!html.contains(bad), "report contains '{bad}'");
    }
    assert_eq!(html.matches("<figure class=\"chart\"").count(), CHARTS);
    assert_eq!(html.matches("<svg").count(), CHARTS);
    let table = &html[html.find("<table id=\"results\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(table.matches("<tr>").count(), run.results.len() + 1);
    for s in [
        "Recommendation",
        "Hardware",
        "Per-layer sensitivity",
        "host-a",
        "encoder.layer.3.ffn.up",
    ] {
        assert!(html.contains(s), "report lacks '{s}'");
    }
    let cmp_runs = vec![
        ("a".to_string(), run.clone()),
        ("b".to_string(), report_support::rich_run(22, "host-b")),
    ];
    let c = comparison_report(&cmp_runs, &compare(&cmp_runs)).unwrap();
    assert!(!c.contains("http:") && !c.contains("https:"));
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUANTSCOPE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| {
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {n}"))
                .output()
                .ok()?;
            let p = String::from_utf8(o.stdout).ok()?.trim().to_string();
            (o.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
        })
}

/// Runs headless Chromium on `page` with the network unreachable; returns
/// (stdout, stderr).
fn headless(chrome: &Path, profile: &Path, page: &Path, extra: &[String]) -> (String, String) {
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(chrome)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            // Any request that tries to leave the file fails, and its error
            // reaches the console, which the test reads.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()));
    let o = cmd.output().expect("running chromium");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "chromium failed ({:?}): {err}",
        o.status
    );
    (out, err)
}

fn console_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("QUANTSCOPE_REQUIRE_CHROMIUM").is_none(),
            "QUANTSCOPE_REQUIRE_CHROMIUM is set but no chromium was found"
        );
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = report_support::rich_run(31, "host-a");
    let page = dir.path().join("report.html");
    std::fs::write(&page, run_report(&run).unwrap()).unwrap();

    let (dom, err) = headless(
        &chrome,
        &dir.path().join("p1"),
        &page,
        &["--dump-dom".into()],
    );
    assert!(
        console_lines(&err).is_empty(),
        "console: {:?}",
        console_lines(&err)
    );
    let start = dom
        .find("<pre id=\"qs-facts\" hidden=\"\">")
        .expect("facts element in the DOM");
    let facts = &dom[start..];
    let facts = &facts[facts.find('>').unwrap() + 1..facts.find("</pre>").unwrap()];
    let facts = facts
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value =
        serde_json::from_str(&facts).unwrap_or_else(|e| panic!("{e}: {facts}"));
    assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(
        v["table_rows"].as_u64().unwrap() as usize,
        run.results.len(),
        "{v}"
    );
    assert_eq!(
        v["expected_rows"].as_u64().unwrap() as usize,
        run.results.len(),
        "{v}"
    );
    let charts = v["charts"].as_array().unwrap();
    assert_eq!(charts.len(), CHARTS, "{v}");
    for c in charts {
        assert!(
            c["width"].as_u64().unwrap() > 100 && c["height"].as_u64().unwrap() > 100,
            "{c}"
        );
    }

    let shot = std::env::var_os("QUANTSCOPE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("report.png"));
    let (_, err) = headless(
        &chrome,
        &dir.path().join("p2"),
        &page,
        &[
            "--window-size=1280,2000".into(),
            format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(
        console_lines(&err).is_empty(),
        "console: {:?}",
        console_lines(&err)
    );
    let img = image::open(&shot).unwrap();
    assert_eq!(img.width(), 1280);
    // Not a blank page.
    let rgb = img.to_rgb8();
    let inked = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(inked > 10_000, "screenshot nearly blank: {inked} pixels");
}
