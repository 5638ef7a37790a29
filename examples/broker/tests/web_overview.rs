//! The web overview (`/` on the management listener) in a real browser:
//! headless Chromium loads the page while a client publishes continuously,
//! and the DOM it renders must list the queue with live rates that follow
//! the traffic. Needs `chromium` (`bash .ci/services` installs it); skipped
//! with `AMQP_INTEROP=0`, like the other tests that need outside programs.

mod support;

use amqp_codec::types::method::{BasicConsume, QueueDeclare};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use support::{Client, free_ports};

/// The Chromium binary: `$CHROMIUM`, else `chromium` or
/// `chromium-browser` on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

/// Runs headless Chromium on `url` with `args`, giving the page `budget_ms`
/// of virtual time; returns its stdout.
fn headless(chromium: &Path, profile: &Path, args: &[&str], budget_ms: u32, url: &str) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `<tr ...>...</tr>` of the queue table that lists `queue`.
fn queue_row<'a>(dom: &'a str, queue: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr data-queue=\"{queue}\""))?;
    let end = dom[start..].find("</tr>")?;
    Some(&dom[start..start + end])
}

/// The `data-<attr>` value of the first cell with class `class` in `row`.
fn cell_attr(row: &str, class: &str, attr: &str) -> f64 {
    let at = row
        .find(&format!("class=\"{class}\""))
        .unwrap_or_else(|| panic!("a cell of class {class} in {row}"));
    let rest = &row[at..];
    let key = format!("data-{attr}=\"");
    let v = rest.find(&key).unwrap() + key.len();
    let end = rest[v..].find('"').unwrap();
    rest[v..v + end].parse().unwrap()
}

#[test]
fn web_overview_shows_live_queue_rates_in_chromium() {
    if !support::interop("web_overview_shows_live_queue_rates_in_chromium") {
        return;
    }
    let chromium = chromium().expect(
        "chromium is not installed: run `bash .ci/services` (apt-get install chromium), or set AMQP_INTEROP=0",
    );
    let port = free_ports(15700..15710, 1)[0];
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let broker = support::Broker::start(
        5790..5800,
        &[
            "--management",
            &api.to_string(),
            "--prometheus",
            "none",
            "--management-sample-interval",
            "0.5",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(api).is_err() {
        assert!(Instant::now() < deadline, "the management listener is up");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The page itself is served without credentials, from the binary.
    let r = support::http(api, "GET", "/", None, "");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&r.body).contains("<script>"));

    // Traffic: a publisher into `web-q`, its messages consumed (no-ack) on
    // a second channel, `per_round` messages per 10 ms round.
    let stop = Arc::new(AtomicBool::new(false));
    let per_round = Arc::new(AtomicU32::new(1));
    let traffic = {
        let (stop, per_round, addr) = (stop.clone(), per_round.clone(), broker.addr);
        std::thread::spawn(move || {
            let mut c = Client::connect_on(addr, &[1, 2]);
            c.call_on(
                1,
                QueueDeclare {
                    queue: "web-q".try_into().unwrap(),
                    ..Default::default()
                },
            );
            c.call_on(
                2,
                BasicConsume {
                    queue: "web-q".try_into().unwrap(),
                    no_ack: true,
                    ..Default::default()
                },
            );
            while !stop.load(Ordering::Relaxed) {
                for i in 0..per_round.load(Ordering::Relaxed) {
                    c.publish(1, "", "web-q", &format!("order {i}"));
                }
                // A round trip moves the bytes both ways; what the
                // consumer got is dropped.
                c.call_on(
                    1,
                    QueueDeclare {
                        queue: "web-q".try_into().unwrap(),
                        passive: true,
                        ..Default::default()
                    },
                );
                c.events.clear();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));

    let profile = std::env::temp_dir().join(format!("amqp-broker-chromium-{}", std::process::id()));
    let url = format!("http://{api}/#/login/guest/guest");
    let load = || {
        let dom = headless(&chromium, &profile, &["--dump-dom"], 3000, &url);
        let row = queue_row(&dom, "web-q")
            .unwrap_or_else(|| panic!("the queue table lists web-q:\n{dom}"))
            .to_owned();
        (
            cell_attr(&row, "n rate pub", "rate"),
            cell_attr(&row, "n rate pub", "count"),
            cell_attr(&row, "n rate del", "rate"),
            dom,
        )
    };
    let (rate1, count1, deliver1, dom) = load();
    assert!(dom.contains("id=\"totals\""), "overview totals");
    assert!(dom.contains("<table id=\"connections\""), "connections");
    assert!(dom.contains("<table id=\"exchanges\""), "exchanges");
    assert!(rate1 > 0.0 && deliver1 > 0.0, "{rate1} {deliver1}");
    // Ten times the traffic: the next load's rates follow.
    per_round.store(10, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(2000));
    let (rate2, count2, deliver2, _) = load();
    assert!(count2 > count1, "publish count {count1} then {count2}");
    assert!(
        rate2 > rate1 * 2.0 && deliver2 > deliver1 * 2.0,
        "rates {rate1} then {rate2}, {deliver1} then {deliver2}"
    );

    // The queue page: its bindings and the get-messages form.
    let page = headless(
        &chromium,
        &profile,
        &["--dump-dom"],
        3000,
        &format!("http://{api}/#/login/guest/guest/queues/%2F/web-q"),
    );
    assert!(page.contains("Queue web-q"), "{page}");
    assert!(page.contains("<table id=\"bindings\""), "{page}");
    assert!(
        page.contains("<i>(AMQP default)</i>"),
        "the default binding"
    );
    assert!(page.contains("<form class=\"inline\" id=\"getform\""));

    // A screenshot of the overview.
    let shot =
        std::env::temp_dir().join(format!("amqp-broker-overview-{}.png", std::process::id()));
    let _ = std::fs::remove_file(&shot);
    headless(
        &chromium,
        &profile,
        &[&format!("--screenshot={}", shot.display())],
        6000,
        &url,
    );
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a PNG");
    eprintln!("screenshot: {}", shot.display());

    // Without credentials the page shows its login form.
    let anon = headless(
        &chromium,
        &profile.with_extension("anon"),
        &["--dump-dom"],
        2000,
        &format!("http://{api}/"),
    );
    assert!(anon.contains("id=\"login\""), "{anon}");

    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let _ = std::fs::remove_dir_all(profile.with_extension("anon"));
    assert!(broker.terminate().is_some_and(|s| s.success()));
}
