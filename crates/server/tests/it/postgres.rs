//! The PostgreSQL protocol, tested against the real `topicfusion serve` process with real
//! clients: tokio-postgres (extended protocol, SCRAM, cancel requests), psql (simple protocol,
//! `\dt`, `\d`, `\du`, SQLSTATEs, TLS) and the Python drivers people use (tests/it/drivers/:
//! psycopg, psycopg2, asyncpg, pg8000, SQLAlchemy).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::http::{ROOT_PASSWORD, Server, data_dir, setup};

async fn connect(server: &Server, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let (client, connection) = tokio_postgres::Config::new()
        .host(host)
        .port(port.parse().unwrap())
        .user(user)
        .password(password)
        .dbname("topicfusion")
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The rows of a simple query, cells as text (`NULL` for null).
async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_owned()).collect()),
            _ => None,
        })
        .collect()
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_owned()).unwrap_or_else(|| format!("not a server error: {e}"))
}

#[tokio::test]
async fn prepared_statements_with_parameters_and_typed_results() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let client = connect(&server, "root", ROOT_PASSWORD).await.unwrap();
    // Parameter types are inferred from the table; the INSERT takes the literal fast path.
    let insert = client.prepare("INSERT INTO app.t (id, v) VALUES ($1, $2)").await.unwrap();
    assert_eq!(insert.params(), [tokio_postgres::types::Type::INT8, tokio_postgres::types::Type::TEXT]);
    for (id, v) in [(1i64, "one"), (2, "it's two"), (3, "x'); DROP TABLE app.t; --")] {
        assert_eq!(client.execute(&insert, &[&id, &v]).await.unwrap(), 1);
    }
    let n = client.execute("INSERT INTO app.t (id, v) VALUES ($1, NULL)", &[&i64::MAX]).await.unwrap();
    assert_eq!(n, 1);
    let rows = client.query("SELECT id, v FROM app.t WHERE id >= $1 ORDER BY id", &[&2i64]).await.unwrap();
    let got: Vec<(i64, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(2, Some("it's two".into())), (3, Some("x'); DROP TABLE app.t; --".into())), (i64::MAX, None)]);
    // Bound values may repeat a name (`SELECT $1, $2` with 0 and 0 is `SELECT 0, 0`), as
    // may the values of INSERT ... SELECT: repeats are renamed once the parameters are bound.
    let row = client.query_one("SELECT $1::bigint, $2::bigint", &[&0i64, &0i64]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
    let n = client.execute("INSERT INTO app.t SELECT $1::bigint, $2::bigint::text", &[&-5i64, &-5i64]);
    assert_eq!(n.await.unwrap(), 1);
    assert_eq!(client.execute("DELETE FROM app.t WHERE id = $1", &[&-5i64]).await.unwrap(), 1);
    // Result columns carry their types, in binary and text.
    let row = client
        .query_one("SELECT CAST(1.5 AS DOUBLE) AS f, true AS b, CAST(7 AS INT) AS i, 'x' AS s", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, f64>(0), row.get::<_, bool>(1), row.get::<_, i32>(2), row.get::<_, &str>(3)),
        (1.5, true, 7, "x")
    );
    // UPDATE and DELETE report their counts; parameters in WHERE are typed by the column.
    assert_eq!(client.execute("UPDATE app.t SET v = $1 WHERE id = $2", &[&"uno", &1i64]).await.unwrap(), 1);
    assert_eq!(client.execute("DELETE FROM app.t WHERE id > $1", &[&2i64]).await.unwrap(), 2);
    assert_eq!(simple_rows(&client, "SELECT id, v FROM app.t ORDER BY id").await, [["1", "uno"], ["2", "it's two"]]);
    // Errors carry SQLSTATEs.
    let e = client.execute(&insert, &[&1i64, &"dup"]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION), "{e}");
    let e = client.execute("INSERT INTO app.t (id, v) VALUES (NULL, 'x')", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::NOT_NULL_VIOLATION), "{e}");
    let e = client.query("SELECT * FROM app.missing", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    let e = client.query("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR), "{e}");
    let e = client.query("SELECT 1; SELECT 2", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR), "{e}");
    // A missing `;` is a syntax error of the whole text: nothing runs, not even the first half.
    for sql in ["INSERT INTO app.t VALUES (90, 'half') SELECT 2", "DELETE FROM app.t WHERE id = 1 DROP TABLE app.t"] {
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR), "{sql}: {e}");
    }
    assert_eq!(simple_rows(&client, "SELECT id FROM app.t ORDER BY id").await, [["1"], ["2"]]);
    let e = client.query("CONSUME FROM app.missing", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_OBJECT), "{e}");
    // The classes drivers branch on, as PostgreSQL gives them.
    for (sql, code) in [
        ("SELECT 1 / 0", SqlState::DIVISION_BY_ZERO),
        ("SELECT CAST(id AS INT) / 0 FROM app.t", SqlState::DIVISION_BY_ZERO),
        ("SELECT CAST('abc' AS INT)", SqlState::INVALID_TEXT_REPRESENTATION),
        ("SELECT CAST(300 AS TINYINT)", SqlState::NUMERIC_VALUE_OUT_OF_RANGE),
        ("CREATE TABLE app.t (id BIGINT PRIMARY KEY)", SqlState::DUPLICATE_TABLE),
        ("CREATE SCHEMA app", SqlState::DUPLICATE_SCHEMA),
        ("SELECT no_such_function(1)", SqlState::UNDEFINED_FUNCTION),
        ("ROLLBACK TO SAVEPOINT nowhere", SqlState::NO_ACTIVE_SQL_TRANSACTION),
        ("DEALLOCATE nothing_prepared", SqlState::INVALID_SQL_STATEMENT_NAME),
    ] {
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(e.code(), Some(&code), "{sql}: {e}");
    }
    client.batch_execute("BEGIN").await.unwrap();
    let e = client.simple_query("RELEASE SAVEPOINT nowhere").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::S_E_INVALID_SPECIFICATION), "{e}");
    client.batch_execute("COMMIT").await.unwrap();
    // A parameter declared text that cannot be compared with the column is refused by the
    // server (a bound string stays a string), and the connection goes on.
    let e = client
        .query_typed("SELECT v FROM app.t WHERE id = $1", &[(&"seven", tokio_postgres::types::Type::TEXT)])
        .await
        .unwrap_err();
    assert!(e.as_db_error().is_some(), "not refused by the server: {e}");
    assert_eq!(simple_rows(&client, "SELECT count(*) FROM app.t").await, [["2"]]);
    // BEGIN/COMMIT are accepted (each statement commits on its own).
    client.batch_execute("BEGIN; INSERT INTO app.t VALUES (5, 'five'); COMMIT").await.unwrap();
    assert_eq!(simple_rows(&client, "SELECT v FROM app.t WHERE id = 5").await, [["five"]]);
    // A result column that widens with the bound values (int4 + a bound integer) comes back
    // as described, binary included; a table created again with other types is 0A000.
    client
        .batch_execute("CREATE TABLE app.n (id BIGINT PRIMARY KEY, v INT); INSERT INTO app.n VALUES (1, 41)")
        .await
        .unwrap();
    let widened = client.prepare("SELECT v + $1 FROM app.n WHERE id = 1").await.unwrap();
    assert_eq!(widened.columns()[0].type_(), &tokio_postgres::types::Type::INT4);
    assert_eq!(client.query_one(&widened, &[&1i32]).await.unwrap().get::<_, i32>(0), 42);
    let stale = client.prepare("SELECT v FROM app.n WHERE id = 1").await.unwrap();
    client
        .batch_execute(
            "DROP TABLE app.n; CREATE TABLE app.n (id BIGINT PRIMARY KEY, v TEXT); INSERT INTO app.n VALUES (1, 'x')",
        )
        .await
        .unwrap();
    let e = client.query(&stale, &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e}");
    // DEALLOCATE ALL drops the protocol's prepared statements (psycopg's test drops one by
    // name); using one afterwards is an error, and the connection goes on.
    let e = client.execute("DEALLOCATE no_such_statement", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME), "{e}");
    let (a, b) = (client.prepare("SELECT 1").await.unwrap(), client.prepare("SELECT 2").await.unwrap());
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert!(client.query(&a, &[]).await.is_err());
    assert!(client.query(&b, &[]).await.is_err());
    assert_eq!(simple_rows(&client, "SELECT count(*) FROM app.t").await, [["3"]]);
}

