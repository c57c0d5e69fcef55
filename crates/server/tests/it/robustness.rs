//! Hostile input through the engine API: deep expression chains get a clear error instead of a
//! stack overflow, long chains within the limit run, and nothing panics.

use crate::{open_temp, query};

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

#[tokio::test]
async fn deep_expressions_get_a_clear_error_at_every_interface() {
    let (_dir, db) = open_temp();
    db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT); CREATE TOPIC ev; INSERT INTO t VALUES (1, 1)")
        .await
        .unwrap();
    // Within the limit: runs (also an UPDATE, whose planning recurses the most).
    let ok = format!("SELECT {} AS n", chain("1", " + ", 100));
    assert_eq!(query(&db, &ok).await, vec![vec!["100".to_owned()]]);
    let ors = format!(
        "SELECT count(*) FROM t WHERE {}",
        (0..100).map(|i| format!("v = {i}")).collect::<Vec<_>>().join(" OR ")
    );
    assert_eq!(query(&db, &ors).await, vec![vec!["1".to_owned()]]);
    // A route filter within the limit is evaluated by the commit thread that writes the UPDATE.
    db.execute(&format!("ALTER TOPIC ev ADD SOURCE t ON UPDATE WHERE {} > 0", chain("v", " * ", 100))).await.unwrap();
    db.execute(&format!("UPDATE t SET v = {} WHERE id = 1", chain("v", " * ", 100))).await.unwrap();
    assert_eq!(query(&db, "SELECT sum(message_count) FROM system.topic_partitions").await, vec![vec!["1".to_owned()]]);
    db.execute("ALTER TOPIC ev DROP SOURCE t ON UPDATE").await.unwrap();
    // The limit itself: the query is one level, each of the n - 1 additions one, the last term one.
    let max = topicfusion_engine::MAX_EXPR_DEPTH;
    let n = max - 1;
    assert_eq!(query(&db, &format!("SELECT {} AS n", chain("1", " + ", n))).await, vec![vec![n.to_string()]]);
    let err = db.execute(&format!("SELECT {}", chain("1", " + ", n + 1))).await.unwrap_err().to_string();
    assert!(err.contains("expression nesting too deep: more than 128 levels"), "{err}");
    // Beyond it: one clear error, whatever the statement.
    let deep_or = (0..8500).map(|i| format!("v = {i}")).collect::<Vec<_>>().join(" OR ");
    for sql in [
        format!("SELECT {}", chain("1", " + ", 7700)),
        format!("ALTER TOPIC ev ADD SOURCE t ON DELETE WHERE {deep_or}"),
        format!("ALTER TOPIC ev ADD SOURCE t ON INSERT PARTITION BY ({})", chain("v", " + ", 5000)),
        format!("DELETE FROM t WHERE {deep_or}"),
        format!("UPDATE t SET v = {} WHERE id = 1", chain("v", " * ", 3000)),
        format!("SELECT * FROM t WHERE id IN (SELECT {})", chain("1", " - ", 3000)),
        format!("EXPLAIN SELECT {}", chain("1", " + ", 3000)),
        // Statements naming `pg_` go through the PostgreSQL-compatibility parser: the same limit.
        format!("SELECT pg_typeof({})", chain("1", " + ", 5000)),
        format!("SELECT 1{} FROM pg_catalog.pg_type", "::int".repeat(5000)),
        format!("SELECT typname FROM pg_catalog.pg_type WHERE {deep_or}"),
    ] {
        let err = db.execute(&sql).await.unwrap_err().to_string();
        assert!(err.contains("expression nesting too deep"), "{}: {err}", &sql[..60]);
    }
    // Far deeper than any stack: refused, and taken apart without recursion (this test thread
    // has a 2 MiB stack).
    for sql in [
        format!("SELECT {}", chain("1", " + ", 200_000)),
        format!("ALTER TOPIC ev ADD SOURCE t ON DELETE WHERE {}", chain("v", " - ", 200_000)),
        format!("SELECT v {} FROM t", " IS NULL".repeat(100_000)),
        format!("SUBSCRIBE SELECT id FROM t WHERE v > {}", chain("1", " + ", 200_000)),
        format!("DECLARE c CURSOR FOR SUBSCRIBE SELECT id FROM t WHERE v > {}", chain("1", " + ", 200_000)),
    ] {
        let err = db.execute(&sql).await.unwrap_err().to_string();
        assert!(err.contains("expression nesting too deep"), "{}: {err}", &sql[..60]);
    }
    // Nothing changed, and the database still works.
    assert_eq!(query(&db, "SELECT count(*) FROM t").await, vec![vec!["1".to_owned()]]);
}

