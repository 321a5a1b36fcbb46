//! The live dashboard in a real browser: headless Chromium (Debian's
//! `chromium`, installed by scripts/install-chromium) opens the page of a
//! running `allot serve` with 10,000 auctions, a load runs while it is
//! open, and the test reads what the page shows through the DevTools
//! protocol: the numbers move while bids flow, and once the load stops
//! they equal `allot status` exactly. Screenshots are kept under
//! `target/dashboard-test/` as the test's artifacts.

use crate::common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allot::wire::AuctionSpec;
use base64::Engine;
use common::{allot, http_with, serve_with_page, Bidders, Harness};
use futures::StreamExt;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Auctions opened besides the busy ones: the page must stay usable.
const AUCTIONS: usize = 10_000;

/// A headless Chromium with one page, driven over the DevTools protocol;
/// killed when dropped.
struct Browser {
    _child: Killed,
    ws: WebSocket<TcpStream>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let binary = std::env::var("ALLOT_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let child = Killed(
            Command::new(&binary)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    "--window-size=1400,1700",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{binary} does not start ({e}): scripts/install-chromium installs it")
                }),
        );
        // Chromium writes its DevTools port and browser path into the profile.
        let started = Instant::now();
        let (port, path) = loop {
            let file = profile.path().join("DevToolsActivePort");
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(Ok(port)), Some(path)) =
                (lines.next().map(str::parse::<u16>), lines.next())
            {
                break (port, path.to_string());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let address = format!("127.0.0.1:{port}");
        let connect = |path: &str| {
            let stream = TcpStream::connect(&address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let url = format!("ws://{address}{path}");
            tungstenite::client(url.as_str(), stream)
                .unwrap_or_else(|e| panic!("DevTools WebSocket {url}: {e}"))
                .0
        };
        // A page of its own, through the browser's endpoint.
        let mut browser = Browser {
            _child: child,
            ws: connect(&path),
            next: 0,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        browser.ws = connect(&format!("/devtools/page/{id}"));
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1700, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// One DevTools command and its result (events in between skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let request = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(request.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        loop {
            let message = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    panic!("{method}: no answer from chromium")
                }
                Err(e) => panic!("{method}: {e}"),
            };
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `expression` in the page; its value as JSON.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// A child process killed when dropped, a test that fails midway included
/// (Chromium's own processes end with it).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything the page shows, read from its DOM as a person reads it
/// (thousands separators dropped).
const READ_PAGE: &str = r##"(() => {
  if (!document.getElementById("conn")) return null;
  const n = (t) => t.replace(/,/g, "");
  const text = (id) => n(document.getElementById(id).textContent);
  const rows = (sel) => [...document.querySelectorAll(sel + " tbody tr")].map((tr) => {
    const row = { id: tr.dataset.id };
    for (const td of tr.querySelectorAll("td[data-k]")) row[td.dataset.k] = n(td.textContent);
    return row;
  });
  return {
    conn: document.getElementById("conn").textContent,
    updated: document.getElementById("updated").textContent,
    instances_count: text("instances-count"),
    auctions_total: text("auctions-total"),
    tries_total: text("tries-total"),
    confirmed_total: text("confirmed-total"),
    cancelled_total: text("cancelled-total"),
    open_total: text("open-total"),
    rate_tries: text("rate-tries"),
    rate_decided: text("rate-decided"),
    reply_p99: text("reply-p99"),
    decision_p99: text("decision-p99"),
    page_info: n(document.getElementById("page-info").textContent),
    auctions: rows("#auctions"),
    partitions: rows("#partitions"),
    instances: rows("#instances"),
  };
})()"##;

fn read_page(browser: &mut Browser) -> Value {
    tokio::task::block_in_place(|| browser.eval(READ_PAGE))
}

/// Polls the page until `want` holds (at most `patience`); the last read.
async fn until_page(
    browser: &mut Browser,
    patience: Duration,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let page = read_page(browser);
        if want(&page) {
            return page;
        }
        assert!(
            started.elapsed() < patience,
            "the page never showed {what}; it shows:\n{page:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn int(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a whole number: {v}"))
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("dashboard-test")
}