#[tokio::test]
async fn consume_waits_is_woken_by_another_connection_acks_and_is_cancelled() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let consumer = connect(&server, "u_service", "pw").await.unwrap();
    let writer = connect(&server, "u_user", "pw").await.unwrap();
    let consume = "CONSUME FROM app.ev GROUP 'g' FROM EARLIEST LIMIT 10 WITH (timeout_ms = 20000)";
    // A waiting CONSUME (extended protocol) is woken by an INSERT on another connection.
    let started = Instant::now();
    let wait = tokio::spawn(async move {
        let rows = consumer.query(consume, &[]).await.unwrap();
        (consumer, rows)
    });
    while server.long_polls().await == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.execute("INSERT INTO app.t VALUES ($1, $2)", &[&42i64, &"woke"]).await.unwrap();
    let (consumer, rows) = wait.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "the INSERT did not wake the CONSUME");
    assert_eq!(rows.len(), 1);
    let payload: &str = rows[0].get("payload");
    assert_eq!(payload, r#"{"id":42,"v":"woke"}"#);
    let offset: i64 = rows[0].get::<_, i64>("offset");
    // ACK moves the group past it; the next CONSUME waits again and a cancel request ends it.
    let acked = simple_rows(&consumer, &format!("ACK app.ev GROUP 'g' PARTITION 0 UPTO OFFSET {offset}")).await;
    assert!(acked[0][0].contains(&format!("up to offset {offset}")), "{acked:?}");
    let cancel = consumer.cancel_token();
    let wait = tokio::spawn(async move { consumer.query(consume, &[]).await.map(|r| r.len()) });
    while server.long_polls().await == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel_query(NoTls).await.unwrap();
    let e = wait.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    while server.long_polls().await != 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The cancelled wait claimed nothing: the next message goes to the next CONSUME.
    writer.execute("INSERT INTO app.t VALUES (43, 'after')", &[]).await.unwrap();
    let again = connect(&server, "u_service", "pw").await.unwrap();
    let rows = simple_rows(&again, "CONSUME FROM app.ev GROUP 'g' LIMIT 10").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0][7].contains("after"), "{rows:?}");
}