#[tokio::test]
async fn a_route_that_no_longer_compiles_is_marked_broken_instead_of_failing_the_open() {
    use topicfusion_engine::{Database, DatabaseOptions};
    use topicfusion_storage::keys::{CatalogKind, catalog_key, qualified_catalog_key};
    use topicfusion_storage::{Commit, Durability, Store};

    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        db.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT); CREATE TOPIC ev; ALTER TOPIC ev ADD SOURCE t ON INSERT WHERE v > 0")
            .await
            .unwrap();
    }
    // The stored filter now names a function that does not exist (as after an upgrade that
    // removed it), and the entry sits under the old `schema.name` key.
    {
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        let key = qualified_catalog_key(CatalogKind::Topic, "public", "ev");
        let mut meta: serde_json::Value = serde_json::from_slice(&store.get(&key).unwrap().unwrap()).unwrap();
        meta["routes"][0]["filter"] = serde_json::json!("no_such_function(v) > 0");
        let mut c = Commit::default();
        c.batch.delete(&key);
        c.batch.put(catalog_key(CatalogKind::Topic, "public.ev"), serde_json::to_vec(&meta).unwrap());
        store.commit(c).unwrap();
    }
    let db = Database::open(dir.path(), DatabaseOptions::default()).expect("a broken route does not fail the open");
    let broken = query(&db, "SELECT broken_routes FROM system.topics WHERE name = 'public.ev'").await;
    assert!(broken[0][0].starts_with("public.t ON insert: "), "{broken:?}");
    // Writes that the route should capture fail (a change never commits without its messages).
    let err = db.execute("INSERT INTO t VALUES (1, 1)").await.unwrap_err().to_string();
    assert!(err.contains("is broken") && err.contains("ALTER TOPIC public.ev DROP SOURCE public.t ON INSERT"), "{err}");
    assert_eq!(query(&db, "SELECT count(*) FROM t").await, vec![vec!["0".to_owned()]]);
    db.execute("ALTER TOPIC ev DROP SOURCE t ON INSERT").await.unwrap();
    db.execute("INSERT INTO t VALUES (1, 1)").await.unwrap();
    assert_eq!(query(&db, "SELECT broken_routes FROM system.topics").await, vec![vec!["NULL".to_owned()]]);
    drop(db);
    // The entry moved to its canonical key at the open.
    let store = Store::open(dir.path(), Durability::Process).unwrap();
    assert!(store.get(&qualified_catalog_key(CatalogKind::Topic, "public", "ev")).unwrap().is_some());
    assert!(store.get(&catalog_key(CatalogKind::Topic, "public.ev")).unwrap().is_none());
}

/// Statements made of random words (topic and standard SQL), and mutations of valid ones, run
/// through `Database::execute`: errors are fine, panics are not (a panic fails the property).
mod random_statements {
    use proptest::prelude::*;
    use proptest::test_runner::TestRunner;
    use topicfusion_engine::Database;

    const CASES: u32 = 400;

