//! The HTTP API, tested against the real `topicfusion serve` process on `127.0.0.1:0` with a real
//! HTTP client (reqwest): authentication and the role matrix, long polling, competing consumers,
//! malformed and oversized requests, restarts and SIGTERM during long polls, and `sql --url`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

pub const ROOT_PASSWORD: &str = "root-secret";

/// A running server process; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    /// The PostgreSQL protocol's `HOST:PORT`.
    pub pg: String,
    http: reqwest::Client,
}

impl Server {
    /// Starts `topicfusion serve` on a free port with `extra_config` appended to the TOML file.
    pub fn start(data_dir: &Path, extra_config: &str) -> Self {
        let config = data_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:0\"\npg_listen = \"127.0.0.1:0\"\n{extra_config}"),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("TOPICFUSION_ROOT_PASSWORD", ROOT_PASSWORD)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut address = |scheme: &str| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let prefix = format!("listening on {scheme}");
            line.trim().strip_prefix(&prefix).unwrap_or_else(|| panic!("no {scheme} address: {line:?}")).to_owned()
        };
        let base = format!("http://{}", address("http://"));
        let pg = address("postgres://");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Self { child, base, pg, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON with HTTP Basic credentials; returns the status and the JSON body.
    pub async fn post(&self, path: &str, auth: Option<(&str, &str)>, body: Value) -> (StatusCode, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Runs SQL as root and returns the body; panics on an error status.
    pub async fn sql(&self, sql: &str) -> Value {
        let (status, body) = self.post("/v1/api/sql", Some(("root", ROOT_PASSWORD)), json!({ "sql": sql })).await;
        assert_eq!(status, StatusCode::OK, "{sql}: {body}");
        body
    }

    pub async fn long_polls(&self) -> u64 {
        let body: Value = self.http.get(self.url("/v1/api/health")).send().await.unwrap().json().await.unwrap();
        body["long_polls"].as_u64().unwrap()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, data)
}

/// Creates `app.t (id BIGINT PRIMARY KEY, v TEXT)` feeding topic `ev` (1 partition) and one user
/// per role, named after the role, password `pw`.
pub async fn setup(server: &Server) {
    server
        .sql(
            "CREATE SCHEMA app; CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT);
             CREATE TOPIC app.ev; ALTER TOPIC app.ev ADD SOURCE app.t ON INSERT;
             CREATE USER u_user WITH PASSWORD 'pw' ROLE user;
             CREATE USER u_service WITH PASSWORD 'pw' ROLE service;
             CREATE USER u_dba WITH PASSWORD 'pw' ROLE dba;
             CREATE USER u_system WITH PASSWORD 'pw' ROLE system",
        )
        .await;
}

#[tokio::test]
async fn the_role_matrix_for_consume_ack_and_sql() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'a')").await;
    let consume = json!({ "topic_id": "app.ev", "group_id": "g", "start": "Earliest", "limit": 10 });
    let ack = json!({ "topic_id": "app.ev", "group_id": "g", "partition_id": 0, "upto_offset": 0 });
    let topic_sql = json!({ "sql": "CONSUME FROM app.ev GROUP 'g2' FROM EARLIEST" });
    let ddl = json!({ "sql": "CREATE TOPIC app.other" });
    for (path, body) in [
        ("/v1/api/topics/consume", &consume),
        ("/v1/api/topics/ack", &ack),
        ("/v1/api/sql", &topic_sql),
        ("/v1/api/sql", &ddl),
    ] {
        let (status, err) = server.post(path, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without credentials");
        assert_eq!(err["error"]["code"], "unauthorized");
        let (status, _) = server.post(path, Some(("u_service", "wrong")), body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with a wrong password");
        let (status, _) = server.post(path, Some(("nobody", "pw")), body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} as an unknown user");
        let (status, err) = server.post(path, Some(("u_user", "pw")), body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} as role user: {err}");
        assert_eq!(err["error"]["code"], "forbidden");
        let is_ddl = body == &ddl;
        let (status, err) = server.post(path, Some(("u_service", "pw")), body.clone()).await;
        let expected = if is_ddl { StatusCode::FORBIDDEN } else { StatusCode::OK };
        assert_eq!(status, expected, "{path} as role service: {err}");
        for user in ["u_dba", "u_system"] {
            let mut body = body.clone();
            if is_ddl {
                body = json!({ "sql": format!("CREATE TOPIC app.other_{user}") });
            }
            let (status, err) = server.post(path, Some((user, "pw")), body).await;
            assert_eq!(status, StatusCode::OK, "{path} as {user}: {err}");
        }
    }
    // Every role reads and writes user tables; only dba and system read system.users.
    for user in ["u_user", "u_service", "u_dba", "u_system"] {
        let (status, _) = server.post("/v1/api/sql", Some((user, "pw")), json!({"sql": "SELECT * FROM app.t"})).await;
        assert_eq!(status, StatusCode::OK, "{user}");
        let (status, _) =
            server.post("/v1/api/sql", Some((user, "pw")), json!({"sql": "SELECT name FROM system.users"})).await;
        let allowed = user == "u_dba" || user == "u_system";
        assert_eq!(status == StatusCode::OK, allowed, "{user} reading system.users");
    }
    // Statements that touch the server's files, and SET: dba and system only.
    for sql in [
        "COPY app.t TO '/tmp/tf-copy-test.csv'",
        "COPY app.t FROM '/etc/hostname'",
        "SET datafusion.execution.batch_size = 100",
        "RUN RETENTION",
        "CREATE TABLE app.copied AS SELECT * FROM app.t",
    ] {
        let (status, _) = server.post("/v1/api/sql", Some(("u_service", "pw")), json!({ "sql": sql })).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{sql}");
    }
    let (status, err) = server.post("/v1/api/sql", Some(("u_dba", "pw")), json!({ "sql": "RUN RETENTION" })).await;
    assert_eq!(status, StatusCode::OK, "{err}");
    // Users are managed by dba and system; a dba cannot create or promote system users.
    let (status, err) = server
        .post("/v1/api/sql", Some(("u_service", "pw")), json!({"sql": "CREATE USER x WITH PASSWORD 'p' ROLE user"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (status, err) = server
        .post("/v1/api/sql", Some(("u_dba", "pw")), json!({"sql": "CREATE USER x WITH PASSWORD 'p' ROLE system"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "forbidden", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("needs role system"), "{err}");
    // The cluster's membership is role system's (checked before anything else of the statement).
    let (status, err) =
        server.post("/v1/api/sql", Some(("u_dba", "pw")), json!({"sql": "ALTER CLUSTER REMOVE NODE 2"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("needs role system"), "{err}");
    let (status, err) =
        server.post("/v1/api/sql", Some(("u_system", "pw")), json!({"sql": "ALTER CLUSTER REMOVE NODE 2"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("without [cluster]"), "{err}");
    // Anyone changes their own password; the old one stops working.
    let (status, _) = server
        .post("/v1/api/sql", Some(("u_user", "pw")), json!({"sql": "ALTER USER u_user SET PASSWORD 'pw2'"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.post("/v1/api/sql", Some(("u_user", "pw")), json!({"sql": "SELECT 1"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // system.users never shows a hash.
    let body = server.sql("SELECT * FROM system.users ORDER BY name").await;
    let columns: Vec<&str> =
        body["results"][0]["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["name", "role", "created_at"]);
    assert!(!body.to_string().contains("argon2"), "{body}");
}

/// Each request has its own session: a `SET` applies to the statements after it in the same
/// request and to no other request (concurrent or later), and root's `SET` of the default schema
/// in one request cannot let a role `user` request read `system.users`.
#[tokio::test]
async fn each_request_has_its_own_session() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'a')").await;
    let body = server.sql("SET datafusion.catalog.default_schema = 'app'; SELECT count(*) AS n FROM t").await;
    assert_eq!(body["results"][1]["rows"], json!([[1]]), "{body}");
    // Requests in flight at once, half of them setting the schema: each sees only its own SET.
    let requests = (0..16).map(|i| {
        let sql = match i % 2 {
            0 => "SET datafusion.catalog.default_schema = 'system'; SELECT count(*) AS n FROM users",
            _ => "SELECT count(*) AS n FROM t",
        };
        server.post("/v1/api/sql", Some(("root", ROOT_PASSWORD)), json!({ "sql": sql }))
    });
    for (i, (status, body)) in futures::future::join_all(requests).await.into_iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(status, StatusCode::OK, "{body}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "a SET leaked into request {i}: {body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("public.t' not found"), "{body}");
        }
    }
    server.sql("SET datafusion.catalog.default_schema = 'system'").await;
    let (status, body) =
        server.post("/v1/api/sql", Some(("u_user", "pw")), json!({ "sql": "SELECT * FROM users" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("public.users' not found"), "{body}");
    let (status, body) =
        server.post("/v1/api/sql", Some(("u_user", "pw")), json!({ "sql": "SELECT * FROM app.t" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn login_tokens_and_their_end() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let (status, body) =
        server.post("/v1/api/auth/login", None, json!({"username": "u_service", "password": "pw"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).is_ok());
    let token = body["access_token"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let sql = |token: &str, sql: &str| {
        client.post(server.url("/v1/api/sql")).bearer_auth(token).json(&json!({ "sql": sql })).send()
    };
    assert_eq!(sql(&token, "SELECT 1").await.unwrap().status(), StatusCode::OK);
    // A tampered token is refused.
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(sql(&tampered, "SELECT 1").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sql("garbage", "SELECT 1").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The role is read at each request: a demoted user loses access at once.
    server.sql("ALTER USER u_service SET ROLE user").await;
    let resp = sql(&token, "CONSUME FROM app.ev").await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A password change ends the token.
    server.sql("ALTER USER u_service SET PASSWORD 'other'").await;
    assert_eq!(sql(&token, "SELECT 1").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Wrong logins: 401 with the error shape.
    let (status, body) = server.post("/v1/api/auth/login", None, json!({"username": "u_dba", "password": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
}

/// One failed attempt: admitted (its wait not slept: the throttle only computes it), then failed.
fn fail(throttle: &Arc<topicfusion::auth::LoginThrottle>, user: &str, ip: std::net::IpAddr) -> Option<Duration> {
    let (wait, attempt) = throttle.admit(user, ip).ok()?;
    attempt.failed();
    Some(wait)
}

#[test]
fn repeated_failed_logins_are_slowed_down() {
    use std::time::Instant;
    use topicfusion::auth::{FREE_FAILURES_PER_ADDRESS, FREE_FAILURES_PER_USER, LoginThrottle};
    let throttle = Arc::new(LoginThrottle::default());
    let ip = |i: u8| std::net::IpAddr::from([10, 1, 0, i]);
    // Without failures, attempts running together are never held up (a pool connecting).
    let running: Vec<_> = (0..10).map(|_| throttle.admit("pool", ip(1)).unwrap()).collect();
    assert!(running.iter().all(|(wait, _)| wait.is_zero()));
    running.into_iter().for_each(|(_, attempt)| attempt.succeeded());
    // The free failures are answered at once.
    for _ in 0..FREE_FAILURES_PER_USER {
        assert_eq!(fail(&throttle, "alice", ip(1)), Some(Duration::ZERO));
    }
    // Then the name is throttled from any address: every attempt (whatever its password: this
    // is before the check) waits for its turn; turns are 100 ms after the last failure, then
    // 200, 400, 800 ms apart, as attempts running in parallel count as they start.
    let asked = Instant::now();
    let attempts: Vec<_> = (0..5).map(|i| throttle.admit("alice", ip(10 + i)).unwrap()).collect();
    let elapsed = asked.elapsed();
    let waits: Vec<Duration> = attempts.iter().map(|(wait, _)| *wait).collect();
    assert!(waits[0] > Duration::ZERO && waits[0] <= Duration::from_millis(100), "{waits:?}");
    for i in 1..waits.len() {
        let step = Duration::from_millis(100 << i);
        assert!(waits[i] <= waits[i - 1] + step, "{waits:?}");
        assert!(waits[i] + elapsed >= waits[i - 1] + step, "{waits:?}");
    }
    // Dropped before their check (the clients left), they count no failure.
    drop(attempts);
    assert_eq!(throttle.user_failures("alice"), FREE_FAILURES_PER_USER);
    // A long queue is refused outright, unchecked.
    let queued: Vec<_> = (0..100).map(|_| throttle.admit("alice", ip(2))).collect();
    assert!(queued.iter().any(|r| r.is_err()));
    drop(queued);
    // A success clears the name's failures from that address, and trusts the address for it.
    fail(&throttle, "bob", ip(99));
    fail(&throttle, "bob", ip(99));
    throttle.admit("bob", ip(99)).unwrap().1.succeeded();
    assert_eq!(throttle.user_failures("bob"), 2, "the name-wide count stays");
    assert_eq!(throttle.admit("bob", ip(99)).unwrap().0, Duration::ZERO);
    // One address trying many names is throttled after its own free failures; an IPv6 address
    // counts by its /64.
    for i in 0..FREE_FAILURES_PER_ADDRESS {
        assert_eq!(fail(&throttle, &format!("user{i}"), ip(50)), Some(Duration::ZERO));
    }
    assert!(throttle.admit("dave", ip(50)).unwrap().0 > Duration::ZERO);
    let v6 = |last: u16| std::net::IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
    for i in 0..FREE_FAILURES_PER_ADDRESS as u16 {
        assert_eq!(fail(&throttle, &format!("v6user{i}"), v6(i)), Some(Duration::ZERO));
    }
    assert!(throttle.admit("erin", v6(999)).unwrap().0 > Duration::ZERO);
    let other_64 = std::net::IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
    assert_eq!(throttle.admit("erin2", other_64).unwrap().0, Duration::ZERO);
    // Names longer than any user's are one key (cut to 63 bytes), not a new entry each.
    let long = "x".repeat(10_000);
    for i in 0..FREE_FAILURES_PER_USER {
        fail(&throttle, &long, ip(60 + i as u8));
    }
    let other_long = format!("{}y", "x".repeat(5000));
    assert!(throttle.admit(&other_long, ip(70)).unwrap().0 > Duration::ZERO);
    assert_eq!(topicfusion::auth::shown_user(&long).len(), topicfusion_engine::MAX_USER_NAME_BYTES);
}

#[test]
fn guessing_from_many_addresses_does_not_lock_a_user_out_of_addresses_it_logged_in_from() {
    use topicfusion::auth::LoginThrottle;
    let throttle = Arc::new(LoginThrottle::default());
    let home = std::net::IpAddr::from([192, 168, 1, 7]);
    throttle.admit("carol", home).unwrap().1.succeeded();
    // Guesses from 200 other addresses throttle the name (and fill its queue)...
    for i in 0..200u8 {
        fail(&throttle, "carol", std::net::IpAddr::from([172, 16, 0, i]));
    }
    assert!(throttle.user_failures("carol") > 3);
    let stranger = throttle.admit("carol", std::net::IpAddr::from([172, 17, 0, 1]));
    assert!(stranger.as_ref().is_err() || stranger.as_ref().unwrap().0 > Duration::ZERO);
    drop(stranger);
    // ...but carol's own address is not held up, and logs in.
    let (wait, attempt) = throttle.admit("carol", home).unwrap();
    assert_eq!(wait, Duration::ZERO);
    attempt.succeeded();
}

#[test]
fn a_flood_of_new_names_does_not_reset_a_throttled_one() {
    use topicfusion::auth::{FREE_FAILURES_PER_USER, LoginThrottle, MAX_ENTRIES};
    let throttle = Arc::new(LoginThrottle::default());
    let victim_ip = std::net::IpAddr::from([10, 2, 0, 1]);
    for _ in 0..=FREE_FAILURES_PER_USER {
        fail(&throttle, "target", victim_ip);
    }
    // More throttled names (and their addresses) than the table holds. (Once it is full, new
    // keys share the overflow entry, which soon refuses.)
    for i in 0..(MAX_ENTRIES as u32 / 2) {
        let ip = std::net::IpAddr::from((0x0B00_0000 + i).to_be_bytes());
        for _ in 0..=FREE_FAILURES_PER_USER {
            fail(&throttle, &format!("n{i}"), ip);
        }
    }
    // The targeted count is still there.
    assert_eq!(throttle.user_failures("target"), FREE_FAILURES_PER_USER + 1);
}

#[tokio::test]
async fn root_without_a_password_logs_in_from_loopback_only() {
    let (_tmp, data) = data_dir();
    let config = data.with_extension("toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\npg_listen = \"\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env_remove("TOPICFUSION_ROOT_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{base}/v1/api/sql"))
        .basic_auth("root", Some(""))
        .json(&json!({"sql": "SELECT name, role FROM system.users"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"][0]["rows"], json!([["root", "system"]]));
    let resp = client
        .post(format!("{base}/v1/api/auth/login"))
        .json(&json!({"username": "root", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn sql_results_have_typed_columns_and_json_rows() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    let body = server
        .sql(
            "CREATE TABLE t (id INT PRIMARY KEY, price DECIMAL(10,2), name TEXT, ok BOOLEAN);
             INSERT INTO t VALUES (1, 12.50, 'a', true), (2, NULL, 'b\"q', false);
             SELECT * FROM t ORDER BY id",
        )
        .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["rows"], json!([[2]]));
    let select = &results[2];
    assert_eq!(
        select["columns"],
        json!([
            {"name": "id", "type": "INT"}, {"name": "price", "type": "DECIMAL(10,2)"},
            {"name": "name", "type": "TEXT"}, {"name": "ok", "type": "BOOLEAN"}
        ])
    );
    assert_eq!(select["rows"], json!([[1, 12.50, "a", true], [2, null, "b\"q", false]]));
    assert_eq!(select["row_count"], 2);
    assert!(body["took_ms"].as_f64().is_some());
}

#[tokio::test]
async fn bad_requests_get_clear_errors_never_500() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "max_body_bytes = 2048\n");
    setup(&server).await;
    let client = reqwest::Client::new();
    let root = ("root", ROOT_PASSWORD);
    let raw = |path: &str, body: &'static str| {
        client
            .post(server.url(path))
            .basic_auth(root.0, Some(root.1))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (path, body) in [
        ("/v1/api/sql", "{not json"),
        ("/v1/api/sql", "{\"sql\": 5}"),
        ("/v1/api/sql", "{}"),
        ("/v1/api/sql", "{\"sql\": \"SELECT 1\", \"extra\": 1}"),
        ("/v1/api/topics/consume", "{\"topic_id\": \"app.ev\", \"start\": \"Sideways\"}"),
        ("/v1/api/topics/consume", "{\"topic_id\": \"app.ev\", \"limit\": -1}"),
        ("/v1/api/topics/consume", "{\"topic_id\": \"app.ev\", \"limit\": 100000}"),
        ("/v1/api/topics/consume", "{\"topic_id\": \"app.ev\", \"partition_id\": 7}"),
        ("/v1/api/topics/consume", "{\"topic_id\": \"app.ev\", \"group_id\": \"\"}"),
        ("/v1/api/topics/consume", "{\"topic_id\": \"app.ev\", \"start\": {\"Timestamp\": \"yesterday\"}}"),
        ("/v1/api/topics/ack", "{\"topic_id\": \"app.ev\", \"group_id\": \"g\", \"upto_offset\": 99}"),
        ("/v1/api/auth/login", "[]"),
    ] {
        let resp = raw(path, body).await.unwrap();
        let status = resp.status();
        let json: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {json}");
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
    }
    // A JSON body without its content type.
    let resp = client
        .post(server.url("/v1/api/sql"))
        .basic_auth("root", Some(ROOT_PASSWORD))
        .body("{\"sql\":\"SELECT 1\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Unknown topic: 404 on consume and ack.
    let (status, body) =
        server.post("/v1/api/topics/consume", Some(root), json!({"topic_id": "app.nope", "group_id": "g"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = server
        .post("/v1/api/topics/ack", Some(root), json!({"topic_id": "nope", "group_id": "g", "upto_offset": 0}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Oversized: 413.
    let big = json!({ "sql": format!("SELECT '{}'", "x".repeat(4096)) });
    let (status, body) = server.post("/v1/api/sql", Some(root), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // SQL errors: syntax vs failed statement, with the statement's number.
    let (status, body) = server.post("/v1/api/sql", Some(root), json!({"sql": "SELEC 1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "syntax_error");
    let (status, body) = server
        .post("/v1/api/sql", Some(root), json!({"sql": "INSERT INTO app.t VALUES (5, 'x'); SELECT * FROM nope"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "statement_failed");
    assert_eq!(body["error"]["statement"], 2);
    // ... and statement 1 committed; the error carries the results of the statements that
    // completed.
    assert_eq!(body["results"][0]["row_count"], 1, "{body}");
    let body = server.sql("SELECT count(*) FROM app.t WHERE id = 5").await;
    assert_eq!(body["results"][0]["rows"], json!([[1]]));
    // A missing `;` is a syntax error of the whole text: nothing runs, not even the first half.
    for sql in ["INSERT INTO app.t VALUES (6, 'half') SELECT 2", "DELETE FROM app.t WHERE id = 5 DROP TABLE app.t"] {
        let (status, body) = server.post("/v1/api/sql", Some(root), json!({ "sql": sql })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        assert_eq!(body["error"]["code"], "syntax_error", "{sql}: {body}");
    }
    let body = server.sql("SELECT id FROM app.t ORDER BY id").await;
    assert_eq!(body["results"][0]["rows"], json!([[5]]));
    // A CONSUME followed by a failing statement: its messages are in `results` (they are
    // claimed for the group), so nothing is lost to the client.
    let (status, body) = server
        .post(
            "/v1/api/sql",
            Some(root),
            json!({"sql": "CONSUME FROM app.ev GROUP 'g' FROM EARLIEST LIMIT 1; SELECT * FROM nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["statement"], 2);
    assert_eq!(body["results"][0]["rows"].as_array().map(Vec::len), Some(1), "{body}");
    // A COPY with the client has no client stream over HTTP: a clear error, nothing copied.
    for sql in ["COPY app.t FROM STDIN", "SELECT 1; COPY app.t TO STDOUT"] {
        let (status, body) = server.post("/v1/api/sql", Some(root), json!({ "sql": sql })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("PostgreSQL protocol"), "{body}");
    }
    // Files a statement names that cannot be written or read: 400 naming the path.
    for sql in ["COPY app.t TO '/proc/nope/x.csv'", "COPY app.t FROM '/nonexistent/x.csv'"] {
        let (status, body) = server.post("/v1/api/sql", Some(root), json!({ "sql": sql })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("/nonexistent/x.csv") || message.contains("/proc/nope/x.csv"), "{message}");
    }
    // Unknown endpoint: 404 in the same shape; the server is still fine.
    let resp = client.get(server.url("/v1/api/nope")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "not_found");
    assert_eq!(server.long_polls().await, 0);
}

#[tokio::test]
async fn long_polls_return_at_once_wake_on_commit_and_time_out() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "[topics]\nmax_consume_timeout_ms = 300\n");
    setup(&server).await;
    let root = Some(("root", ROOT_PASSWORD));
    // Nothing there: 200 with no messages at the timeout.
    let (status, body) = server
        .post("/v1/api/topics/consume", root, json!({"topic_id": "app.ev", "group_id": "g", "timeout_ms": 100}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"messages": [], "has_more": false}));
    // A timeout above the maximum is clamped: this returns (empty) instead of waiting a minute
    // (the client gives up after 60 s, failing the test).
    let (status, body) = server
        .post("/v1/api/topics/consume", root, json!({"topic_id": "app.ev", "group_id": "g", "timeout_ms": 120000}))
        .await;
    assert_eq!((status, body["messages"].as_array().unwrap().len()), (StatusCode::OK, 0));
    // Messages there: returned at once, JSON key and payload.
    server.sql("INSERT INTO app.t VALUES (1, 'a'), (2, 'b')").await;
    let (_, body) = server
        .post(
            "/v1/api/topics/consume",
            root,
            json!({"topic_id": "app.ev", "group_id": "g", "limit": 1, "timeout_ms": 0}),
        )
        .await;
    let m = &body["messages"][0];
    assert_eq!((m["offset"].clone(), m["op"].clone(), m["key"].clone()), (json!(0), json!("insert"), json!({"id": 1})));
    assert_eq!(m["payload"], json!({"id": 1, "v": "a"}));
    assert_eq!(m["source_table"], "app.t");
    assert_eq!(m["topic_id"], "app.ev");
    assert_eq!(body["has_more"], true);
}

#[tokio::test]
async fn a_waiting_consumer_is_woken_by_an_insert_from_another_connection() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "[topics]\nmax_consume_timeout_ms = 60000\n");
    setup(&server).await;
    let consumer = async {
        server
            .post(
                "/v1/api/topics/consume",
                Some(("u_service", "pw")),
                json!({"topic_id": "app.ev", "group_id": "g", "start": "Latest", "timeout_ms": 50000}),
            )
            .await
    };
    let producer = async {
        // Wait until the consumer is parked on the commit signal, then insert.
        for _ in 0..500 {
            if server.long_polls().await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(server.long_polls().await > 0, "the consumer never waited");
        server.sql("INSERT INTO app.t VALUES (42, 'woken')").await;
    };
    let ((status, body), ()) = tokio::join!(consumer, producer);
    assert_eq!(status, StatusCode::OK);
    // Had the commit not woken it, the poll would have ended empty at its timeout.
    assert_eq!(body["messages"][0]["payload"], json!({"id": 42, "v": "woken"}), "{body}");
}

#[tokio::test]
async fn a_client_that_disconnects_ends_its_wait() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "[topics]\nmax_consume_timeout_ms = 60000\n");
    setup(&server).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    for body in [
        json!({"topic_id": "app.ev", "group_id": "g", "timeout_ms": 50000}),
        json!({"topic_id": "app.ev", "timeout_ms": 50000}),
    ] {
        let err = impatient
            .post(server.url("/v1/api/topics/consume"))
            .basic_auth("root", Some(ROOT_PASSWORD))
            .json(&body)
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
    let sql = impatient
        .post(server.url("/v1/api/sql"))
        .basic_auth("root", Some(ROOT_PASSWORD))
        .json(&json!({"sql": "CONSUME FROM app.ev WITH (timeout_ms = 50000)"}))
        .send()
        .await;
    assert!(sql.unwrap_err().is_timeout());
    let mut waiting = u64::MAX;
    for _ in 0..500 {
        waiting = server.long_polls().await;
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waiting, 0, "waiters leaked after their clients left");
}

#[tokio::test]
async fn competing_consumers_of_one_group_never_get_the_same_message() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    server.sql("CREATE TOPIC app.multi PARTITIONS 3; ALTER TOPIC app.multi ADD SOURCE app.t ON INSERT").await;
    let values: Vec<String> = (0..600).map(|i| format!("({i}, 'v{i}')")).collect();
    server.sql(&format!("INSERT INTO app.t VALUES {}", values.join(", "))).await;
    let consumer = |_: usize| async {
        let mut got = Vec::new();
        loop {
            let (status, body) = server
                .post(
                    "/v1/api/topics/consume",
                    Some(("u_service", "pw")),
                    json!({"topic_id": "app.multi", "group_id": "workers", "start": "Earliest", "limit": 37,
                           "visibility_timeout_ms": 600000}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let messages = body["messages"].as_array().unwrap();
            if messages.is_empty() {
                return got;
            }
            for m in messages {
                got.push((m["partition_id"].as_u64().unwrap(), m["offset"].as_u64().unwrap()));
            }
        }
    };
    let (a, b, c, d) = tokio::join!(consumer(0), consumer(1), consumer(2), consumer(3));
    let all: Vec<(u64, u64)> = [a, b, c, d].concat();
    let unique: HashSet<(u64, u64)> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a message was delivered to two consumers");
    assert_eq!(all.len(), 600, "every message is delivered once");
}

#[tokio::test]
async fn offsets_and_group_positions_survive_a_restart() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'a'), (2, 'b'), (3, 'c')").await;
    let root = Some(("root", ROOT_PASSWORD));
    let (_, body) = server
        .post(
            "/v1/api/topics/consume",
            root,
            json!({"topic_id": "app.ev", "group_id": "g", "start": "Earliest", "limit": 2}),
        )
        .await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    let (status, body) = server
        .post(
            "/v1/api/topics/ack",
            root,
            json!({"topic_id": "app.ev", "group_id": "g", "partition_id": 0, "upto_offset": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"acknowledged_offset": 1, "position": 2}));
    assert!(server.terminate().success());

    let server = Server::start(&data, "");
    server.sql("INSERT INTO app.t VALUES (4, 'd')").await;
    let (_, body) =
        server.post("/v1/api/topics/consume", root, json!({"topic_id": "app.ev", "group_id": "g", "limit": 10})).await;
    let offsets: Vec<u64> =
        body["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [2, 3], "the group continues after its ack; the new message got the next offset");
    // Users survive too.
    let (status, _) = server.post("/v1/api/sql", Some(("u_dba", "pw")), json!({"sql": "SELECT 1"})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_ends_long_polls_and_exits_cleanly() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "[topics]\nmax_consume_timeout_ms = 60000\n");
    setup(&server).await;
    let base = server.base.clone();
    let polls: Vec<_> = (0..3)
        .map(|i| {
            let url = format!("{base}/v1/api/topics/consume");
            tokio::spawn(async move {
                let resp = reqwest::Client::new()
                    .post(url)
                    .basic_auth("root", Some(ROOT_PASSWORD))
                    .json(&json!({"topic_id": "app.ev", "group_id": format!("g{i}"), "timeout_ms": 50000}))
                    .send()
                    .await
                    .unwrap();
                (resp.status(), resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for _ in 0..500 {
        if server.long_polls().await >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.long_polls().await, 3);
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "exit status {status}");
    for poll in polls {
        let (status, body) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["messages"], json!([]));
    }
    // RocksDB was closed cleanly: the embedded CLI opens the dir at once.
    let out = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(&data)
        .args(["-c", "SELECT count(*) AS n FROM system.users"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n5\n");
}

#[tokio::test]
async fn sql_url_runs_statements_on_a_server_and_the_data_dir_is_locked() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let cli = |args: &[&str], password: &str| {
        Command::new(env!("CARGO_BIN_EXE_topicfusion"))
            .args(["sql", "--url", &server.base])
            .args(args)
            .env("TOPICFUSION_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = cli(
        &[
            "-u",
            "u_dba",
            "--format",
            "csv",
            "-c",
            "INSERT INTO app.t VALUES (1, 'x'); SELECT id, v FROM app.t; INSERT INTO app.t VALUES (1, 'dup'); SELECT 2",
        ],
        "pw",
    );
    assert_eq!(out.status.code(), Some(1));
    // The results of the statements before the failure are printed; the error names statement 3.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "count\n1\nid,v\n1,x\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error in statement 3 (`INSERT INTO app.t VALUES (1, 'dup')`)"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let out = cli(&["-u", "u_dba", "--format", "json", "-c", "SELECT id, v FROM app.t"], "pw");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[{\"id\":1,\"v\":\"x\"}]\n");
    let out = cli(&["-u", "u_dba", "-c", "SELECT 1"], "wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong user name or password"));
    // The embedded mode on the server's data dir: one line that suggests --url.
    let out = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
        .args(["sql", "--data-dir"])
        .arg(&data)
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process") && stderr.contains("--url"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() {
    const CLUSTER_OK: &str = "[cluster]\nnode_id = 1\nraft_listen = \"127.0.0.1:7101\"\nsecret = \"0123456789abcdef\"\npeers = [\n  { id = 1, raft = \"127.0.0.1:7101\", http = \"127.0.0.1:8101\", pg = \"127.0.0.1:5501\" },\n  { id = 2, raft = \"127.0.0.1:7102\", http = \"127.0.0.1:8102\", pg = \"127.0.0.1:5502\" },\n  { id = 3, raft = \"node3.example:7103\", http = \"node3.example:8103\", pg = \"node3.example:5503\" },\n]\n";
    let dir = tempfile::tempdir().unwrap();
    for (config, key) in [
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[server]\npg_listen = \"5433\"\n", "server.pg_listen"),
        ("[server]\npg_tls_cert = \"/nonexistent.pem\"\n", "server.pg_tls_cert"),
        ("[server]\nlisten = \"127.0.0.1:0\"\nmax_body = 5\n", "max_body"),
        ("[storage]\ncommit_threads = 1000\n", "storage.commit_threads"),
        ("[topics]\nmax_consume_timeout_ms = 999999999\n", "topics.max_consume_timeout_ms"),
        ("[topics]\ndefault_visibility_timeout_ms = 0\n", "topics.default_visibility_timeout_ms"),
        ("[auth]\ntoken_ttl_seconds = \"soon\"\n", "token_ttl_seconds"),
        ("[live]\nbuffer_rows = 0\n", "live.buffer_rows"),
        ("[live]\nhistory_rows = 1000000000000\n", "live.history_rows"),
        ("[nope]\n", "nope"),
        // [cluster]: this node among the peers, addresses with ports, a real secret.
        (CLUSTER_OK.replace("node_id = 1", "node_id = 4").as_str(), "cluster.node_id"),
        (CLUSTER_OK.replace("127.0.0.1:7101\"\nsecret", "nowhere\"\nsecret").as_str(), "cluster.raft_listen"),
        (CLUSTER_OK.replace("0123456789abcdef", "short").as_str(), "cluster.secret"),
        (CLUSTER_OK.replace("pg = \"127.0.0.1:5502\"", "pg = \"127.0.0.1\"").as_str(), "cluster.peers"),
        (CLUSTER_OK.replace("id = 3", "id = 2").as_str(), "cluster.peers"),
        (&format!("{CLUSTER_OK}colour = \"blue\"\n"), "colour"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{config}: {stderr}");
    }
    let ok = topicfusion::config::Config::from_toml(CLUSTER_OK).unwrap();
    assert_eq!(ok.cluster.unwrap().warning(), None);
    // raft_listen on another port than the node's own raft address: allowed (a port mapping),
    // warned about at start.
    let mapped = CLUSTER_OK.replace("raft_listen = \"127.0.0.1:7101\"", "raft_listen = \"0.0.0.0:7102\"");
    let warning = topicfusion::config::Config::from_toml(&mapped).unwrap().cluster.unwrap().warning().unwrap();
    assert!(warning.contains("\"0.0.0.0:7102\" is not on the port") && warning.contains("port mapping"), "{warning}");
    // The example configuration in docs/ is valid.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/topicfusion.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    topicfusion::config::Config::from_toml(&text).unwrap();
}

async fn boom() -> &'static str {
    panic!("boom")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_500_and_the_server_keeps_serving() {
    use std::sync::Arc;
    use topicfusion::auth::Tokens;
    use topicfusion::http::{AppState, routes, with_layers};

    let (_dir, db) = crate::open_temp();
    let db = Arc::new(db);
    let state = Arc::new(AppState {
        metrics: topicfusion::metrics::ServerMetrics::register(&db),
        db,
        config: topicfusion::config::Config::default(),
        tokens: Tokens::new(vec![7; 32], 60),
        throttle: Default::default(),
        verifications: tokio::sync::Semaphore::new(2),
        engine: tokio::runtime::Handle::current(),
        live: tokio::runtime::Handle::current(),
        forwarder: None,
    });
    let router = with_layers(routes().route("/boom", axum::routing::get(boom)), Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
    });
    let client = reqwest::Client::new();
    let resp = client.get(format!("http://{addr}/boom")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal");
    assert!(!body.to_string().contains("boom"), "details stay in the log: {body}");
    let resp = client.get(format!("http://{addr}/v1/api/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[test]
fn the_role_rule_of_the_engine() {
    use topicfusion_engine::auth::{Action::*, Principal, Role, authorize};
    let p = |role| Principal { name: "u".into(), role };
    for (action, lowest) in [
        (ReadWrite, Role::User),
        (Consume, Role::Service),
        (Ddl, Role::Dba),
        (ManageUsers, Role::Dba),
        (ReadUsers, Role::Dba),
        (FileSystem, Role::Dba),
        (SetOption, Role::Dba),
    ] {
        for role in Role::ALL {
            assert_eq!(authorize(&p(role), action, false).is_ok(), role >= lowest, "{action:?} as {role}");
        }
    }
    assert!(authorize(&p(Role::User), Consume, true).is_ok());
    assert!(authorize(&p(Role::User), Ddl, true).is_err());
    let e = authorize(&p(Role::User), Ddl, false).unwrap_err().to_string();
    assert_eq!(e, "permission denied: user u (role user) may not run DDL; this needs role dba or system");
}

#[tokio::test]
async fn per_message_ack_over_http() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'a'), (2, 'b'), (3, 'c')").await;
    let root = Some(("root", ROOT_PASSWORD));
    let (_, body) = server
        .post("/v1/api/topics/consume", root, json!({"topic_id": "app.ev", "group_id": "g", "start": "Earliest"}))
        .await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 3);
    let (status, body) = server
        .post("/v1/api/topics/ack", root, json!({"topic_id": "app.ev", "group_id": "g", "offsets": [2, 1]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"acknowledged_offset": null, "position": 0}));
    let (_, body) =
        server.post("/v1/api/topics/ack", root, json!({"topic_id": "app.ev", "group_id": "g", "offsets": [0]})).await;
    assert_eq!(body, json!({"acknowledged_offset": 2, "position": 3}));
    for bad in [
        json!({"topic_id": "app.ev", "group_id": "g"}),
        json!({"topic_id": "app.ev", "group_id": "g", "offsets": [0], "upto_offset": 0}),
        json!({"topic_id": "app.ev", "group_id": "g", "offsets": []}),
        json!({"topic_id": "app.ev", "group_id": "g", "offsets": [3]}),
    ] {
        let (status, body) = server.post("/v1/api/topics/ack", root, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_huge_expression_is_a_clear_error_and_the_server_stays_up() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    let root = Some(("root", ROOT_PASSWORD));
    for sql in [
        format!("SELECT {}", vec!["1"; 300_000].join("+")),
        // A syntax error at the end: sqlparser drops the deep tree it built on its own.
        format!("SELECT {} )", vec!["1"; 300_000].join("+")),
    ] {
        let (status, body) = server.post("/v1/api/sql", root, json!({ "sql": sql })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "syntax_error");
    }
    assert_eq!(server.long_polls().await, 0);
    let body = server.sql("SELECT 1 + 1 AS two").await;
    assert_eq!(body["results"][0]["rows"], json!([[2]]));
}