#[tokio::test]
async fn scram_logins_and_the_role_matrix() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    for (user, password) in [("u_service", "wrong"), ("nobody", "pw"), ("root", "")] {
        let e = connect(&server, user, password).await.err().unwrap_or_else(|| panic!("{user} logged in"));
        assert!(sqlstate(&e) == "28P01" || e.to_string().contains("password"), "{user}: {e}");
    }
    let user = connect(&server, "u_user", "pw").await.unwrap();
    let service = connect(&server, "u_service", "pw").await.unwrap();
    let dba = connect(&server, "u_dba", "pw").await.unwrap();
    // Role user: tables yes; CONSUME, DDL, system.users no.
    user.execute("INSERT INTO app.t VALUES (1, 'a')", &[]).await.unwrap();
    for sql in [
        "CONSUME FROM app.ev GROUP 'g'",
        "CREATE TOPIC app.x",
        "SELECT * FROM system.users",
        "CREATE TABLE app.y (a INT)",
    ] {
        let e = user.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
    }
    // Role service consumes and acks, no DDL; dba runs DDL and manages users.
    assert_eq!(simple_rows(&service, "CONSUME FROM app.ev GROUP 'g' FROM EARLIEST").await.len(), 1);
    simple_rows(&service, "ACK app.ev GROUP 'g' PARTITION 0 UPTO OFFSET 0").await;
    assert_eq!(sqlstate(&service.simple_query("DROP TOPIC app.ev").await.unwrap_err()), "42501");
    dba.batch_execute("CREATE TOPIC app.x; CREATE USER late WITH PASSWORD 'pw2' ROLE service").await.unwrap();
    // A user created over the wire logs in with SCRAM; a password change ends the old one.
    let late = connect(&server, "late", "pw2").await.unwrap();
    assert_eq!(simple_rows(&late, "SELECT 1").await, [["1"]]);
    late.batch_execute("ALTER USER late SET PASSWORD 'pw3'").await.unwrap();
    assert!(connect(&server, "late", "pw2").await.is_err());
    connect(&server, "late", "pw3").await.unwrap();
    // A role change applies to the next statement of an open connection.
    dba.batch_execute("ALTER USER late SET ROLE user").await.unwrap();
    assert_eq!(sqlstate(&late.simple_query("CONSUME FROM app.ev GROUP 'z'").await.unwrap_err()), "42501");
}

