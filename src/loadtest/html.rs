//! The `--html` page: one self-contained file (inline CSS and SVG, no
//! scripts, nothing fetched) so it can be archived or mailed as it is.

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use super::report::{micros_text, Latency, Report, Tick};
use super::workload::Workload;

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}\
th{background:#f3f3f3}.pass{background:#d4f7d4;color:#064}.fail{background:#fdd;color:#a00}\
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{color:#555}\
svg{font-size:11px;border:1px solid #eee}section{border-top:2px solid #ddd;margin-top:1.5em}\
small{color:#666;font-weight:normal}";

// Chart geometry: the whole box, then the margins around the plot area.
const W: f64 = 640.0;
const H: f64 = 260.0;
const L: f64 = 60.0;
const R: f64 = 24.0;
const T: f64 = 28.0;
const B: f64 = 42.0;
const PW: f64 = W - L - R;
const PH: f64 = H - T - B;
const BLUE: &str = "#1f77b4";
const ORANGE: &str = "#ff7f0e";
const GREEN: &str = "#2ca02c";
const RED: &str = "#d62728";

/// A self-contained HTML page for the reports of one run.
pub fn render(reports: &[Report]) -> String {
    let mut o = String::new();
    page(&mut o, reports).expect("writing to a String cannot fail");
    o
}

fn page(o: &mut String, reports: &[Report]) -> fmt::Result {
    let when = reports.first().map_or(String::new(), |r| {
        r.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    });
    write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>allot loadtest {when}</title><style>{CSS}</style></head><body>\n\
         <h1>allot loadtest <small>{when}</small></h1>\n"
    )?;
    let Some(first) = reports.first() else {
        return o.write_str("<p>No reports.</p></body></html>\n");
    };
    knobs(o, &first.workload)?;
    summary(o, reports)?;
    for r in reports {
        section(o, r)?;
    }
    o.write_str("</body></html>\n")
}

fn knobs(o: &mut String, w: &Workload) -> fmt::Result {
    let amount = match (w.requests, w.duration_secs) {
        (Some(n), _) => ("requests", n.to_string()),
        (None, Some(s)) => ("duration", format!("{s} s")),
        (None, None) => ("requests", "unbounded".into()),
    };
    let rate = w
        .rate
        .map_or("closed loop".into(), |r| format!("{} /s", num(r)));
    let knobs = [
        ("run", esc(&w.run_id)),
        ("auctions", w.auctions.to_string()),
        ("capacity", w.capacity.to_string()),
        ("min amount", w.min_amount.to_string()),
        ("wins per bidder", w.max_wins_per_bidder.to_string()),
        ("bidders", w.bidders.to_string()),
        (amount.0, amount.1),
        ("concurrency", w.concurrency.to_string()),
        ("rate", rate),
        ("duplicates", format!("{:.1}%", w.duplicates * 100.0)),
        ("hot", format!("{:.1}%", w.hot * 100.0)),
        ("seed", w.seed.to_string()),
    ];
    o.write_str("<table><tr>")?;
    for (k, _) in &knobs {
        write!(o, "<th>{k}</th>")?;
    }
    o.write_str("</tr><tr>")?;
    for (_, v) in &knobs {
        write!(o, "<td>{v}</td>")?;
    }
    o.write_str("</tr></table>\n")
}

fn summary(o: &mut String, reports: &[Report]) -> fmt::Result {
    o.write_str(
        "<h2>Summary</h2><table><tr><th rowspan=\"2\">strategy</th><th colspan=\"2\">bids/s</th>\
         <th colspan=\"5\">bids</th><th colspan=\"4\">reply latency</th><th colspan=\"2\">outcome latency</th>\
         <th colspan=\"4\">contention</th><th rowspan=\"2\">vs baseline</th><th rowspan=\"2\">invariants</th></tr>\n\
         <tr><th>replied</th><th>decided</th><th>accepted</th><th>rejected</th><th>errors</th>\
         <th>confirmed</th><th>cancelled</th><th>p50</th><th>p99</th><th>p99.9</th><th>max</th>\
         <th>p50</th><th>p99</th><th>conflicts</th><th>retries</th><th>lock waits</th><th>lock timeouts</th></tr>\n",
    )?;
    for r in reports {
        write!(
            o,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td>{}{}<td>{}</td>{}",
            esc(&r.strategy),
            num(r.replied_per_sec),
            num(r.decided_per_sec),
            r.accepted,
            counted(&r.rejected),
            counted(&r.errors),
            r.confirmed,
            counted(&r.cancelled)
        )?;
        let (rl, ol) = (&r.reply_latency, &r.outcome_latency);
        for (l, us) in [
            (rl, rl.p50_us),
            (rl, rl.p99_us),
            (rl, rl.p999_us),
            (rl, rl.max_us),
        ]
        .into_iter()
        .chain([(ol, ol.p50_us), (ol, ol.p99_us)])
        {
            // An empty histogram has no percentiles, not zero ones.
            let cell = if l.count == 0 {
                "–".into()
            } else {
                micros_text(us)
            };
            write!(o, "<td>{cell}</td>")?;
        }
        let c = &r.contention;
        for n in [c.conflicts, c.retries, c.lock_waits, c.lock_timeouts] {
            write!(o, "<td>{n}</td>")?;
        }
        let ratio = r.baseline_ratio.map_or("–".into(), times);
        let (class, word) = if r.invariants.ok {
            ("pass", "PASS")
        } else {
            ("fail", "FAIL")
        };
        writeln!(o, "<td>{ratio}</td><td class=\"{class}\">{word}</td></tr>")?;
    }
    o.write_str("</table>\n")
}

fn section(o: &mut String, r: &Report) -> fmt::Result {
    let offered = r
        .offered_rate
        .map_or(String::new(), |x| format!(", offered {} bids/s", num(x)));
    write!(
        o,
        "<section><h2>{}</h2>\n<p>{} requests for {} distinct bids; replies over {:.2} s, \
         outcomes over {:.2} s{offered}.</p>\n",
        esc(&r.strategy),
        r.requests,
        r.bids,
        r.send_secs,
        r.decide_secs
    )?;
    for (name, m) in [
        ("Rejected", &r.rejected),
        ("Errors", &r.errors),
        ("Cancelled", &r.cancelled),
    ] {
        if !m.is_empty() {
            writeln!(o, "<p>{name}: {}</p>", breakdown(m))?;
        }
    }
    for (name, l) in [("Reply", &r.reply_latency), ("Outcome", &r.outcome_latency)] {
        if l.count > 0 {
            let (mean, p90) = (micros_text(l.mean_us.round() as u64), micros_text(l.p90_us));
            writeln!(
                o,
                "<p>{name} latency: {} samples, mean {mean}, p90 {p90}.</p>",
                l.count
            )?;
        }
    }
    o.write_str("<div class=\"charts\">")?;
    histogram(o, &r.reply_latency, &r.outcome_latency)?;
    timeline(o, &r.timeline)?;
    o.write_str("</div>\n")?;
    if let Some(t) = &r.trend {
        writeln!(
            o,
            "<p>Trend: {} bids/s decided in the first tenth, {} in the last ({}).</p>",
            num(t.first_tenth_per_sec),
            num(t.last_tenth_per_sec),
            times(t.ratio)
        )?;
    }
    if let Some(b) = &r.baseline {
        writeln!(
            o,
            "<p>Baseline: {} raw JetStream publishes of {} bytes, {} in flight: {} /s.</p>",
            b.publishes,
            b.payload_bytes,
            b.in_flight,
            num(b.per_sec)
        )?;
    }
    let v = &r.invariants;
    if v.ok {
        writeln!(
            o,
            "<p class=\"pass\">Invariants PASS: {} auctions, {} bids checked.</p>",
            v.auctions, v.bids
        )?;
    } else {
        write!(
            o,
            "<p class=\"fail\">Invariants FAIL: {} violations over {} auctions, {} bids (first {} shown).</p><ul>",
            v.violation_count,
            v.auctions,
            v.bids,
            v.violations.len()
        )?;
        for s in &v.violations {
            write!(o, "<li>{}</li>", esc(s))?;
        }
        o.write_str("</ul>\n")?;
    }
    o.write_str("</section>\n")
}

/// Reply and outcome latency, overlaid, on a log-scale x axis.
fn histogram(o: &mut String, reply: &Latency, outcome: &Latency) -> fmt::Result {
    let series = [
        (BLUE, "reply", spans(&reply.buckets)),
        (ORANGE, "outcome", spans(&outcome.buckets)),
    ];
    let filled = || series.iter().flat_map(|s| s.2.iter()).filter(|b| b.2 > 0);
    let lo = filled().map(|b| b.0).fold(f64::INFINITY, f64::min);
    let hi = filled().map(|b| b.1).fold(0.0, f64::max);
    let top = filled().map(|b| b.2).max().unwrap_or(0);
    svg_open(o, "latency histogram")?;
    if top == 0 {
        return no_data(o, "Latency: no samples.");
    }
    // Whole decades at both ends so the ticks sit on the edges.
    let ld = lo.log10().floor().max(0.0);
    let hd = hi.log10().ceil().max(ld + 1.0);
    let x = |v: f64| (L + (v.log10() - ld) / (hd - ld) * PW).clamp(L, L + PW);
    let top = y_axis(o, top as f64, "count")?;
    for d in ld as u32..=hd as u32 {
        x_tick(o, x(10f64.powi(d as i32)), &decade(d))?;
    }
    for (colour, _, spans) in &series {
        for &(a, b, n) in spans.iter().filter(|s| s.2 > 0) {
            // At least a pixel, so a lone sample still shows.
            let (x0, h) = (x(a), (n as f64 / top * PH).max(1.0));
            write!(
                o,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{colour}\" \
                 fill-opacity=\"0.5\"><title>≤ {}: {n}</title></rect>",
                T + PH - h,
                (x(b) - x0 - 1.0).max(0.5),
                micros_text(b as u64)
            )?;
        }
    }
    legend(o, &[(BLUE, "reply"), (ORANGE, "outcome")])?;
    frame(o, "latency (log scale)")?;
    svg_close(o, "Latency: sent (or due) to reply and to outcome.")
}

/// Buckets as (lower, upper, count); the first lower bound is a
/// quarter-decade below its upper, as `Latency::of` spaces them.
fn spans(buckets: &[(u64, u64)]) -> Vec<(f64, f64, u64)> {
    let mut lower = None;
    let mut out = Vec::with_capacity(buckets.len());
    for &(upper, n) in buckets {
        let upper = (upper as f64).max(1.0);
        out.push((lower.unwrap_or(upper / 10f64.powf(0.25)), upper, n));
        lower = Some(upper);
    }
    out
}

/// Replied, decided and errors per second, each at its interval's end.
fn timeline(o: &mut String, ticks: &[Tick]) -> fmt::Result {
    let mut prev = 0.0;
    let mut points: Vec<(f64, [f64; 3])> = Vec::new();
    for t in ticks {
        let dt = t.at_secs - prev;
        // A zero or backwards interval has no rate; skip it rather than divide.
        if dt.is_finite() && dt > 1e-9 {
            points.push((
                t.at_secs,
                [t.replied, t.decided, t.errors].map(|n| n as f64 / dt),
            ));
            prev = t.at_secs;
        }
    }
    svg_open(o, "throughput over time")?;
    let top = points.iter().flat_map(|p| p.1).fold(0.0, f64::max);
    let Some(&(end, _)) = points.last() else {
        return no_data(o, "Throughput: no timeline.");
    };
    let top = y_axis(o, top, "per second")?;
    let step = nice(end / 6.0);
    for i in 0..=(end / step).floor() as u32 {
        let s = f64::from(i) * step;
        x_tick(o, L + s / end * PW, &format!("{} s", num(s)))?;
    }
    let colours = [BLUE, GREEN, RED];
    for (k, colour) in colours.iter().enumerate() {
        let xy = |p: &(f64, [f64; 3])| (L + p.0 / end * PW, T + PH - p.1[k] / top * PH);
        o.write_str("<polyline fill=\"none\" stroke-width=\"1.5\" points=\"")?;
        for (px, py) in points.iter().map(xy) {
            write!(o, "{px:.1},{py:.1} ")?;
        }
        write!(o, "\" stroke=\"{colour}\"/>")?;
        if let [only] = points.as_slice() {
            let (px, py) = xy(only);
            write!(
                o,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"2.5\" fill=\"{colour}\"/>"
            )?;
        }
    }
    legend(o, &[(BLUE, "replied"), (GREEN, "decided"), (RED, "errors")])?;
    frame(o, "seconds since start")?;
    svg_close(o, "Throughput: bids per second in each interval.")
}

fn svg_open(o: &mut String, label: &str) -> fmt::Result {
    // No xmlns: inline SVG in HTML5 needs none, and the page names no URL.
    write!(
        o,
        "<figure><svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" \
         aria-label=\"{label}\">"
    )
}

fn svg_close(o: &mut String, caption: &str) -> fmt::Result {
    write!(o, "</svg><figcaption>{caption}</figcaption></figure>")
}

fn no_data(o: &mut String, caption: &str) -> fmt::Result {
    write!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data</text>",
        W / 2.0,
        H / 2.0
    )?;
    svg_close(o, caption)
}

/// Grid lines and labels for a linear y axis from 0; returns the axis top.
fn y_axis(o: &mut String, max: f64, label: &str) -> Result<f64, fmt::Error> {
    let step = nice(max.max(1.0) / 4.0).max(1.0);
    let n = (max / step).ceil().max(1.0) as u32;
    let top = f64::from(n) * step;
    for i in 0..=n {
        let y = T + PH - f64::from(i) / f64::from(n) * PH;
        write!(
            o,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            L + PW,
            L - 4.0,
            y + 4.0,
            num(f64::from(i) * step)
        )?;
    }
    write!(
        o,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{label}</text>",
        T + PH / 2.0
    )?;
    Ok(top)
}

fn x_tick(o: &mut String, x: f64, label: &str) -> fmt::Result {
    let y = T + PH;
    write!(
        o,
        "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y}\" y2=\"{}\" stroke=\"#666\"/>\
         <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
        y + 4.0,
        y + 16.0
    )
}

/// The axis lines, drawn last so bars do not cover them.
fn frame(o: &mut String, x_label: &str) -> fmt::Result {
    let y = T + PH;
    write!(
        o,
        "<path d=\"M{L} {T}V{y}H{}\" fill=\"none\" stroke=\"#666\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>",
        L + PW,
        L + PW / 2.0,
        H - 6.0
    )
}

/// A row of keys in the top margin, clear of the data.
fn legend(o: &mut String, items: &[(&str, &str)]) -> fmt::Result {
    for (i, (colour, name)) in items.iter().enumerate() {
        let x = L + 90.0 * i as f64;
        write!(
            o,
            "<rect x=\"{x}\" y=\"6\" width=\"12\" height=\"10\" fill=\"{colour}\" fill-opacity=\"0.7\"/>\
             <text x=\"{}\" y=\"15\">{name}</text>",
            x + 16.0
        )?;
    }
    Ok(())
}

/// 1, 2 or 5 times a power of ten, at least `raw` (which must be > 0).
fn nice(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let m = [1.0, 2.0, 5.0].into_iter().find(|&m| raw <= m * mag);
    mag * m.unwrap_or(10.0)
}

/// The label of 10^d microseconds.
fn decade(d: u32) -> String {
    match d {
        0..=2 => format!("{} µs", 10u64.pow(d)),
        3..=5 => format!("{} ms", 10u64.pow(d - 3)),
        _ => format!("{} s", 10u64.pow(d - 6)),
    }
}

/// A rate or axis value, short: "950", "12.5", "3.2k", "1.5M".
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let (x, unit) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    if x.fract() == 0.0 || x.abs() >= 100.0 {
        format!("{x:.0}{unit}")
    } else {
        format!("{x:.1}{unit}")
    }
}

/// A ratio, as "0.75×".
fn times(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".into()
    }
}

