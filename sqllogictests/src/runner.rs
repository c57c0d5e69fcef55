//! Runs every `.slt` file under `sqllogictests/` against a fresh temporary data dir.
//!
//! `cargo test -p topicfusion-sqllogictests --test sqllogictests [-- FILTER] [-- --complete]`:
//! FILTER keeps the files whose path contains it; `--complete` rewrites the expected output.

use std::path::{Path, PathBuf};

use sqllogictest::{Runner, default_column_validator, default_normalizer, default_validator};
use topicfusion_sqllogictests::{Connection, SharedDatabase};

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    slt_files(root, &mut files);
    files.sort();
    files.retain(|f| filters.is_empty() || filters.iter().any(|p| f.to_string_lossy().contains(p.as_str())));

    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let name = file.strip_prefix(root).unwrap_or(file).display().to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = match SharedDatabase::open(dir.path().to_path_buf()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("FAIL {name}: cannot open database: {e}");
                failed += 1;
                continue;
            }
        };
        let mut runner = Runner::new(move || {
            let shared = shared.clone();
            async move { Ok(Connection::new(shared)) }
        });
        let result = if complete {
            runner
                .update_test_file(file, " ", default_validator, default_normalizer, default_column_validator)
                .await
                .map_err(|e| e.to_string())
        } else {
            runner.run_file_async(file).await.map_err(|e| e.display(true).to_string())
        };
        match result {
            Ok(()) => {
                println!("ok   {name}");
                passed += 1;
            }
            Err(e) => {
                println!("FAIL {name}\n{e}");
                failed += 1;
            }
        }
    }
    println!("sqllogictests: {passed} passed, {failed} failed");
    if failed > 0 || files.is_empty() {
        std::process::exit(1);
    }
}