/// Failed PostgreSQL logins feed the login throttle HTTP logins share: after a name's free
/// failures, parallel guesses queue (each waits its turn before its proof is checked) until the
/// queue is full, then are refused at once with 28000; an HTTP login of that name with the right
/// password then queues behind them or is refused with 429, while another name still logs in
/// from that address.
#[tokio::test]
async fn failed_postgres_logins_are_throttled_together_with_http_logins() {
    use futures::StreamExt;
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    for _ in 0..topicfusion::auth::FREE_FAILURES_PER_USER {
        match connect(&server, "u_user", "wrong").await {
            Ok(_) => panic!("a wrong password logged in"),
            Err(e) => assert_eq!(sqlstate(&e), "28P01", "{e}"),
        }
    }
    // Enough parallel guesses that the queue overflows: turns 100 ms apart, doubling up to
    // MAX_DELAY, fill MAX_QUEUE (30 s) after about a dozen.
    let guesses = (topicfusion::auth::MAX_QUEUE.as_secs() / topicfusion::auth::MAX_DELAY.as_secs()) as usize + 14;
    let mut pending: futures::stream::FuturesUnordered<_> =
        (0..guesses).map(|_| connect(&server, "u_user", "wrong")).collect();
    let refused = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(result) = pending.next().await {
            match result {
                Ok(_) => panic!("a wrong password logged in"),
                Err(e) if sqlstate(&e) == "28000" => return e.as_db_error().map(|d| d.message().to_owned()),
                Err(_) => {}
            }
        }
        panic!("no guess was refused for a full queue")
    })
    .await
    .expect("the throttle answers a full queue at once");
    assert!(refused.as_deref().is_some_and(|m| m.contains("too many failed logins")), "{refused:?}");
    // The right password over HTTP is behind the same name's queue: refused while it is full,
    // else waiting its turn (the queue's end moves back as time passes, so which one is timing).
    let login = server.post("/v1/api/auth/login", None, serde_json::json!({"username": "u_user", "password": "pw"}));
    if let Ok((status, body)) = tokio::time::timeout(Duration::from_secs(3), login).await {
        assert_eq!(status, 429, "the name's HTTP login was not held up: {body}");
    }
    // Another name still logs in from the same address.
    let dba = connect(&server, "u_dba", "pw").await.unwrap();
    assert_eq!(simple_rows(&dba, "SELECT 1").await, [["1"]]);
    drop(pending);
}

