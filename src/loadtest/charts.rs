//! The SVG charts of the `--html` page: a latency histogram and
//! throughput over time, drawn by hand (a few lines of SVG each) so the
//! page needs no script and no library.

use std::fmt::{self, Write};

use super::report::{micros_text, Latency, Tick};

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

/// Reply and outcome latency, overlaid, on a log-scale x axis.
pub(super) fn histogram(o: &mut String, reply: &Latency, outcome: &Latency) -> fmt::Result {
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
pub(super) fn timeline(o: &mut String, ticks: &[Tick]) -> fmt::Result {
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
pub(super) fn decade(d: u32) -> String {
    match d {
        0..=2 => format!("{} µs", 10u64.pow(d)),
        3..=5 => format!("{} ms", 10u64.pow(d - 3)),
        _ => format!("{} s", 10u64.pow(d - 6)),
    }
}

/// A rate or axis value, short: "950", "12.5", "3.2k", "1.5M".
pub(super) fn num(v: f64) -> String {
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
pub(super) fn times(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".into()
    }
}