    const WORDS: &[&str] = &[
        "CREATE",
        "DROP",
        "ALTER",
        "CLEAR",
        "TOPIC",
        "TABLE",
        "SCHEMA",
        "USER",
        "CONSUME",
        "ACK",
        "RESET",
        "CONSUMER",
        "GROUP",
        "FROM",
        "PARTITION",
        "PARTITIONS",
        "OFFSET",
        "OFFSETS",
        "UPTO",
        "EARLIEST",
        "LATEST",
        "LIMIT",
        "WITH",
        "WHERE",
        "ADD",
        "SOURCE",
        "ON",
        "INSERT",
        "INTO",
        "VALUES",
        "UPDATE",
        "SET",
        "DELETE",
        "SELECT",
        "*",
        "t",
        "ev",
        "id",
        "v",
        "(",
        ")",
        ",",
        "=",
        "<=",
        "+",
        "-",
        "'g'",
        "0",
        "1",
        "2147483647",
        "9223372036854775807",
        "-9223372036854775808",
        "NULL",
        "PRIMARY",
        "KEY",
        "INT",
        "BIGINT",
        "TEXT",
        "AND",
        "OR",
        "IN",
        "BETWEEN",
        "EXPLAIN",
        "timeout_ms",
        "visibility_timeout_ms",
        "max_deliveries",
        "dead_letter_topic",
        "'ev'",
        "payload",
        "'full'",
        "PASSWORD",
        "ROLE",
        "'x'",
        "dba",
        "system.topics",
        "system.users",
    ];

    const VALID: &[&str] = &[
        "INSERT INTO t VALUES (1, 2)",
        "UPDATE t SET v = v + 1 WHERE id <= 2147483647",
        "DELETE FROM t WHERE id IN (1, 2)",
        "SELECT * FROM t WHERE id BETWEEN 0 AND 9223372036854775807",
        "CONSUME FROM ev GROUP 'g' FROM EARLIEST LIMIT 5 WITH (timeout_ms = 1)",
        "ACK ev GROUP 'g' OFFSETS (0, 1)",
        "ALTER TOPIC ev ADD SOURCE t ON UPDATE WHERE v > 1 WITH (payload = 'diff')",
        "RESET CONSUMER GROUP 'g' ON ev TO OFFSET 0",
        "CREATE USER u WITH PASSWORD 'p' ROLE service",
    ];

    /// A database with a routed table and a topic, in a temp dir that is removed when the test
    /// ends (a `static` would never be dropped and would leave its RocksDB dir behind).
    /// Fields drop in order: the database closes before its runtime and its directory go.
    struct Env {
        db: Database,
        rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    impl Env {
        fn new() -> Self {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let db = Database::open(dir.path(), Default::default()).unwrap();
            rt.block_on(db.execute(
                "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT); CREATE TOPIC ev PARTITIONS 2;
                 ALTER TOPIC ev ADD SOURCE t ON INSERT; INSERT INTO t VALUES (5, 5)",
            ))
            .unwrap();
            Env { db, rt, _dir: dir }
        }

        /// Runs `CASES` statements drawn from `statements`; errors are fine, a panic fails the
        /// test with the (shrunk) statement that caused it.
        fn check(&self, statements: impl Strategy<Value = String>) {
            let mut runner = TestRunner::new(ProptestConfig { cases: CASES, ..ProptestConfig::default() });
            let result = runner.run(&statements, |sql| {
                let _ = self.rt.block_on(self.db.execute(&sql));
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn random_words_never_panic() {
        Env::new().check(proptest::collection::vec(proptest::sample::select(WORDS), 1..16).prop_map(|w| w.join(" ")));
    }

    #[test]
    fn mutated_statements_never_panic() {
        let mutated =
            (proptest::sample::select(VALID), any::<prop::sample::Index>(), 0..3u8, proptest::sample::select(WORDS))
                .prop_map(|(base, at, kind, word)| {
                    let mut tokens: Vec<&str> = base.split(' ').collect();
                    let i = at.index(tokens.len());
                    match kind {
                        0 => {
                            tokens.remove(i);
                        }
                        1 => tokens.insert(i, word),
                        _ => tokens[i] = word,
                    }
                    tokens.join(" ")
                });
        Env::new().check(mutated);
    }
}