/// Each connection has its own session: a `SET` in one is not seen by another, and a user who
/// points the default schema at `system` still cannot read `system.users` (authorization follows
/// the table as planned). `pg_roles` shows a role `user` only itself.
#[tokio::test]
async fn sessions_are_per_connection_and_a_user_sees_only_itself() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let dba = connect(&server, "u_dba", "pw").await.unwrap();
    let other = connect(&server, "u_dba", "pw").await.unwrap();
    dba.batch_execute("SET datafusion.catalog.default_schema = 'app'; SET TIME ZONE 'Asia/Tokyo'").await.unwrap();
    assert_eq!(simple_rows(&dba, "SELECT count(*) FROM t").await, [["0"]]);
    assert_eq!(simple_rows(&dba, "SHOW TIME ZONE").await, [["Asia/Tokyo"]]);
    // The other connection of the same user still resolves `t` in public, and keeps its zone.
    assert_eq!(sqlstate(&other.simple_query("SELECT count(*) FROM t").await.unwrap_err()), "42P01");
    assert_ne!(simple_rows(&other, "SHOW TIME ZONE").await, [["Asia/Tokyo"]]);
    assert_eq!(simple_rows(&other, "SELECT count(*) FROM app.t").await, [["0"]]);
    // A dba's default schema does not leak into a user's connection, and the user's own SET
    // does not open system.users.
    dba.batch_execute("SET datafusion.catalog.default_schema = 'system'").await.unwrap();
    assert!(!simple_rows(&dba, "SELECT name FROM users").await.is_empty());
    let user = connect(&server, "u_user", "pw").await.unwrap();
    assert_eq!(sqlstate(&user.simple_query("SELECT * FROM system.users").await.unwrap_err()), "42501");
    let e = user.batch_execute("SET datafusion.catalog.default_schema = 'system'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // search_path is accepted for drivers but does not resolve names: `users` stays unknown.
    user.batch_execute("SET search_path TO system").await.unwrap();
    let code = sqlstate(&user.simple_query("SELECT * FROM users").await.unwrap_err());
    assert!(code == "42P01" || code == "42501", "{code}");
    // pg_roles: a user sees itself; a dba sees everyone.
    let roles = "SELECT rolname FROM pg_catalog.pg_roles ORDER BY 1";
    assert_eq!(simple_rows(&user, roles).await, [["u_user"]]);
    let all = simple_rows(&dba, roles).await;
    assert!(all.len() >= 5 && all.iter().any(|r| r[0] == "root"), "{all:?}");
}

/// A simple query whose CONSUME is followed by a failing statement: the CONSUME's rows reach the
/// client before the error (their claims are the client's), as HTTP returns them in `results`.
#[tokio::test]
async fn consumed_rows_reach_the_client_when_a_later_statement_fails() {
    use futures::StreamExt;
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'a'), (2, 'b')").await;
    let root = connect(&server, "root", ROOT_PASSWORD).await.unwrap();
    let stream = root
        .simple_query_raw("CONSUME FROM app.ev GROUP 'g' FROM EARLIEST LIMIT 1; SELECT * FROM no_such_table")
        .await
        .unwrap();
    let items: Vec<_> = stream.collect().await;
    let rows = items.iter().filter(|m| matches!(m, Ok(SimpleQueryMessage::Row(_)))).count();
    assert_eq!(rows, 1, "{items:?}");
    let err = items.iter().find_map(|m| m.as_ref().err()).expect("the second statement fails");
    assert_eq!(sqlstate(err), "42P01", "{err}");
    // The delivered message is claimed (not handed out again at once); the next one is next.
    let next = simple_rows(&root, "CONSUME FROM app.ev GROUP 'g' LIMIT 10").await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(next[0].iter().any(|c| c.contains("\"id\":2")), "{next:?}");
}

/// Reads one backend message: (type, body).
async fn read_message(socket: &mut tokio::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let kind = socket.read_u8().await?;
    let len = socket.read_u32().await? as usize;
    let mut body = vec![0; len - 4];
    socket.read_exact(&mut body).await?;
    Ok((kind, body))
}

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "topicfusion"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Starts a SCRAM login for `user` and returns the server-first message.
async fn scram_server_first(server: &Server, user: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(&server.pg).await.unwrap();
    socket.write_all(&startup_packet(user)).await.unwrap();
    let (kind, body) = read_message(&mut socket).await.unwrap();
    assert_eq!((kind, &body[..4]), (b'R', &10u32.to_be_bytes()[..]), "AuthenticationSASL");
    let client_first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client_first.len() as u32).to_be_bytes());
    body.extend_from_slice(client_first);
    let mut message = vec![b'p'];
    message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message.extend(body);
    socket.write_all(&message).await.unwrap();
    let (kind, body) = read_message(&mut socket).await.unwrap();
    assert_eq!((kind, &body[..4]), (b'R', &11u32.to_be_bytes()[..]), "AuthenticationSASLContinue");
    String::from_utf8(body[4..].to_vec()).unwrap()
}

