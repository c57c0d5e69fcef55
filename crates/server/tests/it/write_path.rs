//! The write path: the literal INSERT fast path against DataFusion's planning of the same
//! literals, concurrent INSERTs into one table, DDL beside DML, the statement size limit.

use std::sync::Arc;

use topicfusion_engine::{Database, DatabaseOptions};

use crate::{open_temp, query};

/// Every literal goes into table `fast` by a plain VALUES (the fast path) and into `slow` by a
/// VALUES whose key cell is an expression (DataFusion plans it): both must store the same value
/// or fail with the same error.
#[tokio::test]
async fn literal_inserts_match_datafusion_planning() {
    let (_dir, db) = open_temp();
    let cases: &[(&str, &[&str])] = &[
        (
            "SMALLINT",
            &["0", "-1", "32767", "32768", "-32768", "-32769", "1.5", "'12'", "' 12'", "'abc'", "1e3", "true", "NULL"],
        ),
        ("INT", &["2147483647", "2147483648", "-2147483648", "'-7'", "2.0", "-0", "007"]),
        (
            "BIGINT",
            &[
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775808",
                "-9223372036854775809",
                "18446744073709551615",
                "'9223372036854775807'",
            ],
        ),
        (
            "DOUBLE",
            &[
                "42.5",
                "0.1",
                "-0.0",
                "123456789012345.6",
                "1234567890123456.7",
                "9007199254740993",
                "1e300",
                "'3.5'",
                "'NaN'",
                "'-inf'",
                "5",
                ".5",
                "5.",
            ],
        ),
        ("REAL", &["0.1", "16777217", "3.4028235e38", "'1.25'", "-2.5"]),
        ("DECIMAL(5,2)", &["1", "123.4", "123.456", "1234.5", "-0.01", "'1.5'", "999.99", "1000", "-999.995", "0.5"]),
        ("DECIMAL(38,0)", &["99999999999999999999999999999999999999", "12345678901234567890", "1.5"]),
        ("TEXT", &["'x'", "''", "'it''s'", "5", "true", "'ünï ☃'", "2.5"]),
        ("BOOLEAN", &["true", "false", "'true'", "'t'", "'yes'", "1", "0", "'maybe'"]),
        ("DATE", &["'2024-01-31'", "'2024-02-30'", "'x'", "0", "'2024-1-5'"]),
        (
            "TIMESTAMP",
            &[
                "'2024-01-01 00:00:00'",
                "'2024-01-01T10:00:00Z'",
                "'2024-01-01T10:00:00+02:00'",
                "'2024-01-01 10:00:00.123456789'",
                "'junk'",
                "1700000000",
            ],
        ),
        ("BYTEA", &["'abc'", "''", "5"]),
    ];
    let mut checked = 0;
    let mut fast_ok = 0;
    for (t, (ty, literals)) in cases.iter().enumerate() {
        db.execute(&format!(
            "CREATE TABLE fast{t} (id INT PRIMARY KEY, v {ty}); CREATE TABLE slow{t} (id INT PRIMARY KEY, v {ty})"
        ))
        .await
        .unwrap();
        for (i, lit) in literals.iter().enumerate() {
            let before = db.literal_inserts();
            let fast = db.execute(&format!("INSERT INTO fast{t} VALUES ({i}, {lit})")).await;
            fast_ok += db.literal_inserts() - before;
            let slow = db.execute(&format!("INSERT INTO slow{t} VALUES ({i} + 0, {lit})")).await;
            match (&fast, &slow) {
                (Ok(_), Ok(_)) => {}
                (Err(f), Err(s)) => assert_eq!(f.to_string(), s.to_string(), "{ty} {lit}"),
                _ => panic!("{ty} {lit}: fast path {fast:?}, DataFusion {slow:?}"),
            }
            checked += 1;
        }
        // Several rows: VALUES unifies a column's literals before casting.
        let rows = literals.iter().enumerate().map(|(i, l)| format!("({}, {l})", i + 100)).collect::<Vec<_>>();
        let fast = db.execute(&format!("INSERT INTO fast{t} VALUES {}", rows.join(", "))).await;
        let slow_rows: Vec<String> =
            literals.iter().enumerate().map(|(i, l)| format!("({} + 0, {l})", i + 100)).collect();
        let slow = db.execute(&format!("INSERT INTO slow{t} VALUES {}", slow_rows.join(", "))).await;
        assert_eq!(fast.is_ok(), slow.is_ok(), "{ty}: {fast:?} / {slow:?}");
        let a = query(&db, &format!("SELECT id, v FROM fast{t} ORDER BY id")).await;
        let b = query(&db, &format!("SELECT id, v FROM slow{t} ORDER BY id")).await;
        assert_eq!(a, b, "{ty}");
        assert!(!a.is_empty(), "{ty}: no literal was accepted");
    }
    assert!(checked > 80);
    // Most literals take the fast path (the rest are left to DataFusion); the key expression
    // `i + 0` never does.
    assert!(fast_ok > checked / 2, "{fast_ok} of {checked}");
}