/// A total in a cell, with its reasons on hover.
fn counted(m: &BTreeMap<String, u64>) -> String {
    format!(
        "<td title=\"{}\">{}</td>",
        breakdown(m),
        m.values().sum::<u64>()
    )
}

fn breakdown(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, n)| format!("{} {n}", esc(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::check::Verdict;
    use crate::loadtest::report::{Baseline, Contention, Trend};
    use hdrhistogram::Histogram;

    fn report(strategy: &str) -> Report {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [120, 450, 900, 2_500, 2_600, 40_000, 1_200_000] {
            h.record(v).unwrap();
        }
        let tick = |at_secs, n| Tick {
            at_secs,
            replied: n,
            decided: n / 2,
            errors: 1,
        };
        Report {
            strategy: strategy.into(),
            workload: Workload::default(),
            started_at: chrono::Utc::now(),
            send_secs: 2.0,
            decide_secs: 2.5,
            offered_rate: Some(9_000.0),
            requests: 20_000,
            bids: 19_800,
            replied_per_sec: 9_900.0,
            decided_per_sec: 7_912.5,
            accepted: 19_000,
            rejected: BTreeMap::from([("auction_closed".to_string(), 800)]),
            errors: BTreeMap::from([("timeout".to_string(), 3)]),
            confirmed: 1_000,
            cancelled: BTreeMap::from([("capacity_full".to_string(), 18_000)]),
            reply_latency: Latency::of(&h),
            outcome_latency: Latency::of(&h),
            timeline: vec![tick(0.5, 4_000), tick(1.5, 9_000), tick(2.5, 7_000)],
            trend: Some(Trend {
                first_tenth_per_sec: 8_000.0,
                last_tenth_per_sec: 6_000.0,
                ratio: 0.75,
            }),
            contention: Contention {
                conflicts: 12,
                retries: 12,
                ..Contention::default()
            },
            baseline: Some(Baseline {
                publishes: 100_000,
                payload_bytes: 200,
                in_flight: 256,
                per_sec: 50_000.0,
            }),
            baseline_ratio: Some(0.158),
            invariants: Verdict {
                ok: true,
                auctions: 10,
                bids: 19_800,
                ..Verdict::default()
            },
        }
    }

    #[test]
    fn a_run_of_all_strategies_is_one_self_contained_page() {
        let mut lock = report("lock");
        lock.invariants = Verdict {
            ok: false,
            violation_count: 1,
            violations: vec!["auction 0: <b>101</b> confirmed".into()],
            ..Verdict::default()
        };
        let page = render(&[report("tcc"), report("occ"), lock]);
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        assert_eq!(page.matches("<svg").count(), 6);
        for bad in ["http://", "https://", "<script", "NaN", "inf"] {
            assert!(!page.contains(bad), "page contains {bad:?}");
        }
        for s in ["tcc", "occ", "lock"] {
            assert!(
                page.contains(&format!("<h2>{s}</h2>")),
                "no section for {s}"
            );
        }
        assert!(page.contains("&lt;b&gt;101&lt;/b&gt;") && !page.contains("<b>101</b>"));
        assert!(page.contains(">PASS<") && page.contains(">FAIL<"));
        assert!(page.contains("0.16×") && page.contains("0.75×"));
    }

    #[test]
    fn empty_data_draws_no_nan() {
        let mut r = report("<tcc>");
        r.reply_latency = Latency::default();
        r.outcome_latency = Latency::default();
        r.timeline = vec![Tick::default(), Tick::default()];
        (r.replied_per_sec, r.decided_per_sec, r.baseline_ratio) = (0.0, 0.0, Some(f64::NAN));
        r.trend = Some(Trend {
            first_tenth_per_sec: 0.0,
            last_tenth_per_sec: 0.0,
            ratio: f64::INFINITY,
        });
        for page in [render(&[r.clone()]), render(&[]), {
            r.timeline.clear();
            render(&[r])
        }] {
            assert!(!page.contains("NaN") && !page.contains("inf"), "{page}");
            assert!(!page.contains("<tcc>") && page.ends_with("</html>\n"));
            assert!(page.contains("no data") || page.contains("No reports"));
        }
    }

    #[test]
    fn latencies_and_rates_read_well() {
        assert_eq!(micros_text(850), "850 µs");
        assert_eq!(micros_text(12_345), "12.3 ms");
        assert_eq!(micros_text(1_200_000), "1.20 s");
        assert_eq!(
            (num(950.0), num(12.5), num(32_000.0), num(1_500_000.0)),
            ("950".into(), "12.5".into(), "32k".into(), "1.5M".into())
        );
        assert_eq!(
            (decade(0), decade(4), decade(6)),
            ("1 µs".into(), "10 ms".into(), "1 s".into())
        );
    }
}
