//! The HTML report: one self-contained file — charts inlined as SVG, CSS and
//! a few lines of script inline, no URL of any kind — so it opens anywhere,
//! offline, and can be mailed or archived as one file.
//!
//! The script sorts the tables (click a header) and, for the browser check,
//! writes what a person would see into `<pre id="qs-facts">` as JSON: every
//! chart's rendered size, the results table's row count, the script errors.

use std::fmt::Write as _;
use std::path::Path;

use super::charts::{render_svg, ChartKind};
use super::compare::Comparison;
use super::data::VisualizationData;
use super::ReportError;
use crate::analyze::schema::AnalysisRun;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
body{font-family:"DejaVu Sans",Verdana,sans-serif;margin:0 auto;max-width:1240px;padding:0 20px 40px;color:#222;background:#fff}
h1{font-size:24px;margin:18px 0 4px}h2{font-size:19px;margin:26px 0 8px;border-bottom:1px solid #ccc;padding-bottom:4px}
p.meta{color:#555;margin:2px 0 10px;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f3f7;cursor:pointer;user-select:none}th.l,td.l{text-align:left}
tr:nth-child(even) td{background:#fafbfc}
th.sorted-asc::after{content:" \25B2"}th.sorted-desc::after{content:" \25BC"}
.rec{background:#eef6ee;border:1px solid #9c9;padding:8px 14px;border-radius:4px}
.warn{background:#fff6e0;border:1px solid #e0b050;padding:6px 14px;border-radius:4px}
.bad{color:#a33}.scroll{overflow-x:auto}
figure.chart{margin:12px 0}figure.chart svg{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555}
"#;

const SCRIPT_HEAD: &str = r#"window.qsErrors=[];window.addEventListener('error',function(e){window.qsErrors.push(String(e.message))});"#;

const SCRIPT_TAIL: &str = r#"
(function(){
function key(td){var v=td.getAttribute('data-v');if(v!==null&&v!==''&&!isNaN(+v))return +v;return td.textContent.trim().toLowerCase();}
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('thead th').forEach(function(th,i){
  th.addEventListener('click',function(){
   var asc=!th.classList.contains('sorted-asc');
   t.querySelectorAll('thead th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc')});
   th.classList.add(asc?'sorted-asc':'sorted-desc');
   var body=t.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
   rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);if(x<y)return asc?-1:1;if(x>y)return asc?1:-1;return 0;});
   rows.forEach(function(r){body.appendChild(r)});
  });
 });
});
var charts=[];document.querySelectorAll('figure.chart').forEach(function(f){var s=f.querySelector('svg');var r=s?s.getBoundingClientRect():{width:0,height:0};charts.push({id:f.id,width:Math.round(r.width),height:Math.round(r.height)});});
var t=document.getElementById('results');
var facts={charts:charts,table_rows:t?t.tBodies[0].rows.length:-1,expected_rows:t?+t.getAttribute('data-rows'):-1,errors:window.qsErrors};
var pre=document.getElementById('qs-facts');if(pre)pre.textContent=JSON.stringify(facts);
})();
"#;

/// An SVG document ready to inline: no XML declaration, no namespace URL
/// (HTML parsers put `<svg>` in the SVG namespace themselves) and a viewBox
/// so it scales down with the page.
fn inline_svg(svg: &str, (w, h): (u32, u32)) -> String {
    let body = match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    };
    body.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
        .replacen(
            "<svg",
            &format!("<svg viewBox=\"0 0 {w} {h}\" role=\"img\""),
            1,
        )
}

fn figure(
    kind: ChartKind,
    d: &VisualizationData,
    id_prefix: &str,
    caption: &str,
) -> Result<String, ReportError> {
    let svg = render_svg(kind, d)?;
    Ok(format!(
        "<figure class=\"chart\" id=\"{id_prefix}{}\">{}<figcaption>{}</figcaption></figure>\n",
        kind.name(),
        inline_svg(&svg, kind.size(d)),
        esc(caption)
    ))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style><script>{SCRIPT_HEAD}</script></head>\n<body>\n{body}\
         <pre id=\"qs-facts\" hidden></pre>\n<script>{SCRIPT_TAIL}</script>\n</body></html>\n",
        esc(title)
    )
}

