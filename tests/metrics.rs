//! The HTTP page's standard parts, against a real `allot serve` process:
//! the Grafana dashboard in `deploy/` asks only for metrics and labels the
//! service exposes, `/metrics` speaks both text formats, and `/healthz`
//! and `/readyz` mean what docs/operating.md says.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use allot::wire::AuctionSpec;
use common::{bid, free_addr, http_get, http_with, serve_process, serve_with_page, Harness};

/// Labels Prometheus adds to every scraped series itself.
const SCRAPE_LABELS: [&str; 2] = ["job", "instance"];

/// Every series name on a `/metrics` page (a histogram's `_bucket`,
/// `_sum` and `_count` each count), with the label names it carries.
fn exposed(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let body = page.split("\r\n\r\n").nth(1).unwrap_or(page);
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let inner = &line[end + 1..line.find('}').expect("a closing brace")];
            for pair in inner.split(',') {
                labels.insert(pair.split('=').next().unwrap().to_string());
            }
        }
    }
    series
}

/// The identifiers of a PromQL expression, with what follows each (for
/// `name{labels}`), skipping quoted strings and `[ranges]`.
fn identifiers(expr: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:$".contains(chars[i]))
            {
                i += 1;
            }
            let rest: String = chars[i..].iter().collect();
            out.push((chars[start..i].iter().collect(), rest));
        } else {
            i += 1;
        }
    }
    out
}

/// What is wrong with one dashboard query against the exposed series:
/// a metric the service does not expose, a label it does not carry, or no
/// allot metric at all.
fn check_query(expr: &str, series: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut labels_in_query: BTreeSet<String> = SCRAPE_LABELS.map(String::from).into();
    let mut names = 0;
    for (word, rest) in identifiers(expr) {
        if !word.starts_with("allot_") {
            continue;
        }
        names += 1;
        let Some(labels) = series.get(&word) else {
            problems.push(format!("{word} is not exposed (in {expr})"));
            continue;
        };
        labels_in_query.extend(labels.iter().cloned());
        // The selector's label names.
        if let Some(selector) = rest.strip_prefix('{') {
            let selector = &selector[..selector.find('}').unwrap_or(selector.len())];
            for matcher in selector.split(',').filter(|m| !m.trim().is_empty()) {
                let label = matcher
                    .split(['=', '!', '~'])
                    .next()
                    .unwrap()
                    .trim()
                    .to_string();
                if !labels.contains(&label) && !SCRAPE_LABELS.contains(&label.as_str()) {
                    problems.push(format!("{word} has no label {label} (in {expr})"));
                }
            }
        }
    }
    if names == 0 {
        problems.push(format!("no allot metric in {expr}"));
    }
    // Grouping labels: `by (a, b)` and label_values(metric, a).
    for (keyword, open) in [("by", "("), ("without", "(")] {
        for (i, _) in expr.match_indices(&format!("{keyword} {open}")) {
            let inner = &expr[i + keyword.len() + 2..];
            let inner = &inner[..inner.find(')').unwrap_or(inner.len())];
            for label in inner.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                if !labels_in_query.contains(label) {
                    problems.push(format!("no metric in {expr} has the label {label}"));
                }
            }
        }
    }
    if let Some(args) = expr.strip_prefix("label_values(") {
        let label = args
            .trim_end_matches(')')
            .rsplit(',')
            .next()
            .unwrap()
            .trim();
        if !labels_in_query.contains(label) {
            problems.push(format!("no metric in {expr} has the label {label}"));
        }
    }
    problems
}