/// An unknown user cannot be told from a known one by the SCRAM exchange: a salt as long,
/// the same on every attempt, the same iteration count, and the same error at the end.
#[tokio::test]
async fn unknown_users_look_like_known_ones() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let salt = |first: &str| -> (String, String) {
        let field = |k: &str| first.split(',').find_map(|f| f.strip_prefix(k)).unwrap().to_owned();
        (field("s="), field("i="))
    };
    let known = salt(&scram_server_first(&server, "u_user").await);
    let unknown = salt(&scram_server_first(&server, "nobody").await);
    assert_eq!(unknown, salt(&scram_server_first(&server, "nobody").await), "the same salt each time");
    assert_ne!(unknown.0, salt(&scram_server_first(&server, "somebody").await).0, "a salt per name");
    assert_eq!((known.0.len(), &known.1), (unknown.0.len(), &unknown.1));
    assert_eq!(known, salt(&scram_server_first(&server, "u_user").await));
    let wrong = connect(&server, "u_user", "wrong").await.unwrap_err();
    let missing = connect(&server, "nobody", "wrong").await.unwrap_err();
    assert_eq!(sqlstate(&wrong), "28P01");
    assert_eq!(
        wrong.as_db_error().unwrap().message().replace("u_user", "?"),
        missing.as_db_error().unwrap().message().replace("nobody", "?")
    );
}

/// Message limits: before login a message over 10,000 bytes is refused at its header (never
/// read into memory); after login, a message over `pg_max_message_bytes` ends the connection
/// with SQLSTATE 54000, and the server goes on serving.
#[tokio::test]
async fn messages_over_the_limits_are_refused() {
    use tokio::io::AsyncWriteExt;
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "pg_max_message_bytes = 65536\n");
    setup(&server).await;
    // A startup packet announcing 1 GiB: refused before any of it is sent.
    let mut socket = tokio::net::TcpStream::connect(&server.pg).await.unwrap();
    let mut header = (1u32 << 30).to_be_bytes().to_vec();
    header.extend_from_slice(&196_608u32.to_be_bytes());
    socket.write_all(&header).await.unwrap();
    let (kind, body) = read_message(&mut socket).await.unwrap();
    assert_eq!(kind, b'E', "an error response");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("54000"), "{text}");
    assert!(read_message(&mut socket).await.is_err(), "then the connection ends");
    // A SCRAM message of 20,000 bytes from a client that has not logged in.
    let mut socket = tokio::net::TcpStream::connect(&server.pg).await.unwrap();
    socket.write_all(&startup_packet("u_user")).await.unwrap();
    read_message(&mut socket).await.unwrap();
    let mut message = vec![b'p'];
    message.extend_from_slice(&20_004u32.to_be_bytes());
    message.extend(vec![b'x'; 20_000]);
    let _ = socket.write_all(&message).await;
    let (kind, body) = read_message(&mut socket).await.unwrap();
    assert_eq!(kind, b'E');
    assert!(String::from_utf8_lossy(&body).contains("54000"));
    // After login: 60 KB passes, 100 KB ends the connection.
    let client = connect(&server, "u_user", "pw").await.unwrap();
    let fits = format!("SELECT '{}' AS v", "a".repeat(60_000));
    assert_eq!(simple_rows(&client, &fits).await[0][0].len(), 60_000);
    let over = format!("SELECT '{}' AS v", "a".repeat(100_000));
    let e = client.simple_query(&over).await.unwrap_err();
    assert_eq!(sqlstate(&e), "54000", "{e}");
    assert!(client.simple_query("SELECT 1").await.is_err(), "the connection is closed");
    let again = connect(&server, "u_user", "pw").await.unwrap();
    assert_eq!(simple_rows(&again, "SELECT 1").await, [["1"]]);
}

