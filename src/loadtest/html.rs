//! The `--html` page: one self-contained file (inline CSS and SVG, no
//! scripts, nothing fetched) so it can be archived or mailed as it is.

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use super::charts::{histogram, num, timeline, times};
use super::report::{micros_text, Report};
use super::workload::Workload;

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}\
th{background:#f3f3f3}.pass{background:#d4f7d4;color:#064}.fail{background:#fdd;color:#a00}\
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{color:#555}\
svg{font-size:11px;border:1px solid #eee}section{border-top:2px solid #ddd;margin-top:1.5em}\
small{color:#666;font-weight:normal}";

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
    let mut knobs = vec![
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
    if w.lifecycle() {
        knobs.extend([
            ("policy", crate::wire::label(&w.policy)),
            ("withdraws", format!("{:.1}%", w.withdraws * 100.0)),
            (
                "early withdraws",
                format!("{:.1}%", w.early_withdraws * 100.0),
            ),
            ("raises", format!("{:.1}%", w.raises * 100.0)),
            (
                "close after",
                w.close_after_secs.map_or("-".into(), |s| format!("{s} s")),
            ),
        ]);
    }
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
    let l = &r.lifecycle;
    if l.withdraws_sent + l.raises_sent > 0 {
        writeln!(
            o,
            "<p>Lifecycle: {} withdraws sent, {} withdrawn ({} empty rollbacks), refused: {}; \
             {} raises sent, {} raised, {} conflicts, refused: {}; {} unanswered; {} held notices.</p>",
            l.withdraws_sent,
            l.withdrawn,
            l.empty_rollbacks,
            breakdown_or_none(&l.withdraws_refused),
            l.raises_sent,
            l.raised,
            l.raise_conflicts,
            breakdown_or_none(&l.raises_refused),
            l.unanswered,
            l.held_notices
        )?;
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

fn breakdown_or_none(m: &BTreeMap<String, u64>) -> String {
    match m.is_empty() {
        true => "none".into(),
        false => breakdown(m),
    }
}

pub(super) fn esc(s: &str) -> String {
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
pub(crate) mod tests {
    use super::*;
    use crate::loadtest::charts::decade;
    use crate::loadtest::check::Verdict;
    use crate::loadtest::report::{Baseline, Contention, Latency, Tick, Trend};
    use hdrhistogram::Histogram;

    /// A made-up report, for tests of what shows reports.
    pub(crate) fn report(strategy: &str) -> Report {
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
            admitted_latency: Latency::of(&h),
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
            lifecycle: Default::default(),
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
    fn a_lifecycle_run_shows_its_knobs_and_counts() {
        let mut r = report("tcc");
        r.workload.policy = crate::wire::Policy::TopAmount;
        r.workload.withdraws = 0.1;
        r.lifecycle.withdraws_sent = 12;
        r.lifecycle.withdrawn = 9;
        r.lifecycle.empty_rollbacks = 4;
        r.lifecycle
            .withdraws_refused
            .insert("already_confirmed".into(), 3);
        let page = render(&[r]);
        assert!(page.contains("<td>top_amount</td>"), "{page}");
        assert!(page.contains(
            "12 withdraws sent, 9 withdrawn (4 empty rollbacks), refused: already_confirmed 3"
        ));
        assert!(
            page.contains("raises refused") || page.contains("raised, 0 conflicts, refused: none")
        );
        assert!(!render(&[report("tcc")]).contains("Lifecycle:"));
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
