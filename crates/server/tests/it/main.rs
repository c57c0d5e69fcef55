//! The integration tests, in one binary: a module per area. Each test opens real RocksDB data
//! dirs in temporary directories; the CLI and HTTP tests run the real `topicfusion` binary.

mod cli;
mod cluster;
mod concurrency;
mod consume;
mod crash;
mod http;
mod live;
mod ops;
mod pg_values;
mod postgres;
mod retention;
mod robustness;
mod write_path;

use topicfusion_engine::{Database, DatabaseOptions};

/// A fresh database in a temporary directory (kept alive by the returned guard).
pub fn open_temp() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::open(dir.path(), DatabaseOptions::default()).expect("open database");
    (dir, db)
}

/// Runs SQL and returns the last statement's rows, each cell formatted as text.
pub async fn query(db: &Database, sql: &str) -> Vec<Vec<String>> {
    query_as(db, &topicfusion_engine::Principal::root(), sql).await
}

/// [`query`] as `principal`.
pub async fn query_as(db: &Database, principal: &topicfusion_engine::Principal, sql: &str) -> Vec<Vec<String>> {
    let results = db.execute_as(principal, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let last = results.last().expect("a statement");
    let mut rows = Vec::new();
    for batch in &last.batches {
        let options = datafusion::arrow::util::display::FormatOptions::default().with_null("NULL");
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| datafusion::arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    rows
}

#[test]
fn database_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Database>();
}