/// A data dir from before SCRAM keys stored each user's salted password (enough to log in if
/// stolen): at the open it becomes StoredKey/ServerKey, the salted password leaves every file of
/// the data dir, and the user still logs in with the password.
#[tokio::test]
async fn salted_passwords_of_an_older_data_dir_become_scram_keys() {
    use topicfusion_storage::keys::{CatalogKind, catalog_key};
    use topicfusion_storage::{Commit, Durability, Store};
    // RFC 7677's example: password "pencil", this salt, 4096 iterations; SaltedPassword =
    // PBKDF2-HMAC-SHA-256 (Python's hashlib.pbkdf2_hmac gives the same).
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SALTED: &str = "xKSVEDI6tPlSysH6mUQZOeeOp01r6B3fcJbodRPcYV0=";
    let (_tmp, data) = data_dir();
    {
        let server = Server::start(&data, "");
        server.sql("CREATE USER old_u WITH PASSWORD 'pencil' ROLE user").await;
    }
    {
        let store = Store::open(&data, Durability::Sync).unwrap();
        let key = catalog_key(CatalogKind::User, "old_u");
        let mut meta: serde_json::Value = serde_json::from_slice(&store.get(&key).unwrap().unwrap()).unwrap();
        meta["scram"] = serde_json::json!({ "salt": SALT, "iterations": 4096, "salted_password": SALTED });
        let mut c = Commit::default();
        c.batch.put(&key, serde_json::to_vec(&meta).unwrap());
        store.commit(c).unwrap();
    }
    {
        let server = Server::start(&data, "");
        let client = connect(&server, "old_u", "pencil").await.unwrap();
        assert_eq!(simple_rows(&client, "SELECT current_user").await, [["old_u"]]);
        assert!(connect(&server, "old_u", "wrong").await.is_err());
    }
    let store = Store::open(&data, Durability::Sync).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&store.get(&catalog_key(CatalogKind::User, "old_u")).unwrap().unwrap()).unwrap();
    assert_eq!(meta["scram"]["salt"], SALT);
    assert!(meta["scram"]["stored_key"].as_str().is_some_and(|k| !k.is_empty()), "{meta}");
    assert!(meta["scram"].get("salted_password").is_none(), "{meta}");
    drop(store);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(SALTED.len()).any(|w| w == SALTED.as_bytes()),
            "the salted password is still in {}",
            path.display()
        );
    }
}

