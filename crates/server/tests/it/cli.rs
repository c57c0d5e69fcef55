//! The `topicfusion sql` command line, run as a real process.

use std::path::Path;
use std::process::{Command, Output};

fn topicfusion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_topicfusion"))
}

/// `topicfusion sql --data-dir DIR [extra args] -c SQL`, run to completion.
fn sql(dir: &Path, extra: &[&str], sql: &str) -> Output {
    topicfusion().args(["sql", "--data-dir"]).arg(dir).args(extra).args(["-c", sql]).output().unwrap()
}

#[test]
fn csv_prints_a_header_and_the_rows_of_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = sql(
        dir.path(),
        &["--format", "csv"],
        "CREATE TABLE t (id INT PRIMARY KEY, s TEXT); INSERT INTO t VALUES (2, 'b'), (1, 'a'); SELECT * FROM t ORDER BY id; SELECT id FROM t WHERE false",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, "status\ncreated table public.t\ncount\n2\nid,s\n1,a\n2,b\nid\n");
}

#[test]
fn a_failing_statement_exits_non_zero_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = sql(
        dir.path(),
        &[],
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO nope VALUES (1); INSERT INTO t VALUES (1)",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("error in statement 2 (`INSERT INTO nope VALUES (1)`)"), "{stderr}");
    // The statements before the failure committed; the ones after it did not run.
    let out = sql(dir.path(), &["--format", "csv"], "SELECT count(*) AS n FROM t");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "n\n0\n");
}

/// Text that does not parse runs nothing, even when its first statement would: a missing `;`
/// between two statements is a syntax error of the whole request, as in PostgreSQL.
#[test]
fn a_missing_semicolon_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(sql(dir.path(), &[], "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)").status.success());
    for text in ["INSERT INTO t VALUES (2) SELECT 2", "DELETE FROM t WHERE id = 1 DROP TABLE t"] {
        let out = sql(dir.path(), &[], text);
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.to_lowercase().contains("syntax") || stderr.contains("Expected"), "{stderr}");
    }
    let out = sql(dir.path(), &["--format", "csv"], "SELECT id FROM t ORDER BY id");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "id\n1\n");
}

#[test]
fn file_and_stdin_input_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("setup.sql");
    std::fs::write(&file, "CREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (7);\n").unwrap();
    let data = dir.path().join("data");
    let out = topicfusion().args(["sql", "--data-dir"]).arg(&data).arg("-f").arg(&file).output().unwrap();
    assert!(out.status.success());

    use std::io::Write;
    let mut child = topicfusion()
        .args(["sql", "--format", "json", "--data-dir"])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"SELECT id\nFROM t;\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[{\"id\":7}]\n");
}

#[test]
fn a_bad_data_dir_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = sql(&file, &[], "SELECT 1");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open data dir"));
}

#[test]
fn results_print_as_statements_complete_and_errors_are_one_bounded_line() {
    let dir = tempfile::tempdir().unwrap();
    // The failure comes after committed statements: their results are printed.
    let out = sql(
        dir.path(),
        &["--format", "csv"],
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1); INSERT INTO t VALUES (1); SELECT 2",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "status\ncreated table public.t\ncount\n1\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error in statement 3 (`INSERT INTO t VALUES (1)`)"), "{stderr}");
    // A parse error names its statement; the ones before it ran.
    let out = sql(dir.path(), &["--format", "csv"], "SELECT 7 AS a; SELEC 1; SELECT 8");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\n7\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error in statement 2: "), "{stderr}");
    // A huge input: one line, bounded, the statement echoed in at most ~200 characters.
    let huge = dir.path().join("huge.sql");
    std::fs::write(&huge, format!("CONSUME FROM t GROUP '{}'", "g".repeat(1_000_000))).unwrap();
    let out = topicfusion().args(["sql", "--data-dir"]).arg(dir.path()).arg("-f").arg(&huge).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", &stderr[..200]);
    assert!(stderr.len() < 1500, "{} bytes", stderr.len());
}

#[test]
fn a_file_of_many_statements_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.sql");
    let mut text = String::from("CREATE TABLE t (id INT PRIMARY KEY, s TEXT);\n");
    for i in 0..3_000 {
        text.push_str(&format!("INSERT INTO t VALUES ({i}, 'row\n{i}; with a semicolon');\n"));
    }
    text.push_str("SELECT count(*) AS n FROM t;\n");
    std::fs::write(&file, text).unwrap();
    let out = topicfusion()
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("n\n3000\n"));
}