fn mb(b: u64) -> String {
    format!("{:.2}", b as f64 / 1e6)
}

fn td_num(v: f64, text: String) -> String {
    format!("<td data-v=\"{v}\">{text}</td>")
}

fn hardware_section(run: &AnalysisRun) -> String {
    let h = &run.hardware;
    let mut s = String::from("<h2>Hardware</h2>\n<table><tbody>\n");
    let row = |k: &str, v: String| {
        format!(
            "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>\n",
            esc(k),
            esc(&v)
        )
    };
    s += &row("host", h.host.clone().unwrap_or_else(|| "unknown".into()));
    s += &row("os", h.os.clone().unwrap_or_else(|| "unknown".into()));
    s += &row(
        "cpu",
        format!(
            "{}, {} logical cores, kernels: {} ({})",
            h.cpu.model,
            h.cpu.logical_cores,
            h.cpu.simd_path,
            h.cpu.features.join(" ")
        ),
    );
    s += &row(
        "ram",
        format!(
            "{:.1} GB total, {:.1} GB available",
            h.cpu.ram_total_bytes as f64 / 1e9,
            h.cpu.ram_available_bytes as f64 / 1e9
        ),
    );
    for g in &h.nvidia_gpus {
        s += &row(
            &format!("gpu {}", g.index),
            format!(
                "{}, {} memory{}",
                g.name,
                g.memory_total_bytes
                    .map(|m| format!("{:.1} GB", m as f64 / 1e9))
                    .unwrap_or_else(|| "unknown".into()),
                g.compute_capability
                    .map(|(a, b)| format!(", sm_{a}{b}"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(why) = &h.nvidia_unavailable {
        s += &row("nvidia", format!("none listed: {why}"));
    }
    for a in &h.wgpu_adapters {
        s += &row(
            "wgpu adapter",
            format!("{} ({}, {})", a.name, a.api, a.device_type),
        );
    }
    for b in &h.backends {
        let v = if b.available {
            format!(
                "available: {}",
                b.device.as_ref().map(|d| d.name.as_str()).unwrap_or("?")
            )
        } else {
            format!("unavailable: {}", b.reason.as_deref().unwrap_or("?"))
        };
        s += &row(&format!("backend {}", b.backend.name()), v);
    }
    s + "</tbody></table>\n"
}

fn recommendation_section(run: &AnalysisRun) -> String {
    let r = &run.recommendation;
    let mut s = format!(
        "<h2>Recommendation (priority: {})</h2>\n",
        esc(r.priority.name())
    );
    let pick = |label: &str, p: &crate::analyze::schema::Pick| {
        let mut o = format!(
            "<div class=\"rec\"><b>{}: {} on {}</b> — score {:.3}, accuracy retention {:.5}, {} MB, {:.3} ms per input<ul>",
            esc(label),
            esc(&p.strategy),
            esc(p.backend.name()),
            p.score,
            p.accuracy,
            mb(p.memory_bytes),
            p.inference_time_s * 1e3
        );
        for reason in &p.reasons {
            let _ = write!(o, "<li>{}</li>", esc(reason));
        }
        o + "</ul></div>\n"
    };
    match &r.recommended {
        Some(p) => s += &pick("Recommended", p),
        None => {
            let _ = writeln!(
                s,
                "<div class=\"warn\">No pair meets the constraints: {}</div>",
                esc(r.binding_constraint.as_deref().unwrap_or("no results"))
            );
        }
    }
    if let Some(p) = &r.runner_up {
        s += &pick("Runner-up", p);
    }
    if !r.avoid.is_empty() {
        s += "<p><b>Avoid:</b></p><ul>";
        for a in &r.avoid {
            let _ = write!(
                s,
                "<li>{} on {}: {}</li>",
                esc(&a.strategy),
                esc(a.backend.name()),
                esc(&a.reason)
            );
        }
        s += "</ul>\n";
    }
    if !r.warnings.is_empty() {
        s += "<div class=\"warn\"><b>Warnings</b><ul>";
        for w in &r.warnings {
            let _ = write!(s, "<li>{}</li>", esc(w));
        }
        s += "</ul></div>\n";
    }
    s
}

fn results_table(run: &AnalysisRun) -> String {
    let p = run.recommendation.priority;
    let mut s = format!(
        "<h2>Results</h2>\n<p class=\"meta\">Accuracy is <i>retention</i>: the mean cosine of the pooled \
         outputs against the f32 CPU model on the same inputs, not task accuracy. Click a header to sort.</p>\n\
         <div class=\"scroll\"><table id=\"results\" class=\"sortable\" data-rows=\"{}\"><thead><tr>\
         <th class=\"l\">strategy</th><th class=\"l\">backend</th><th class=\"l\">format</th><th>bits/w</th>\
         <th>accuracy</th><th>worst cos</th><th>top-10</th><th>weights MB</th><th>peak MB</th>\
         <th>ms/input</th><th>p10–p90 ms</th><th>inputs/s</th><th>speedup</th><th>acc/GB</th><th>score ({})</th>\
         <th class=\"l\">warnings</th></tr></thead><tbody>\n",
        run.results.len(),
        esc(p.name())
    );
    for r in &run.results {
        let e = &r.efficiency;
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>{}{}{}{}{}{}{}{}{}{}{}{}<td class=\"l\">{}</td></tr>",
            esc(&r.strategy),
            esc(r.backend.name()),
            esc(&r.format),
            td_num(r.bits_per_weight, format!("{:.2}", r.bits_per_weight)),
            td_num(r.accuracy, format!("{:.5}", r.accuracy)),
            td_num(r.retention.worst_cosine, format!("{:.5}", r.retention.worst_cosine)),
            match r.retention.top10_agreement {
                Some(v) => td_num(v, format!("{v:.3}")),
                None => "<td data-v=\"\">–</td>".into(),
            },
            td_num(r.memory_bytes as f64, mb(r.memory_bytes)),
            td_num(r.memory.device_peak_bytes as f64, mb(r.memory.device_peak_bytes)),
            td_num(r.inference_time_s, format!("{:.3}", r.inference_time_s * 1e3)),
            td_num(
                r.speed.p10_s_per_input,
                format!("{:.3}–{:.3}", r.speed.p10_s_per_input * 1e3, r.speed.p90_s_per_input * 1e3)
            ),
            td_num(r.speed.inputs_per_s, format!("{:.1}", r.speed.inputs_per_s)),
            match e.speedup_vs_baseline {
                Some(v) => td_num(v, format!("{v:.2}×")),
                None => "<td data-v=\"\">–</td>".into(),
            },
            td_num(e.accuracy_per_gb, format!("{:.1}", e.accuracy_per_gb)),
            td_num(e.scores.get(p), format!("{:.3}", e.scores.get(p))),
            esc(&r.warnings.join("; "))
        );
    }
    s + "</tbody></table></div>\n"
}

fn layers_section(run: &AnalysisRun, d: &VisualizationData) -> Result<String, ReportError> {
    let mut s = String::from("<h2>Per-layer sensitivity</h2>\n");
    if run.layers.is_empty() {
        return Ok(s + "<p>This run measured no per-layer sensitivity.</p>\n");
    }
    s += &figure(
        ChartKind::LayerHeatmap,
        d,
        "chart-",
        "Weight NMSE of each linear layer under each strategy (log colour scale).",
    )?;
    let l = &d.layer_sensitivity;
    s += "<div class=\"scroll\"><table id=\"layers\" class=\"sortable\"><thead><tr><th class=\"l\">layer</th><th>shape</th>";
    for st in &l.strategies {
        let _ = write!(s, "<th>NMSE {}</th>", esc(st));
    }
    s += "<th>output NMSE alone</th><th>cosine alone</th><th class=\"l\">probe</th></tr></thead><tbody>\n";
    for (i, layer) in run.layers.iter().enumerate() {
        let _ = write!(
            s,
            "<tr><td class=\"l\">{}</td><td data-v=\"{}\">{}×{}</td>",
            esc(&layer.layer),
            layer.shape.0 * layer.shape.1,
            layer.shape.0,
            layer.shape.1
        );
        for v in &l.weight_nmse[i] {
            s += &match v {
                Some(v) => td_num(*v, format!("{v:.2e}")),
                None => "<td data-v=\"\">–</td>".into(),
            };
        }
        let _ = writeln!(
            s,
            "{}{}<td class=\"l\">{}</td></tr>",
            td_num(
                layer.output_nmse_alone,
                format!("{:.2e}", layer.output_nmse_alone)
            ),
            td_num(layer.cosine_alone, format!("{:.6}", layer.cosine_alone)),
            esc(&layer.probe_strategy)
        );
    }
    s += "</tbody></table></div>\n";
    if let Some(m) = &run.mixed_precision {
        let _ = writeln!(
            s,
            "<p><b>Mixed precision:</b> {} everywhere, {} for {} ({}); accuracy {:.5} against a target of {:.5}{}.</p>",
            esc(&m.base),
            esc(&m.high),
            m.high_layers.len(),
            esc(&m.high_layers.join(", ")),
            m.result.accuracy,
            m.target_accuracy,
            if m.meets_target { "" } else { " (<span class=\"bad\">not met</span>)" }
        );
    }
    Ok(s)
}

/// The report of one run.
pub fn run_report(run: &AnalysisRun) -> Result<String, ReportError> {
    let d = VisualizationData::from_run(run);
    let c = &run.config;
    let mut b = format!(
        "<h1>quantscope analysis: {}</h1>\n<p class=\"meta\">run {} · quantscope {} · {} s · strategies {} · \
         backends {} · {} evaluation inputs of {} tokens (digest {}) · batch {} · {} timed runs{}{}</p>\n",
        esc(&c.model.name),
        esc(&run.run_id),
        esc(&run.tool_version),
        run.duration_s.round(),
        esc(&c.strategies.join(", ")),
        esc(&c.backends.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")),
        c.eval_inputs.count,
        c.eval_inputs.seq_len,
        esc(&c.eval_inputs.digest),
        c.batch,
        c.timed_runs,
        c.max_memory_gb.map(|m| format!(" · max memory {m} GB")).unwrap_or_default(),
        c.min_accuracy.map(|a| format!(" · min accuracy {a}")).unwrap_or_default(),
    );
    b += &recommendation_section(run);
    b += &results_table(run);
    if !run.skipped.is_empty() {
        b += "<p><b>Not run:</b></p><ul>";
        for s in &run.skipped {
            let _ = write!(
                b,
                "<li>{} on {}: {}</li>",
                esc(&s.strategy),
                esc(s.backend.name()),
                esc(&s.reason)
            );
        }
        b += "</ul>\n";
    }
    b += "<h2>Charts</h2>\n";
    let captions = [
        (ChartKind::Summary, "The four that matter most."),
        (ChartKind::Memory, "Packed weights and the extra memory inference takes, per backend."),
        (ChartKind::SpeedAccuracy, "Up and to the left is better; the dashed line joins the pairs no other pair beats on both."),
        (ChartKind::MemoryAccuracy, "Up and to the left is better; the dashed line is the Pareto front."),
        (ChartKind::Radar, "Each metric over the best of the set (costs inverted): bigger is better."),
        (ChartKind::Timeline, "Bytes the backend holds over each pair's life; phases shaded."),
    ];
    for (k, cap) in captions {
        b += &figure(k, &d, "chart-", cap)?;
    }
    b += &layers_section(run, &d)?;
    b += &hardware_section(run);
    Ok(page(&format!("quantscope: {}", c.model.name), &b))
}

/// The comparison report of several runs (`report A B --html`).
pub fn comparison_report(
    runs: &[(String, AnalysisRun)],
    cmp: &Comparison,
) -> Result<String, ReportError> {
    let mut b = format!("<h1>quantscope: {} runs compared</h1>\n", runs.len());
    b += "<h2>Runs</h2>\n<table><thead><tr><th class=\"l\">#</th><th class=\"l\">label</th><th class=\"l\">run</th>\
          <th class=\"l\">model</th><th class=\"l\">inputs digest</th><th class=\"l\">host</th><th class=\"l\">cpu</th><th>results</th></tr></thead><tbody>\n";
    for (i, h) in cmp.runs.iter().enumerate() {
        let _ = writeln!(
            b,
            "<tr><td class=\"l\">{i}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td></tr>",
            esc(&h.label),
            esc(&h.run_id),
            esc(&h.model),
            esc(&h.input_digest),
            esc(h.host.as_deref().unwrap_or("?")),
            esc(&h.cpu),
            h.results
        );
    }
    b += "</tbody></table>\n";
    if !cmp.flags.is_empty() {
        b += "<div class=\"warn\"><b>These runs differ beyond the machine:</b><ul>";
        for f in &cmp.flags {
            let _ = write!(b, "<li>{}</li>", esc(f));
        }
        b += "</ul></div>\n";
    }
    b += &format!(
        "<h2>Merged results</h2>\n<p class=\"meta\">Deltas are against run 0 ({}). Click a header to sort.</p>\n\
         <div class=\"scroll\"><table id=\"results\" class=\"sortable\" data-rows=\"{}\"><thead><tr>\
         <th class=\"l\">strategy</th><th class=\"l\">backend</th>",
        esc(&cmp.runs.first().map(|r| r.label.clone()).unwrap_or_default()),
        cmp.rows.len()
    );
    for (i, _) in cmp.runs.iter().enumerate() {
        let _ = write!(
            b,
            "<th>[{i}] accuracy</th><th>[{i}] ms/input</th><th>[{i}] MB</th>"
        );
        if i > 0 {
            let _ = write!(
                b,
                "<th>[{i}] Δ accuracy</th><th>[{i}] Δ time %</th><th>[{i}] Δ MB</th>"
            );
        }
    }
    b += "</tr></thead><tbody>\n";
    for row in &cmp.rows {
        let _ = write!(
            b,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td>",
            esc(&row.strategy),
            esc(row.backend.name())
        );
        for (i, c) in row.cells.iter().enumerate() {
            match c {
                Some(c) => {
                    b += &td_num(c.accuracy, format!("{:.5}", c.accuracy));
                    b += &td_num(
                        c.inference_time_s,
                        format!("{:.3}", c.inference_time_s * 1e3),
                    );
                    b += &td_num(c.memory_bytes as f64, mb(c.memory_bytes));
                }
                None => b += "<td data-v=\"\">–</td><td data-v=\"\">–</td><td data-v=\"\">–</td>",
            }
            if i > 0 {
                match row.deltas[i] {
                    Some(d) => {
                        b += &td_num(d.accuracy, format!("{:+.5}", d.accuracy));
                        b += &td_num(
                            d.inference_time_pct,
                            format!("{:+.1}", d.inference_time_pct),
                        );
                        b += &td_num(
                            d.memory_bytes as f64,
                            format!("{:+.2}", d.memory_bytes as f64 / 1e6),
                        );
                    }
                    None => {
                        b += "<td data-v=\"\">–</td><td data-v=\"\">–</td><td data-v=\"\">–</td>"
                    }
                }
            }
        }
        b += "</tr>\n";
    }
    b += "</tbody></table></div>\n<h2>Speed vs accuracy per run</h2>\n";
    for (i, (label, run)) in runs.iter().enumerate() {
        let d = VisualizationData::from_run(run);
        b += &figure(
            ChartKind::SpeedAccuracy,
            &d,
            &format!("run{i}-"),
            &format!(
                "[{i}] {label} on {}",
                run.hardware.host.as_deref().unwrap_or("?")
            ),
        )?;
    }
    Ok(page("quantscope: runs compared", &b))
}

/// Writes the report of `run` to `path` (atomically): what `analyze --html`
/// and `report RUN.json --html` call.
pub fn write_run_report(run: &AnalysisRun, path: &Path) -> Result<(), ReportError> {
    let html = run_report(run)?;
    crate::io::write_atomic(path, html.as_bytes())?;
    Ok(())
}