fn psql(server: &Server, user: &str, password: &str, args: &[&str]) -> (bool, String) {
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let out = Command::new("psql")
        .args(["-h", host, "-p", port, "-U", user, "-d", "topicfusion", "-X", "-v", "VERBOSITY=verbose"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (Debian's postgresql-client; scripts/setup.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn psql_runs_the_dialect_and_its_describe_commands() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let (ok, out) = psql(
        &server,
        "root",
        ROOT_PASSWORD,
        &[
            "-c",
            "CREATE TABLE app.orders (id BIGINT PRIMARY KEY, item TEXT NOT NULL, qty INT DEFAULT 1)",
            "-c",
            "INSERT INTO app.orders (id, item) VALUES (1, 'pen'), (2, 'ink')",
            "-c",
            "SELECT id, item, qty FROM app.orders ORDER BY id",
            "-c",
            "INSERT INTO app.t VALUES (7, 'seven')",
            "-c",
            "CONSUME FROM app.ev GROUP 'p' FROM EARLIEST WITH (timeout_ms = 100)",
        ],
    );
    assert!(ok, "{out}");
    for expected in
        ["CREATE TABLE", "INSERT 0 2", " 1 | pen  |   1", "(2 rows)", "INSERT 0 1", r#"{"id":7,"v":"seven"}"#]
    {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    let (ok, out) = psql(&server, "root", ROOT_PASSWORD, &["-c", r"\dt app.*"]);
    assert!(ok && out.contains("orders") && out.contains(" t "), "{out}");
    let (ok, out) = psql(&server, "root", ROOT_PASSWORD, &["-c", r"\d app.orders"]);
    assert!(ok, "{out}");
    for expected in ["Table \"app.orders\"", "id", "bigint", "not null", "item", "text", "qty", "integer"] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    let (ok, out) = psql(&server, "root", ROOT_PASSWORD, &["-c", r"\du"]);
    assert!(ok, "{out}");
    for expected in ["root", "Superuser", "u_dba", "u_user"] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    // Errors with their SQLSTATEs, as psql shows them.
    for (sql, state) in [
        ("INSERT INTO app.orders (id, item) VALUES (1, 'again')", "23505"),
        ("INSERT INTO app.orders (id) VALUES (3)", "23502"),
        ("SELECT * FROM app.nothing", "42P01"),
        ("CREAT TABLE x (a INT)", "42601"),
    ] {
        let (ok, out) = psql(&server, "root", ROOT_PASSWORD, &["-c", sql]);
        assert!(!ok && out.contains(&format!("ERROR:  {state}")), "{sql}: {out}");
    }
    let (ok, out) = psql(&server, "u_user", "pw", &["-c", "CREATE TOPIC app.nope"]);
    assert!(!ok && out.contains("ERROR:  42501"), "{out}");
    let (ok, out) = psql(&server, "u_user", "wrong", &["-c", "SELECT 1"]);
    assert!(!ok && out.contains("password authentication failed for user \"u_user\""), "{out}");
}

#[tokio::test]
async fn tls_when_configured() {
    let (tmp, data) = data_dir();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config =
        format!("pg_tls_cert = {:?}\npg_tls_key = {:?}\n", cert.display().to_string(), key.display().to_string());
    let server = Server::start(&data, &config);
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let out = Command::new("psql")
        .arg(format!("host={host} port={port} user=root dbname=x sslmode=require"))
        .args(["-X", "-A", "-t", "-c", "SELECT 'secure'"])
        .env("PGPASSWORD", ROOT_PASSWORD)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("secure"), "{text}");
}

/// Runs a driver's test script (tests/it/drivers/) against a fresh server; it prints
/// "<driver>: all checks passed" when every check held.
async fn driver(script: &str) {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    setup(&server).await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/drivers").join(format!("{script}_client.py"));
    let out = Command::new("python3")
        .arg(&path)
        .arg(&server.pg)
        .arg(ROOT_PASSWORD)
        .output()
        .expect("python3 with the drivers (scripts/setup.sh installs them)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} script failed:\n{text}");
    assert!(text.contains(&format!("{script}: all checks passed")), "{text}");
    // Nothing went wrong on the side (asyncio logs a protocol surprise and goes on).
    assert!(!text.contains("Traceback"), "{text}");
}

#[tokio::test]
async fn psycopg_connects_binds_consumes_and_acks() {
    driver("psycopg").await;
}

#[tokio::test]
async fn psycopg2_every_type_copy_named_cursors_and_the_topic_flow() {
    driver("psycopg2").await;
}

#[tokio::test]
async fn asyncpg_binary_types_arrays_copy_cursors_pool_and_the_topic_flow() {
    driver("asyncpg").await;
}

#[tokio::test]
async fn pg8000_text_parameters_copy_streams_and_the_topic_flow() {
    driver("pg8000").await;
}

#[tokio::test]
async fn sqlalchemy_reflection_core_orm_and_pool() {
    driver("sqlalchemy").await;
}

/// RFC 7677's SCRAM-SHA-256 example (user "user", password "pencil", 4096 iterations): the
/// server signature computed from our stored ServerKey is the RFC's, and the client proof of the
/// example verifies against our StoredKey.
#[test]
fn scram_credentials_match_rfc_7677() {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let credential = topicfusion_engine::auth::ScramCredential::with_salt("pencil", &salt, 4096);
    let (_, stored_key, server_key) = credential.decode().unwrap();
    let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let mut signature = Hmac::<Sha256>::new_from_slice(&server_key).unwrap();
    signature.update(auth_message.as_bytes());
    assert_eq!(b64.encode(signature.finalize().into_bytes()), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    let proof = b64.decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
    let mut client_signature = Hmac::<Sha256>::new_from_slice(&stored_key).unwrap();
    client_signature.update(auth_message.as_bytes());
    let client_key: Vec<u8> = proof.iter().zip(client_signature.finalize().into_bytes()).map(|(a, b)| a ^ b).collect();
    assert_eq!(Sha256::digest(&client_key).as_slice(), stored_key.as_slice());
    // Nothing that logs in is kept: no salted password.
    let json = serde_json::to_string(&credential).unwrap();
    assert!(!json.contains("salted"), "{json}");
}