/// What `allot status --json` says, with `limit` auctions.
fn status(h: &Harness, limit: usize) -> Value {
    let out = allot(h, &["status", "--json", "--limit", &limit.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The page's auction rows, partitions and instances as `allot status`
/// would print them; differences listed.
fn differences(page: &Value, status: &Value, offset: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut same = |what: String, shown: String, said: String| {
        if shown != said {
            found.push(format!("{what}: page {shown}, status {said}"));
        }
    };
    same(
        "auctions".into(),
        page["auctions_total"].as_str().unwrap_or("").into(),
        status["auctions_total"].to_string(),
    );
    let ids = |list: &Value| -> Vec<String> {
        let mut ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    same(
        "instances".into(),
        format!("{:?}", ids(&page["instances"])),
        format!("{:?}", ids(&status["instances"])),
    );
    same(
        "instances count".into(),
        page["instances_count"].as_str().unwrap_or("").into(),
        status["instances"].as_array().unwrap().len().to_string(),
    );
    let shown = page["auctions"].as_array().unwrap();
    let said = status["auctions"].as_array().unwrap();
    let said = &said[offset.min(said.len())..];
    same(
        "auction rows".into(),
        shown.len().to_string(),
        said.len().min(shown.len().max(1)).to_string(),
    );
    for (row, fill) in shown.iter().zip(said) {
        for key in [
            "auction_id",
            "policy",
            "capacity",
            "tries",
            "confirmed",
            "open",
            "cancelled",
        ] {
            let said = match &fill[key] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            same(
                format!("{} {key}", fill["auction_id"]),
                row[key].as_str().unwrap_or("").into(),
                said,
            );
        }
    }
    let partitions = status["partitions"].as_array().unwrap();
    same(
        "partitions".into(),
        page["partitions"].as_array().unwrap().len().to_string(),
        partitions.len().to_string(),
    );
    for (row, p) in page["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(partitions)
    {
        for key in ["partition", "owner", "auctions", "events", "pending"] {
            let said = match &p[key] {
                Value::String(s) => s.clone(),
                Value::Null => "none".into(),
                other => other.to_string(),
            };
            same(
                format!("partition {} {key}", p["partition"]),
                row[key].as_str().unwrap_or("").into(),
                said,
            );
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_moves_with_the_load_and_then_equals_allot_status() {
    let h = Harness::server_only().await;
    let (_serve, addr) = serve_with_page(&h, h.data_dir(), &[], &[]).await;
    h.wait_until_serving().await;

    // 10,000 quiet auctions, and two busy ones.
    let started = Instant::now();
    let h_ref = &h;
    let opened: Vec<()> = futures::stream::iter(0..AUCTIONS)
        .map(|i| async move {
            h_ref
                .open(&format!("q{i:05}"), AuctionSpec::with_capacity(5))
                .await
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(opened.len(), AUCTIONS);
    h.open("hot-big", AuctionSpec::with_capacity(100_000)).await;
    h.open("hot-small", AuctionSpec::with_capacity(300)).await;
    eprintln!(
        "opened {} auctions in {:?}",
        AUCTIONS + 2,
        started.elapsed()
    );

    let mut browser = tokio::task::block_in_place(Browser::launch);
    let opened_at = Instant::now();
    tokio::task::block_in_place(|| browser.navigate(&format!("http://{addr}/")));
    let total = (AUCTIONS + 2).to_string();
    let page = until_page(
        &mut browser,
        Duration::from_secs(60),
        "every auction",
        |p| p["conn"] == "live" && p["auctions_total"] == total.as_str(),
    )
    .await;
    eprintln!(
        "the page showed all {total} auctions {:?} after it was opened",
        opened_at.elapsed()
    );
    // One page of rows, not ten thousand.
    assert_eq!(page["auctions"].as_array().unwrap().len(), 50, "{page:#}");
    assert_eq!(page["page_info"], format!("1-50 of {total}"));

    // A load while the page is open: its numbers move.
    let load = [
        Bidders::start(&h, "hot-big", 12, 500),
        Bidders::start(&h, "hot-small", 4, 500),
    ];
    let mut tries_seen = Vec::new();
    let mut rates_seen = Vec::new();
    let load_started = Instant::now();
    while load_started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let page = read_page(&mut browser);
        tries_seen.push(int(&page["tries_total"]));
        rates_seen.push((
            page["rate_tries"].as_str().unwrap_or("-").to_string(),
            page["rate_decided"].as_str().unwrap_or("-").to_string(),
        ));
    }
    let busy = read_page(&mut browser);
    tokio::task::block_in_place(|| {
        browser.screenshot(&artifacts().join("dashboard-under-load.png"))
    });
    let mut accepted = 0;
    for bidders in load {
        accepted += bidders.stop().await.len();
    }
    eprintln!("under load the page showed tries {tries_seen:?}, rates (tries/s, decisions/s) {rates_seen:?}; {accepted} bids accepted");
    let rises = tries_seen.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        rises >= 3,
        "the tries shown rose {rises} times: {tries_seen:?}"
    );
    let moving = |rate: &str| rate.parse::<f64>().is_ok_and(|r| r > 0.0);
    assert!(
        rates_seen
            .iter()
            .filter(|(t, d)| moving(t) && moving(d))
            .count()
            >= 3,
        "bids/s and decisions/s stayed still: {rates_seen:?}"
    );
    // The busiest first, with latencies measured.
    assert_eq!(busy["auctions"][0]["auction_id"], "hot-big", "{busy:#}");
    assert_eq!(busy["auctions"][1]["auction_id"], "hot-small", "{busy:#}");
    for latency in ["reply_p99", "decision_p99"] {
        assert!(
            busy[latency].as_str().unwrap().parse::<f64>().is_ok(),
            "{latency}: {busy:#}"
        );
    }

    // The load stopped: once everything is decided, the page equals
    // `allot status` exactly.
    h.wait_until_decided().await;
    let said = status(&h, 100);
    let started = Instant::now();
    let mut page;
    loop {
        page = read_page(&mut browser);
        let found = differences(&page, &said, 0);
        if found.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the page differs from allot status: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(page["auctions"][1]["auction_id"], "hot-small");
    assert_eq!(
        page["auctions"][1]["confirmed"], "300",
        "sold out: {page:#}"
    );
    assert_eq!(page["auctions"][1]["state"], "sold out", "{page:#}");
    let tries = int(&page["tries_total"]);
    let decided = int(&page["confirmed_total"]) + int(&page["cancelled_total"]);
    assert_eq!(tries, decided, "every try decided: {page:#}");
    assert_eq!(int(&page["open_total"]), 0);
    // Every try of the busy auctions was accepted by a bidder; the quiet
    // auctions have none.
    assert_eq!(tries as usize, accepted, "{page:#}");
    tokio::task::block_in_place(|| browser.screenshot(&artifacts().join("dashboard.png")));

    // The next page of auctions equals status's next 50.
    tokio::task::block_in_place(|| browser.eval("document.getElementById('next').click()"));
    let page = until_page(
        &mut browser,
        Duration::from_secs(20),
        "the second page",
        |p| p["page_info"] == format!("51-100 of {total}"),
    )
    .await;
    let found = differences(&page, &said, 50);
    assert!(found.is_empty(), "second page: {found:#?}");
    // A filter finds one auction among the 10,000.
    tokio::task::block_in_place(|| {
        browser.eval(
            "(() => { const f = document.getElementById('filter'); f.value = 'q01234'; \
             f.dispatchEvent(new Event('input')); })()",
        )
    });
    let page = until_page(
        &mut browser,
        Duration::from_secs(20),
        "the filtered auction",
        |p| p["auctions"].as_array().is_some_and(|a| a.len() == 1),
    )
    .await;
    assert_eq!(page["auctions"][0]["auction_id"], "q01234", "{page:#}");
    assert_eq!(page["auctions"][0]["capacity"], "5");
    assert_eq!(page["auctions"][0]["state"], "open");

    // The event stream is bounded by its page, not by the auctions.
    let state = http_with(&addr, "GET", "/dashboard/state?limit=50", &[]).await;
    let body = state.split("\r\n\r\n").nth(1).unwrap();
    eprintln!("one update with 10,002 auctions: {} bytes", body.len());
    assert!(body.len() < 200_000, "{} bytes", body.len());
    eprintln!(
        "screenshots: {}",
        artifacts().join("dashboard-under-load.png").display()
    );
    eprintln!(
        "            {}",
        artifacts().join("dashboard.png").display()
    );
}
