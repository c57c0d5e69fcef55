//! The `topicfusion` command line: `topicfusion sql` runs SQL against a data dir (from `-c`,
//! from `-f`, or at an interactive prompt) and prints each statement's result.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use topicfusion_engine::{Database, DatabaseOptions, Durability, StatementResult};

#[derive(Parser)]
#[command(name = "topicfusion", version, about = "Durable topics and change-data capture for Apache DataFusion")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run SQL statements against a data dir.
    Sql {
        /// The data directory (created if missing).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// How results are printed.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// SQL text to run (one or more `;`-separated statements).
        #[arg(short = 'c', long, conflicts_with = "file")]
        command: Option<String>,
        /// A file of SQL statements to run.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// fsync the write-ahead log on every commit (survives power loss, not only crashes).
        #[arg(long)]
        sync: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sql { data_dir, format, command, file, sync } => {
            let options = DatabaseOptions {
                durability: if sync { Durability::Sync } else { Durability::Process },
                ..DatabaseOptions::default()
            };
            let db = match Database::open(&data_dir, options) {
                Ok(db) => db,
                Err(e) => {
                    eprintln!("error: cannot open data dir {}: {e}", data_dir.display());
                    return ExitCode::FAILURE;
                }
            };
            let sql = match (command, file) {
                (Some(sql), _) => sql,
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: cannot read {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                },
                (None, None) => return interactive(&db, format).await,
            };
            if run(&db, &sql, format).await { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}

/// Runs SQL text and prints the results; returns false (after printing the error) on failure.
async fn run(db: &Database, sql: &str, format: Format) -> bool {
    match db.execute(sql).await {
        Ok(results) => {
            for r in &results {
                if let Err(e) = print_result(r, format) {
                    eprintln!("error: cannot print the result of `{}`: {e}", r.sql);
                    return false;
                }
            }
            true
        }
        Err(e) if e.statement == 0 => {
            eprintln!("error: {}", e.source);
            false
        }
        Err(e) => {
            eprintln!("error in statement {} (`{}`): {}", e.statement, e.sql, e.source);
            false
        }
    }
}

fn print_result(r: &StatementResult, format: Format) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => writeln!(out, "{}", pretty_format_batches_with_schema(r.schema.clone(), &r.batches)?)?,
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            if r.batches.is_empty() {
                w.write(&RecordBatch::new_empty(r.schema.clone()))?;
            }
            for b in &r.batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
            let batches: Vec<&RecordBatch> = r.batches.iter().collect();
            w.write_batches(&batches)?;
            w.finish()?;
            drop(w);
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Reads statements from stdin; a line ending in `;` runs what has been typed.
async fn interactive(db: &Database, format: Format) -> ExitCode {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut buffer = String::new();
    let mut ok = true;
    let prompt = |continuation: bool| {
        if tty {
            print!("{}", if continuation { "...> " } else { "topicfusion> " });
            let _ = std::io::stdout().flush();
        }
    };
    prompt(false);
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        buffer.push_str(&line);
        buffer.push('\n');
        if line.trim_end().ends_with(';') {
            ok &= run(db, &buffer, format).await;
            buffer.clear();
        }
        prompt(!buffer.trim().is_empty());
    }
    if !buffer.trim().is_empty() {
        ok &= run(db, &buffer, format).await;
    }
    if ok || tty { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