/// Mixed literal kinds in one column, defaults for omitted columns, and column lists.
#[tokio::test]
async fn literal_inserts_with_column_lists_and_defaults_match_datafusion() {
    let (_dir, db) = open_temp();
    for name in ["fast", "slow"] {
        db.execute(&format!(
            "CREATE TABLE {name} (id INT PRIMARY KEY, d DOUBLE DEFAULT 1.5, s TEXT DEFAULT 'none', n DECIMAL(6,2), b BOOLEAN)"
        ))
        .await
        .unwrap();
    }
    let statements = [
        "INSERT INTO {t} VALUES ({k}1, 1, 'a', 1, true), ({k}2, 2.25, 'b', 2.5, NULL), ({k}3, -7, NULL, -0.5, false)",
        "INSERT INTO {t} (s, id) VALUES ('only s', {k}4)",
        "INSERT INTO {t} (id, n) VALUES ({k}5, 12), ({k}6, 1234.56)",
        "INSERT INTO {t} (\"id\", B) VALUES ({k}7, 'false')",
        "INSERT INTO {t} VALUES ({k}8, DEFAULT, DEFAULT, NULL, true)",
        // The VALUES scanner declines comments; the parsed statement still takes the fast path.
        "INSERT INTO {t} /* c */ VALUES ({k}9, 3, 'c''d', 1, true) -- end",
    ];
    for s in statements {
        db.execute(&s.replace("{t}", "fast").replace("{k}", "")).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        db.execute(&s.replace("{t}", "slow").replace("{k}", "0 + ")).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let a = query(&db, "SELECT * FROM fast ORDER BY id").await;
    let b = query(&db, "SELECT * FROM slow ORDER BY id").await;
    assert_eq!(a, b);
    // The DEFAULT cells of the eighth row are literals after expansion.
    assert_eq!(db.literal_inserts(), 6);
    assert_eq!(a[8], ["9", "3.0", "c'd", "1.00", "true"]);
    assert_eq!(a[3], ["4", "1.5", "only s", "NULL", "NULL"]);
    assert_eq!(a[7], ["8", "1.5", "none", "NULL", "true"]);
}

/// A prepared INSERT of parameters and literals builds its rows from the bound values (its
/// template), with the same values and errors as binding them into the statement and planning
/// it: table `fast{t}` by `VALUES ($1, $2)` (the template), `slow{t}` by `VALUES ($1 + 0, $2)`.
#[tokio::test]
async fn prepared_insert_templates_match_binding_and_planning() {
    use topicfusion_engine::{ParamValue as P, Principal};
    let (_dir, db) = open_temp();
    let params = [
        P::Int(0),
        P::Int(-1),
        P::Int(40_000),
        P::Int(i64::MIN),
        P::Int(i64::MAX),
        P::Numeric("1.5".into()),
        P::Numeric("-0.01".into()),
        P::Numeric("123.456".into()),
        P::Numeric("+7".into()),
        P::Numeric("1E3".into()),
        P::Numeric("NaN".into()),
        P::Float(2.5),
        P::Text("12".into()),
        P::Text("abc".into()),
        P::Text("NaN".into()),
        P::Text("2024-02-30".into()),
        P::Text("2024-01-01 10:00:00".into()),
        P::Text("\\x0001ff".into()),
        P::Bool(true),
        P::Null,
        P::Bytes(vec![0, 1, 255]),
    ];
    let types = [
        "SMALLINT",
        "INT",
        "BIGINT",
        "DOUBLE",
        "REAL",
        "DECIMAL(5,2)",
        "TEXT",
        "BOOLEAN",
        "DATE",
        "TIMESTAMP",
        "BYTEA",
    ];
    let (root, mut session) = (Principal::root(), db.session());
    let mut templated = 0;
    for (t, ty) in types.iter().enumerate() {
        db.execute(&format!(
            "CREATE TABLE fast{t} (id INT PRIMARY KEY, v {ty}, d TEXT DEFAULT 'dflt'); CREATE TABLE slow{t} (id INT PRIMARY KEY, v {ty}, d TEXT DEFAULT 'dflt')"
        ))
        .await
        .unwrap();
        let fast = db.prepare(&format!("INSERT INTO fast{t} (id, v) VALUES ($1, $2)")).unwrap().unwrap();
        let slow = db.prepare(&format!("INSERT INTO slow{t} (id, v) VALUES ($1 + 0, $2)")).unwrap().unwrap();
        for (i, p) in params.iter().enumerate() {
            let bound = [P::Int(i as i64), p.clone()];
            let before = db.literal_inserts();
            let a = db.execute_prepared(&mut session, &root, &fast, &bound).await;
            templated += db.literal_inserts() - before;
            let b = db.execute_prepared(&mut session, &root, &slow, &bound).await;
            match (&a, &b) {
                (Ok(_), Ok(_)) => {}
                (Err(a), Err(b)) => assert_eq!(
                    a.to_string().replace("VALUES ($1, $2)", ""),
                    b.to_string().replace("VALUES ($1 + 0, $2)", ""),
                    "{ty} {p:?}"
                ),
                _ => panic!("{ty} {p:?}: template {a:?}, planned {b:?}"),
            }
        }
        let a = query(&db, &format!("SELECT * FROM fast{t} ORDER BY id")).await;
        let b = query(&db, &format!("SELECT * FROM slow{t} ORDER BY id")).await;
        assert_eq!(a, b, "{ty}");
        assert!(!a.is_empty(), "{ty}: no value was accepted");
    }
    assert!(templated > 50, "{templated} executions took the template");

    // A table dropped and created again after Parse: the template is not used, the new table's
    // types are.
    db.execute("CREATE TABLE re (id BIGINT PRIMARY KEY, v INT)").await.unwrap();
    let insert = db.prepare("INSERT INTO re VALUES ($1, $2)").unwrap().unwrap();
    db.execute("DROP TABLE re; CREATE TABLE re (id BIGINT PRIMARY KEY, v TEXT)").await.unwrap();
    db.execute_prepared(&mut session, &root, &insert, &[P::Int(1), P::Int(5)]).await.unwrap();
    let err = db.execute_prepared(&mut session, &root, &insert, &[P::Int(1), P::Int(6)]).await.unwrap_err();
    assert!(err.to_string().contains("duplicate primary key"), "{err}");
    assert_eq!(query(&db, "SELECT id, v, arrow_typeof(v) FROM re").await, [["1", "5", "Utf8"]]);
    // Literal cells, several rows and a parameter used twice.
    let insert = db.prepare("INSERT INTO re VALUES ($1, 'a'), ($2, $3), ($1 + 10, $3)").unwrap().unwrap();
    db.execute_prepared(&mut session, &root, &insert, &[P::Int(2), P::Int(3), P::Text("b".into())]).await.unwrap();
    let insert = db.prepare("INSERT INTO re VALUES ($1, 'a'), ($2, $3), ($2 + 10, $3)").unwrap().unwrap();
    let before = db.literal_inserts();
    let err = db.execute_prepared(&mut session, &root, &insert, &[P::Int(4)]).await.unwrap_err();
    assert!(err.to_string().contains("parameter $3 but only 1 were bound"), "{err}");
    assert_eq!(db.literal_inserts(), before);
    let insert = db.prepare("INSERT INTO re VALUES ($1, 'a'), ($2, $3)").unwrap().unwrap();
    db.execute_prepared(&mut session, &root, &insert, &[P::Int(4), P::Int(5), P::Text("c".into())]).await.unwrap();
    assert_eq!(db.literal_inserts(), before + 1, "the template was used");
    assert_eq!(
        query(&db, "SELECT id, v FROM re ORDER BY id").await,
        [["1", "5"], ["2", "a"], ["3", "b"], ["4", "a"], ["5", "c"], ["12", "b"]]
    );
}

/// After `SET datafusion.catalog.default_schema`, an unqualified INSERT goes to the session's
/// schema on every literal path (a lone statement, one in a longer text, a prepared one), as
/// planning resolves the name.
#[tokio::test]
async fn literal_inserts_resolve_names_in_the_sessions_default_schema() {
    use topicfusion_engine::{ParamValue as P, Principal};
    let (_dir, db) = open_temp();
    db.execute("CREATE SCHEMA app; CREATE TABLE app.t (id INT PRIMARY KEY); CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let (root, mut session) = (Principal::root(), db.session());
    let prepared = db.prepare("INSERT INTO t VALUES ($1)").unwrap().unwrap();
    db.execute_in(&mut session, &root, "SET datafusion.catalog.default_schema = 'app'").await.unwrap();
    db.execute_in(&mut session, &root, "INSERT INTO t VALUES (1)").await.unwrap();
    db.execute_in(&mut session, &root, "SELECT 1; INSERT INTO t VALUES (2)").await.unwrap();
    db.execute_prepared(&mut session, &root, &prepared, &[P::Int(3)]).await.unwrap();
    assert_eq!(query(&db, "SELECT id FROM app.t ORDER BY id").await, [["1"], ["2"], ["3"]]);
    assert!(query(&db, "SELECT id FROM public.t").await.is_empty());
    // A session on `public` still takes the literal path.
    let before = db.literal_inserts();
    db.execute("INSERT INTO t VALUES (4)").await.unwrap();
    assert_eq!(db.literal_inserts(), before + 1);
    assert_eq!(query(&db, "SELECT id FROM public.t").await, [["4"]]);
}

/// 16 tasks insert distinct keys into one routed table at once, some with duplicate keys
/// between them: every accepted row is stored once with exactly one message, offsets are
/// gap-free, and each duplicate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_into_one_table_keep_keys_unique_and_offsets_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    db.execute(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC ev; ALTER TOPIC ev ADD SOURCE t ON INSERT",
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|c| {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                let mut ok = 0u64;
                let mut dup = 0u64;
                for n in 0..50u64 {
                    // Keys 0..400 are contended by pairs of tasks; the rest are the task's own.
                    let key = if n % 2 == 0 { (c / 2) * 50 + n } else { 1_000_000 * (c + 1) + n };
                    let sql = if n % 5 == 0 {
                        format!("INSERT INTO t SELECT {key}, 'task {c}'")
                    } else {
                        format!("INSERT INTO t VALUES ({key}, 'task {c}')")
                    };
                    match db.execute(&sql).await {
                        Ok(_) => ok += 1,
                        Err(e) if e.to_string().contains("duplicate primary key") => dup += 1,
                        Err(e) => panic!("{sql}: {e}"),
                    }
                }
                (ok, dup)
            })
        })
        .collect();
    let (mut ok, mut dup) = (0, 0);
    for t in tasks {
        let (o, d) = t.await.unwrap();
        ok += o;
        dup += d;
    }
    // Each contended key was inserted by two tasks: exactly one of them won.
    assert_eq!(dup, 8 * 25);
    assert_eq!(ok, 16 * 50 - dup);
    let rows = query(&db, "SELECT count(*), count(DISTINCT id) FROM t").await;
    assert_eq!(rows, [[ok.to_string(), ok.to_string()]]);
    let consumed = db
        .consume(
            "ev",
            &topicfusion_engine::ConsumeRequest {
                start: Some(topicfusion_engine::StartPosition::Earliest),
                limit: 10_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(consumed.len() as u64, ok);
    for (i, m) in consumed.iter().enumerate() {
        assert_eq!(m.offset, i as u64, "offsets are gap-free");
    }
}

/// A statement whose rows exceed `max_statement_bytes` fails with an error naming the limit and
/// changes nothing; smaller ones and the literal path are not affected.
#[tokio::test]
async fn a_statement_above_max_statement_bytes_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = DatabaseOptions { max_statement_bytes: 1 << 20, ..Default::default() };
    let db = Database::open(dir.path(), options).unwrap();
    db.execute(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC ev; ALTER TOPIC ev ADD SOURCE t ON UPDATE",
    )
    .await
    .unwrap();
    db.execute("INSERT INTO t SELECT value, repeat('x', 20) FROM generate_series(1, 20000)").await.unwrap();
    let err = db.execute("UPDATE t SET v = repeat('y', 100)").await.unwrap_err().to_string();
    assert!(err.contains("more than 1 MiB of rows in public.t (limit max_statement_bytes)"), "{err}");
    let err = db.execute("INSERT INTO t SELECT value, 'z' FROM generate_series(100001, 300000)").await.unwrap_err();
    assert!(err.to_string().contains("max_statement_bytes"), "{err}");
    // A literal INSERT (the fast path) is bounded the same way, and so is its prepared form.
    let rows: Vec<String> = (500_000..520_000).map(|i| format!("({i}, '{}')", "w".repeat(60))).collect();
    let big_literal = format!("INSERT INTO t VALUES {}", rows.join(", "));
    let before = db.literal_inserts();
    let err = db.execute(&big_literal).await.unwrap_err().to_string();
    assert!(err.contains("more than 1 MiB of rows in public.t (limit max_statement_bytes)"), "{err}");
    assert_eq!(db.literal_inserts(), before + 1, "the INSERT took the literal path");
    assert_eq!(query(&db, "SELECT count(*), max(v) FROM t").await, [["20000", "xxxxxxxxxxxxxxxxxxxx"]]);
    // A bounded UPDATE goes through.
    assert_eq!(query(&db, "UPDATE t SET v = 'y' WHERE id <= 1000").await, [["1000"]]);
    let err = db.execute("CREATE TABLE big AS SELECT value AS id FROM generate_series(1, 500000)").await.unwrap_err();
    assert!(err.to_string().contains("max_statement_bytes"), "{err}");
    assert!(db.execute("SELECT * FROM big").await.is_err(), "the failed CREATE TABLE ... AS left no table");
}