/// Every query string of a Grafana dashboard: the panels' `expr`s and the
/// template variables' queries.
fn queries(json: &serde_json::Value, out: &mut Vec<String>) {
    match json {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(q)) => out.push(q.clone()),
                    ("query" | "definition", serde_json::Value::String(q)) if q.contains('(') => {
                        out.push(q.clone())
                    }
                    _ => queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// Polls `path` on `addr` until its status line starts with `status` (30 s).
async fn until_status(addr: &str, path: &str, status: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let response = common::try_http_get(addr, path).await.unwrap_or_default();
        if response.starts_with(&format!("HTTP/1.1 {status}")) {
            return response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path} on {addr} never answered {status}; last:\n{response}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `/readyz` until its body satisfies `want` (30 s); the body.
async fn until_ready(addr: &str, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let response = common::try_http_get(addr, "/readyz")
            .await
            .unwrap_or_default();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("null");
        let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let status_agrees = if body["ready"] == true {
            response.starts_with("HTTP/1.1 200")
        } else {
            response.starts_with("HTTP/1.1 503")
        };
        if want(&body) {
            assert!(status_agrees, "{response}");
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/readyz on {addr} never showed what was expected; last:\n{response}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_query_names_a_metric_the_service_exposes() {
    let h = Harness::server_only().await;
    let (_serve, addr) = serve_with_page(&h, h.data_dir(), &[], &[]).await;
    h.wait_until_serving().await;
    // Something in every family: the lag appears once a verifier has
    // decided in a partition.
    h.open("graf", AuctionSpec::with_capacity(1)).await;
    h.client.bid("graf", &bid("b1", "u1", 5)).await.unwrap();
    h.wait_for_outcomes("graf", 1).await;
    let mut series = BTreeMap::new();
    for _ in 0..100 {
        series = exposed(&http_get(&addr, "/metrics").await);
        if series.contains_key("allot_verifier_pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(series.contains_key("allot_verifier_pending"), "{series:?}");
    // The checker itself: it refuses a name, a label and a grouping that
    // do not exist.
    for wrong in [
        "rate(allot_bids_count[1m])",
        "allot_bids_total{endpoint=\"bid\"}",
        "sum by (reason) (allot_bids_total)",
        "sum(rate(up[1m]))",
    ] {
        assert!(
            !check_query(wrong, &series).is_empty(),
            "the check let {wrong} pass"
        );
    }

    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut dashboards: Vec<_> = std::fs::read_dir(&deploy)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("grafana-") && name.ends_with(".json")
        })
        .collect();
    dashboards.sort();
    assert!(!dashboards.is_empty(), "no deploy/grafana-*.json");
    let mut checked = 0;
    let mut used = BTreeSet::new();
    for path in &dashboards {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let panels = json["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{}: no panels", path.display());
        for panel in panels {
            let targets = panel["targets"].as_array().map_or(0, Vec::len);
            assert!(
                targets > 0,
                "{}: panel {} has no query",
                path.display(),
                panel["title"]
            );
        }
        let mut found = Vec::new();
        queries(&json, &mut found);
        for query in &found {
            let problems = check_query(query, &series);
            assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
            used.extend(
                identifiers(query)
                    .into_iter()
                    .map(|(w, _)| w)
                    .filter(|w| w.starts_with("allot_")),
            );
        }
        checked += found.len();
    }
    eprintln!(
        "{} queries in {} dashboard(s), all on exposed metrics; metrics used: {used:?}",
        checked,
        dashboards.len()
    );
    assert!(checked >= 10, "only {checked} queries found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_up_and_readyz_follows_nats_and_the_partitions() {
    let mut h = Harness::server_only().await;
    // A port alone: the page binds 127.0.0.1.
    let port = free_addr().rsplit(':').next().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let _serve = serve_process(&h, &["--http-addr", &port], &[]);

    let health = until_status(&addr, "/healthz", "200").await;
    assert!(health.contains("\"status\":\"up\""), "{health}");
    // Ready once every partition has a verifier: this process's, which
    // counts them as its own a moment after it takes their leases.
    let body = until_ready(&addr, |body| {
        body["partitions"]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("8 of 8 partitions have a verifier: 8 this process"))
    })
    .await;
    assert_eq!(body["ready"], true, "{body}");
    for check in ["nats", "streams", "partitions"] {
        assert_eq!(body[check]["ok"], true, "{body}");
    }

    // The formats: Prometheus text unless OpenMetrics is asked for.
    let plain = http_get(&addr, "/metrics").await;
    assert!(
        plain
            .to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{plain}"
    );
    assert!(
        plain.contains("# TYPE allot_bids_total counter\n"),
        "{plain}"
    );
    let open = http_with(
        &addr,
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .await;
    assert!(
        open.to_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{open}"
    );
    assert!(open.contains("# TYPE allot_bids counter\n"), "{open}");
    assert!(open.ends_with("# EOF\n"), "{open}");
    // Read-only, and nothing else is served.
    let post = http_with(&addr, "POST", "/metrics", &[("Content-Length", "0")]).await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(http_get(&addr, "/nowhere")
        .await
        .starts_with("HTTP/1.1 404"));

    // NATS gone: still up, no longer ready, and the body says why (the
    // streams stop answering at once; the connection is given up a moment
    // later).
    h.server.kill();
    let body = until_ready(&addr, |body| body["nats"]["ok"] == false).await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["streams"]["ok"], false, "{body}");
    until_status(&addr, "/healthz", "200").await;
    // Back: ready again.
    h.server.restart().unwrap();
    let ready = until_status(&addr, "/readyz", "200").await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
}
