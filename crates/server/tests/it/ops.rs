//! Operations: `GET /metrics` parsed with Prometheus' own Python parser (`prometheus_client`)
//! against a real server while a workload moves its figures, and the web console driven in
//! headless Chromium through chromedriver (WebDriver, with `thirtyfour`). scripts/setup.sh
//! installs chromium, chromium-driver and prometheus_client.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use thirtyfour::prelude::*;

use crate::http::{ROOT_PASSWORD, Server, data_dir, setup};

/// A sample's labels, sorted by name.
type Labels = Vec<(String, String)>;

/// One sample: its name (with `_total`, `_bucket`, ...) and labels.
type Samples = HashMap<(String, Labels), f64>;

/// Scrapes `/metrics` as root and parses it with `prometheus_client.parser`; panics if the text
/// does not parse.
async fn scrape(server: &Server) -> Samples {
    let resp = reqwest::Client::new()
        .get(server.url("/metrics"))
        .basic_auth("root", Some(ROOT_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = resp.text().await.unwrap();
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = []\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       out.append([s.name, sorted(s.labels.items()), s.value])\n\
        print(json.dumps(out))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs prometheus_client)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the exposition does not parse: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let parsed: Vec<(String, Labels, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    let count = parsed.len();
    let samples: Samples = parsed.into_iter().map(|(name, labels, value)| ((name, labels), value)).collect();
    assert_eq!(samples.len(), count, "a series appears twice:\n{text}");
    samples
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    labels.sort();
    samples.get(&(name.to_owned(), labels)).copied()
}

fn sum(samples: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name && with.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_the_workload() {
    let (_dir, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let http = reqwest::Client::new();

    // "auth" (the default): no login, no metrics; any role may read them.
    let resp = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = http.get(server.url("/metrics")).basic_auth("u_user", Some("pw")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http.get(server.url("/metrics")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let before = scrape(&server).await;
    assert_eq!(get(&before, "topicfusion_topic_messages_total", &[("topic", "app.ev"), ("partition", "0")]), Some(0.0));
    let inserts_before = get(&before, "topicfusion_statements_total", &[("kind", "INSERT"), ("outcome", "ok")]);

    server.sql("INSERT INTO app.t VALUES (1, 'a'), (2, 'b'); INSERT INTO app.t VALUES (3, 'c')").await;
    // Two commits, each observed once (scraping commits nothing).
    let commits = |s: &Samples| get(s, "topicfusion_commit_duration_seconds_count", &[]).unwrap();
    assert_eq!(commits(&scrape(&server).await) - commits(&before), 2.0);
    let (status, _) = server
        .post("/v1/api/sql", Some(("root", ROOT_PASSWORD)), json!({"sql": "INSERT INTO app.t VALUES (1, 'dup')"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = server
        .post(
            "/v1/api/topics/consume",
            Some(("u_service", "pw")),
            json!({"topic_id": "app.ev", "group_id": "billing", "start": "Earliest", "limit": 2, "timeout_ms": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);

    let mid = scrape(&server).await;
    let topic = [("topic", "app.ev"), ("partition", "0")];
    assert_eq!(get(&mid, "topicfusion_topic_messages_total", &topic), Some(3.0));
    assert_eq!(get(&mid, "topicfusion_topic_retained_messages", &topic), Some(3.0));
    assert!(get(&mid, "topicfusion_topic_bytes", &topic).unwrap() > 0.0);
    let group = [("topic", "app.ev"), ("group", "billing"), ("partition", "0")];
    assert_eq!(get(&mid, "topicfusion_consumer_group_lag", &group), Some(3.0));
    assert_eq!(
        get(&mid, "topicfusion_consumer_group_claimed", &[("topic", "app.ev"), ("group", "billing")]),
        Some(2.0)
    );
    assert_eq!(get(&mid, "topicfusion_rows_written_total", &[("table", "app.t")]), Some(3.0));
    let ok = ("outcome", "ok");
    assert_eq!(
        get(&mid, "topicfusion_statements_total", &[("kind", "INSERT"), ok]).unwrap() - inserts_before.unwrap_or(0.0),
        2.0
    );
    assert_eq!(get(&mid, "topicfusion_statements_total", &[("kind", "INSERT"), ("outcome", "error")]), Some(1.0));
    assert_eq!(get(&mid, "topicfusion_statements_total", &[("kind", "CONSUME"), ok]), Some(1.0));
    assert!(get(&mid, "topicfusion_statement_duration_seconds_count", &[("kind", "INSERT")]).unwrap() >= 3.0);
    // With sync on (the default) commits were fsynced.
    assert!(get(&mid, "topicfusion_wal_sync_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert!(
        get(&mid, "topicfusion_http_requests_total", &[("route", "/v1/api/sql"), ("status", "200")]).unwrap() >= 1.0
    );
    assert_eq!(get(&mid, "topicfusion_http_requests_total", &[("route", "/v1/api/sql"), ("status", "400")]), Some(1.0));
    assert!(
        get(&mid, "topicfusion_http_request_duration_seconds_count", &[("route", "/v1/api/topics/consume")]).is_some()
    );
    for gauge in ["topicfusion_rocksdb_pending_compaction_bytes", "topicfusion_rocksdb_memtable_bytes"] {
        assert!(get(&mid, gauge, &[]).is_some(), "{gauge} missing");
    }
    assert!(get(&mid, "topicfusion_rocksdb_memtable_bytes", &[]).unwrap() > 0.0);
    assert_eq!(get(&mid, "topicfusion_pg_connections", &[]), Some(0.0));
    assert_eq!(get(&mid, "topicfusion_consume_waiting", &[]), Some(0.0));

    // ACK lowers the lag; a waiting long poll and a PostgreSQL connection are seen while open.
    let (status, body) = server
        .post(
            "/v1/api/topics/ack",
            Some(("u_service", "pw")),
            json!({"topic_id": "app.ev", "group_id": "billing", "partition_id": 0, "upto_offset": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=root password={ROOT_PASSWORD}",
            server.pg.split(':').next().unwrap(),
            server.pg.split(':').nth(1).unwrap()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let waiting = {
        let url = server.url("/v1/api/topics/consume");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .basic_auth("u_service", Some("pw"))
                .json(&json!({"topic_id": "app.ev", "group_id": "other", "start": "Latest", "timeout_ms": 20000}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.long_polls().await == 0 {
        assert!(Instant::now() < deadline, "the long poll never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = scrape(&server).await;
    assert_eq!(get(&after, "topicfusion_consumer_group_lag", &group), Some(1.0));
    assert_eq!(get(&after, "topicfusion_consumer_group_claimed", &[("topic", "app.ev"), ("group", "billing")]), None);
    assert_eq!(get(&after, "topicfusion_pg_connections", &[]), Some(1.0));
    assert_eq!(get(&after, "topicfusion_consume_waiting", &[]), Some(1.0));
    server.sql("INSERT INTO app.t VALUES (4, 'd')").await;
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
    drop(client);
    let _ = connection.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(&server).await;
        if get(&now, "topicfusion_pg_connections", &[]) == Some(0.0) {
            assert_eq!(get(&now, "topicfusion_consume_waiting", &[]), Some(0.0));
            break;
        }
        assert!(Instant::now() < deadline, "a closed PostgreSQL connection is still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Dead letters and retention count what they did.
    server
        .sql(
            "CREATE TOPIC app.dlq; CREATE TOPIC app.small WITH (retention_max_bytes = 1);
             ALTER TOPIC app.small ADD SOURCE app.t ON INSERT;
             INSERT INTO app.t VALUES (5, 'e'), (6, 'f'), (7, 'g')",
        )
        .await;
    let consume_dead = "CONSUME FROM app.ev GROUP 'flaky' FROM EARLIEST LIMIT 1
        WITH (visibility_timeout_ms = 100, max_deliveries = 1, dead_letter_topic = 'app.dlq')";
    server.sql(consume_dead).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.sql(consume_dead).await;
    // Claims of messages retention deletes stop counting.
    server.sql("CONSUME FROM app.small GROUP 'c' FROM EARLIEST").await;
    server.sql("RUN RETENTION ON app.small").await;
    let deleted = server.sql("SELECT sum(messages_deleted) FROM system.jobs WHERE topic = 'app.small'").await;
    let deleted = deleted["results"][0]["rows"][0][0].as_f64().unwrap();
    assert!(deleted > 0.0);
    let last = scrape(&server).await;
    assert_eq!(get(&last, "topicfusion_dead_letters_total", &[("topic", "app.ev"), ("group", "flaky")]), Some(1.0));
    assert_eq!(get(&last, "topicfusion_topic_messages_total", &[("topic", "app.dlq"), ("partition", "0")]), Some(1.0));
    assert_eq!(get(&last, "topicfusion_retention_deleted_messages_total", &[("topic", "app.small")]), Some(deleted));
    let retained = get(&last, "topicfusion_topic_retained_messages", &[("topic", "app.small"), ("partition", "0")]);
    let claimed = get(&last, "topicfusion_consumer_group_claimed", &[("topic", "app.small"), ("group", "c")]);
    assert_eq!(claimed.unwrap_or(0.0), retained.unwrap());
    // A dropped group's dead letters go with it.
    server.sql("DROP CONSUMER GROUP 'flaky' ON app.ev").await;
    let dropped = scrape(&server).await;
    assert_eq!(get(&dropped, "topicfusion_dead_letters_total", &[("topic", "app.ev"), ("group", "flaky")]), None);
    assert_eq!(sum(&last, "topicfusion_rows_written_total", &[("table", "app.t")]), 7.0);
    // A dropped table's series goes with it.
    server.sql("CREATE TABLE app.gone (id INT PRIMARY KEY); INSERT INTO app.gone VALUES (1)").await;
    assert_eq!(get(&scrape(&server).await, "topicfusion_rows_written_total", &[("table", "app.gone")]), Some(1.0));
    server.sql("DROP TABLE app.gone").await;
    assert_eq!(get(&scrape(&server).await, "topicfusion_rows_written_total", &[("table", "app.gone")]), None);
    // Series whose label values run together alike stay apart: ("app.wide", "10") and
    // ("app.wide1", "0"); groups "g" and "g1" at partitions "10" and "0".
    server
        .sql(
            "CREATE TOPIC app.wide PARTITIONS 12; CREATE TOPIC app.wide1;
             ALTER TOPIC app.wide1 ADD SOURCE app.t ON INSERT;
             INSERT INTO app.t VALUES (8, 'h'), (9, 'i');
             CONSUME FROM app.wide GROUP 'g' FROM EARLIEST; CONSUME FROM app.wide GROUP 'g1' FROM EARLIEST",
        )
        .await;
    let wide = scrape(&server).await;
    let series = |name: &str, topic: &str| {
        wide.keys().filter(|(n, labels)| n == name && labels.contains(&("topic".into(), topic.into()))).count()
    };
    assert_eq!(series("topicfusion_topic_messages_total", "app.wide"), 12);
    assert_eq!(
        get(&wide, "topicfusion_topic_messages_total", &[("topic", "app.wide"), ("partition", "10")]),
        Some(0.0)
    );
    assert_eq!(
        get(&wide, "topicfusion_topic_messages_total", &[("topic", "app.wide1"), ("partition", "0")]),
        Some(2.0)
    );
    assert_eq!(series("topicfusion_consumer_group_lag", "app.wide"), 24);
    // A partition added after a group stored its positions lags from its log start.
    server.sql("CONSUME FROM app.wide1 GROUP 'late' FROM EARLIEST; ALTER TOPIC app.wide1 SET PARTITIONS 2").await;
    server.sql("INSERT INTO app.t VALUES (100, 'x'), (101, 'y'), (102, 'z'), (103, 'w')").await;
    let grown = scrape(&server).await;
    let lag = |p: &str| {
        get(&grown, "topicfusion_consumer_group_lag", &[("topic", "app.wide1"), ("group", "late"), ("partition", p)])
    };
    let next =
        |p: &str| get(&grown, "topicfusion_topic_messages_total", &[("topic", "app.wide1"), ("partition", p)]).unwrap();
    assert_eq!(lag("0").unwrap() + lag("1").expect("the new partition's lag"), next("0") + next("1"));
    assert_eq!(get(&wide, "topicfusion_statements_total", &[("kind", "UNPARSED"), ("outcome", "error")]), None);
    let (status, _) = server.post("/v1/api/sql", Some(("root", ROOT_PASSWORD)), json!({"sql": "SELEC 1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let unparsed = scrape(&server).await;
    assert_eq!(
        get(&unparsed, "topicfusion_statements_total", &[("kind", "UNPARSED"), ("outcome", "error")]),
        Some(1.0)
    );

    // No label names a user, an offset or SQL text.
    for (name, labels) in last.keys() {
        for (k, _) in labels {
            assert!(
                ["kind", "outcome", "table", "topic", "partition", "group", "route", "status", "le"]
                    .contains(&k.as_str()),
                "{name}: label {k}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_open() {
    let (_dir, data) = data_dir();
    let server = Server::start(&data, "metrics = \"open\"\n");
    let resp = reqwest::Client::new().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("# TYPE topicfusion_commit_duration_seconds histogram"), "{text}");
    // Still only what the configuration knows.
    let (_dir2, data2) = data_dir();
    let refused = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
        .args(["serve", "--data-dir"])
        .arg(&data2)
        .arg("--config")
        .arg({
            let config = data2.with_extension("toml");
            std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\npg_listen = \"\"\nmetrics = \"public\"\n")
                .unwrap();
            config
        })
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("metrics"), "{stderr}");
}

/// chromedriver on a free port, killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/setup.sh installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium as the environment allows it here: no sandbox (root), no GPU, and no
/// background connections (the machine has no network; without these flags Chromium retries
/// them at every start).
async fn browser(driver: &ChromeDriver, profile: &Path) -> WebDriver {
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary("/usr/bin/chromium").unwrap();
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ] {
        caps.add_arg(arg).unwrap();
    }
    caps.add_arg(&format!("--user-data-dir={}", profile.display())).unwrap();
    WebDriver::new(driver.url.clone(), caps).await.expect("a Chromium session")
}

/// Waits until the element's text satisfies `ok` (the console refreshes every 2 s).
async fn wait_text(driver: &WebDriver, by: By, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        if let Ok(e) = driver.find(by.clone()).await
            && let Ok(text) = e.text().await
        {
            if ok(&text) {
                return text;
            }
            last = text;
        }
        assert!(Instant::now() < deadline, "{what}: never shown; last text: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(driver: &WebDriver, user: &str, password: &str) {
    let name = driver.find(By::Id("login-user")).await.unwrap();
    name.clear().await.unwrap();
    name.send_keys(user).await.unwrap();
    let pw = driver.find(By::Id("login-password")).await.unwrap();
    pw.clear().await.unwrap();
    pw.send_keys(password).await.unwrap();
    driver.find(By::Id("login-submit")).await.unwrap().click().await.unwrap();
}

/// The rows of a table as text, cell by cell, read in one script (the console replaces the rows
/// every 2 s: elements found one request earlier may be gone).
async fn table_rows(driver: &WebDriver, id: &str) -> Vec<Vec<String>> {
    let script = "return [...document.querySelectorAll(`#${arguments[0]} tbody tr`)]
        .map((tr) => [...tr.cells].map((td) => td.textContent));";
    driver.execute(script, vec![json!(id)]).await.unwrap().convert().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let (dir, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'first'), (2, 'second'), (3, 'third')").await;
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = |name: &str| {
        let path = shots.join(name);
        // Kept for a person to look at when asked for (docs/operations.md shows them).
        if let Some(keep) = std::env::var_os("TOPICFUSION_SCREENSHOTS") {
            let keep = Path::new(&keep).join(name);
            return (path, Some(keep));
        }
        (path, None)
    };
    let chromedriver = ChromeDriver::start();
    let driver = browser(&chromedriver, &dir.path().join("profile")).await;
    let save = async |driver: &WebDriver, name: &str| {
        let (path, keep) = shot(name);
        driver.screenshot(&path).await.unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000, "{name} is empty");
        if let Some(keep) = keep {
            std::fs::create_dir_all(keep.parent().unwrap()).unwrap();
            std::fs::copy(&path, keep).unwrap();
        }
    };

    // Login: a wrong password shows the API's error; the right one opens the overview.
    driver.goto(server.url("/console")).await.unwrap();
    log_in(&driver, "root", "wrong").await;
    let error = wait_text(&driver, By::Id("login-error"), "login error", |t| !t.is_empty()).await;
    assert!(error.contains("unauthorized") && error.contains("wrong user name or password"), "{error}");
    save(&driver, "login-error.png").await;
    log_in(&driver, "root", ROOT_PASSWORD).await;
    wait_text(&driver, By::Id("who-name"), "the logged-in user", |t| t == "root (system)").await;

    // Overview: the topic created through SQL with its message count.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = table_rows(&driver, "topics-table").await;
        if rows.iter().any(|r| r[0] == "app.ev" && r[1] == "0" && r[2] == "3" && r[3] == "3") {
            break;
        }
        assert!(Instant::now() < deadline, "app.ev with 3 messages never shown: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Lag appears once a group reads, and drops when it ACKs.
    let (status, _) = server
        .post(
            "/v1/api/topics/consume",
            Some(("u_service", "pw")),
            json!({"topic_id": "app.ev", "group_id": "billing", "start": "Earliest", "limit": 3, "timeout_ms": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let group_row = async |lag: &str, claimed: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = table_rows(&driver, "groups-table").await;
            if rows.iter().any(|r| r[0] == "app.ev" && r[1] == "billing" && r[5] == lag && r[6] == claimed) {
                return;
            }
            assert!(Instant::now() < deadline, "billing with lag {lag}, claimed {claimed} never shown: {rows:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    group_row("3", "3").await;
    save(&driver, "overview-lagging.png").await;
    let (status, _) = server
        .post(
            "/v1/api/topics/ack",
            Some(("u_service", "pw")),
            json!({"topic_id": "app.ev", "group_id": "billing", "partition_id": 0, "upto_offset": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    group_row("0", "0").await;
    save(&driver, "overview.png").await;

    // The lag chart of the group, with the samples taken so far.
    driver.find(By::Css("#nav a[data-page=lag]")).await.unwrap().click().await.unwrap();
    wait_text(&driver, By::Id("lag-now"), "the current lag", |t| t == "0").await;
    // Read in one script: the chart is redrawn every 2 s.
    let points: String = driver
        .execute("return document.querySelector('#lag-chart polyline').getAttribute('points');", vec![])
        .await
        .unwrap()
        .convert()
        .unwrap();
    assert!(points.split(' ').count() >= 2, "a line of samples: {points}");
    save(&driver, "lag.png").await;

    // The message browser: a stateless read shows the payload; nothing is claimed.
    driver.find(By::Css("#nav a[data-page=messages]")).await.unwrap().click().await.unwrap();
    wait_text(&driver, By::Id("browse-topic"), "the topic list", |t| t.contains("app.ev")).await;
    thirtyfour::components::SelectElement::new(&driver.find(By::Id("browse-topic")).await.unwrap())
        .await
        .unwrap()
        .select_by_value("app.ev")
        .await
        .unwrap();
    thirtyfour::components::SelectElement::new(&driver.find(By::Id("browse-from")).await.unwrap())
        .await
        .unwrap()
        .select_by_value("earliest")
        .await
        .unwrap();
    driver.find(By::Id("browse-submit")).await.unwrap().click().await.unwrap();
    let shown = wait_text(&driver, By::Id("messages-table"), "messages", |t| t.contains("second")).await;
    assert!(shown.contains("\"v\": \"first\"") || shown.contains("\"v\":\"first\""), "{shown}");
    save(&driver, "messages.png").await;
    let claims = server.sql("SELECT count(*) FROM system.topic_claims").await;
    assert_eq!(claims["results"][0]["rows"][0][0], 0);

    // The SQL editor: a result grid, and a syntax error as the API returns it.
    driver.find(By::Css("#nav a[data-page=sql]")).await.unwrap().click().await.unwrap();
    let editor = driver.find(By::Id("sql-text")).await.unwrap();
    editor.clear().await.unwrap();
    editor
        .send_keys(
            "SELECT count(*) AS n, max(v) AS last FROM app.t;
             SELECT 9223372036854775807 AS big, CAST(1.10 AS DECIMAL(10,2)) AS d, NULL AS nothing",
        )
        .await
        .unwrap();
    driver.find(By::Id("sql-run")).await.unwrap().click().await.unwrap();
    let grid = wait_text(&driver, By::Id("sql-results"), "the result grid", |t| t.contains("third")).await;
    assert!(grid.contains('3') && grid.contains("last"), "{grid}");
    // Shown as the server sent them: no 64-bit integer or decimal rounded by JavaScript.
    for exact in ["9223372036854775807", "1.10", "NULL", "1. 1 row", "2. 1 row"] {
        assert!(grid.contains(exact), "{exact} not in {grid}");
    }
    save(&driver, "sql.png").await;
    editor.clear().await.unwrap();
    editor.send_keys("SELEC 1").await.unwrap();
    driver.find(By::Id("sql-run")).await.unwrap().click().await.unwrap();
    let error = wait_text(&driver, By::Id("sql-error"), "the syntax error", |t| !t.is_empty()).await;
    assert!(error.starts_with("syntax_error"), "{error}");
    assert!(driver.find(By::Id("sql-results")).await.unwrap().text().await.unwrap().is_empty());
    save(&driver, "sql-error.png").await;

    // Users, for system and dba.
    driver.find(By::Css("#nav a[data-page=users]")).await.unwrap().click().await.unwrap();
    wait_text(&driver, By::Id("users-table"), "the users", |t| t.contains("u_service") && t.contains("service")).await;
    driver.find(By::Id("user-name")).await.unwrap().send_keys("carol").await.unwrap();
    driver.find(By::Id("user-password")).await.unwrap().send_keys("carol-pw").await.unwrap();
    driver.find(By::Css("#user-form button")).await.unwrap().click().await.unwrap();
    wait_text(&driver, By::Id("users-table"), "the new user", |t| t.contains("carol")).await;
    save(&driver, "users.png").await;

    // A dba is not offered what only system may do: granting role system, dropping a system user.
    driver.find(By::Id("logout")).await.unwrap().click().await.unwrap();
    log_in(&driver, "u_dba", "pw").await;
    wait_text(&driver, By::Id("who-name"), "the dba", |t| t == "u_dba (dba)").await;
    driver.find(By::Css("#nav a[data-page=users]")).await.unwrap().click().await.unwrap();
    wait_text(&driver, By::Id("users-table"), "the users", |t| t.contains("u_system")).await;
    let mut roles = Vec::new();
    for option in driver.find_all(By::Css("#user-role option")).await.unwrap() {
        roles.push(option.text().await.unwrap());
    }
    assert_eq!(roles, ["user", "service", "dba"]);
    let script = "return [...document.querySelectorAll('#users-table tbody tr')]
        .map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent, tr.querySelector('button') !== null]);";
    let users: Vec<(String, String, bool)> = driver.execute(script, vec![]).await.unwrap().convert().unwrap();
    assert!(users.len() >= 5, "{users:?}");
    for (name, role, offered) in users {
        assert_eq!(offered, role != "system" && name != "u_dba", "{name} ({role})");
    }

    // A service logs in: no user management offered, and the API refuses it anyway.
    driver.find(By::Id("logout")).await.unwrap().click().await.unwrap();
    log_in(&driver, "u_service", "pw").await;
    wait_text(&driver, By::Id("who-name"), "the service user", |t| t == "u_service (service)").await;
    assert!(!driver.find(By::Css("#nav a[data-page=users]")).await.unwrap().is_displayed().await.unwrap());
    assert!(driver.find(By::Css("#nav a[data-page=messages]")).await.unwrap().is_displayed().await.unwrap());
    driver.goto(server.url("/console/#users")).await.unwrap();
    wait_text(&driver, By::Id("who-name"), "the service user", |t| t == "u_service (service)").await;
    assert!(!driver.find(By::Id("page-users")).await.unwrap().is_displayed().await.unwrap());
    assert!(driver.find(By::Id("page-overview")).await.unwrap().is_displayed().await.unwrap());
    save(&driver, "service-overview.png").await;
    driver.find(By::Css("#nav a[data-page=sql]")).await.unwrap().click().await.unwrap();
    let editor = driver.find(By::Id("sql-text")).await.unwrap();
    editor.clear().await.unwrap();
    editor.send_keys("SELECT * FROM system.users").await.unwrap();
    driver.find(By::Id("sql-run")).await.unwrap().click().await.unwrap();
    let error = wait_text(&driver, By::Id("sql-error"), "the refusal", |t| !t.is_empty()).await;
    assert!(error.starts_with("forbidden"), "{error}");
    save(&driver, "service-refused.png").await;
    driver.quit().await.unwrap();

    // The console's files: the right types, and an unknown one is a 404.
    let http = reqwest::Client::new();
    // A script's 401 challenges Bearer only (no browser password dialog); others get Basic too.
    let login = |script: bool| {
        let mut req = http.post(server.url("/v1/api/auth/login")).json(&json!({"username": "root", "password": "no"}));
        if script {
            req = req.header("x-requested-with", "topicfusion-console");
        }
        req.send()
    };
    let challenge = |r: &reqwest::Response| r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let (script, plain) = (login(true).await.unwrap(), login(false).await.unwrap());
    assert_eq!(
        (script.status(), challenge(&script).as_str()),
        (StatusCode::UNAUTHORIZED, "Bearer realm=\"topicfusion\"")
    );
    assert!(challenge(&plain).contains("Basic"), "{}", challenge(&plain));
    let js = http.get(server.url("/console/app.js")).send().await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    let missing = http.get(server.url("/console/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