/// CREATE TABLE, and INSERTs into the new table, complete while a long INSERT into another table
/// runs (table DDL does not wait for DML on other tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_ddl_does_not_wait_for_dml_on_other_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    db.execute("CREATE TABLE big (id BIGINT PRIMARY KEY); CREATE TOPIC ev; ALTER TOPIC ev ADD SOURCE big ON INSERT")
        .await
        .unwrap();
    let long = {
        let db = Arc::clone(&db);
        tokio::spawn(async move { db.execute("INSERT INTO big SELECT value FROM generate_series(1, 200000)").await })
    };
    // Let the long INSERT start (not a timing assertion: the check below is about order).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    db.execute("CREATE TABLE small (id INT PRIMARY KEY); INSERT INTO small VALUES (1); DROP TABLE small")
        .await
        .unwrap();
    assert!(!long.is_finished(), "table DDL waited for the INSERT into another table");
    let result = long.await.unwrap().unwrap();
    assert_eq!(result[0].batches[0].num_rows(), 1);
    assert_eq!(query(&db, "SELECT count(*) FROM big").await, [["200000"]]);
}

/// INSERTs (sharing the table) race UPDATEs that move rows onto the same keys (excluding them):
/// whatever wins, no key is ever held by two rows and every stored row was published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inserts_racing_key_moving_updates_never_duplicate_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC ev; ALTER TOPIC ev ADD SOURCE t ON INSERT; ALTER TOPIC ev ADD SOURCE t ON UPDATE")
        .await
        .unwrap();
    db.execute("INSERT INTO t SELECT value, 'old' FROM generate_series(0, 99)").await.unwrap();
    let mut tasks = Vec::new();
    for c in 0..6u64 {
        let db = Arc::clone(&db);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for n in 0..40u64 {
                let key = 1000 + (n * 7 + c * 13) % 100;
                match db.execute(&format!("INSERT INTO t VALUES ({key}, 'ins {c}')")).await {
                    Ok(_) => ok += 1,
                    Err(e) if e.to_string().contains("duplicate primary key") => {}
                    Err(e) => panic!("{e}"),
                }
            }
            ok
        }));
    }
    let updater = {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            let mut moved = 0u64;
            for n in 0..50u64 {
                match db.execute(&format!("UPDATE t SET id = id + 1000, v = 'moved' WHERE id = {n}")).await {
                    Ok(r) => {
                        moved += r[0].batches[0]
                            .column(0)
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                            .unwrap()
                            .value(0)
                    }
                    Err(e) if e.to_string().contains("duplicate primary key") => {}
                    Err(e) => panic!("{e}"),
                }
            }
            moved
        })
    };
    let mut inserted = 0;
    for t in tasks {
        inserted += t.await.unwrap();
    }
    let moved = updater.await.unwrap();
    let rows = query(&db, "SELECT count(*), count(DISTINCT id) FROM t").await;
    let total = 100 + inserted;
    assert_eq!(rows, [[total.to_string(), total.to_string()]]);
    assert_eq!(query(&db, "SELECT count(*) FROM t WHERE v = 'moved'").await, [[moved.to_string()]]);
    // Messages: the 100 initial rows, one per INSERT, and a delete+insert pair per moved row.
    let state = query(&db, "SELECT next_offset FROM system.topic_partitions").await;
    assert_eq!(state, [[(100 + inserted + 2 * moved).to_string()]]);
}
