//! The `topicfusion` command line: `serve` runs the server; `sql` runs SQL against a data dir
//! (embedded, as root) or a server (`--url`), from `-c`, `-f` or an interactive prompt, and
//! prints each statement's result as soon as it completes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of the system allocator: the write path allocates many small strings and
/// vectors per row, and glibc's malloc/free took about a sixth of a bulk INSERT's time. Built
/// with `no_thp` (Cargo.toml): mimalloc would otherwise mark its memory for transparent huge
/// pages, and the kernel's khugepaged then collapsed it under the running server, stalling
/// statements for 5-7 ms every 10 s after a burst of clients (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use topicfusion::client::{Client, RemoteResult};
use topicfusion::config::Config;
use topicfusion_engine::{Database, DatabaseOptions, Durability, one_line};

#[derive(Parser)]
#[command(name = "topicfusion", version, about = "Durable topics and change-data capture for Apache DataFusion")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP API and PostgreSQL protocol) on a data dir.
    Serve {
        /// A TOML configuration file (see docs/configuration.md).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory (overrides `[storage] data_dir`; default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HOST:PORT to listen on (overrides `[server] listen`; default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// HOST:PORT of the PostgreSQL protocol (overrides `[server] pg_listen`; default
        /// 127.0.0.1:5433; empty: off).
        #[arg(long)]
        pg_listen: Option<String>,
    },
    /// Run SQL statements against a data dir (embedded, as root) or a server (--url).
    Sql {
        /// The data directory (created if missing).
        #[arg(long, default_value = "./data", conflicts_with = "url")]
        data_dir: PathBuf,
        /// A server to connect to, e.g. http://127.0.0.1:8080 (password from
        /// TOPICFUSION_PASSWORD or a prompt).
        #[arg(long)]
        url: Option<String>,
        /// The user to connect as (with --url).
        #[arg(short = 'u', long, default_value = "root", requires = "url")]
        user: String,
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
        #[arg(long, conflicts_with = "url")]
        sync: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

/// Where statements run.
enum Backend {
    Embedded(Database),
    Remote(Client),
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, data_dir, listen, pg_listen } => {
            // openraft logs every vote change and whole Raft states at info: warnings only.
            init_logging("info,openraft=warn");
            let mut cfg = match config {
                Some(path) => match Config::from_file(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::default(),
            };
            cfg.apply_env();
            if let Some(d) = data_dir {
                cfg.storage.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(l) = pg_listen {
                cfg.server.pg_listen = l;
            }
            if let Err(e) = cfg.validate() {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            match topicfusion::serve::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Sql { data_dir, url, user, format, command, file, sync } => {
            init_logging("warn");
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start a runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(sql_command(data_dir, url, user, format, command, file, sync))
        }
    }
}

async fn sql_command(
    data_dir: PathBuf,
    url: Option<String>,
    user: String,
    format: Format,
    command: Option<String>,
    file: Option<PathBuf>,
    sync: bool,
) -> ExitCode {
    let backend = match url {
        Some(url) => {
            let password = match std::env::var("TOPICFUSION_PASSWORD") {
                Ok(p) => p,
                Err(_) if std::io::stdin().is_terminal() => {
                    rpassword::prompt_password(format!("Password for {user}: ")).unwrap_or_default()
                }
                Err(_) => String::new(),
            };
            match Client::connect(&url, &user, &password).await {
                Ok(c) => Backend::Remote(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => {
            let options = DatabaseOptions {
                durability: if sync { Durability::Sync } else { Durability::Process },
                ..DatabaseOptions::default()
            };
            match Database::open(&data_dir, options) {
                Ok(db) => Backend::Embedded(db),
                Err(e) => {
                    eprintln!("error: {}", topicfusion::open_error(&data_dir, &e));
                    return ExitCode::FAILURE;
                }
            }
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
        (None, None) => return interactive(&backend, format).await,
    };
    let mut counter = 0;
    if run(&backend, &sql, format, &mut counter).await { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The longest statement text an error line echoes.
const MAX_ECHO_CHARS: usize = 200;

/// The longest error message printed (inputs can be megabytes, and errors quote them).
const MAX_MESSAGE_CHARS: usize = 1000;

/// One line of statement text for an error message.
fn echo(sql: &str) -> String {
    one_line(sql, MAX_ECHO_CHARS)
}

/// An error message on one line, bounded.
fn message(text: &str) -> String {
    one_line(text, MAX_MESSAGE_CHARS)
}

/// Runs SQL text statement by statement, printing each result as soon as it completes; returns
/// false (after printing the error) at the first failure. `counter` numbers statements across
/// calls (the interactive prompt).
async fn run(backend: &Backend, sql: &str, format: Format, counter: &mut usize) -> bool {
    let statements = match topicfusion_engine::Statements::new(sql) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", message(&e.to_string()));
            return false;
        }
    };
    // One statement at a time: parsed, run, printed, before the next is parsed.
    for statement in statements {
        *counter += 1;
        let statement = match statement {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error in statement {counter}: {}", message(&e.to_string()));
                return false;
            }
        };
        let outcome = match backend {
            Backend::Embedded(db) => match db.execute(&statement.sql).await {
                Ok(results) => results.iter().try_for_each(|r| print_batches(&r.schema, &r.batches, format)),
                Err(e) => Err(message(&e.message())),
            },
            Backend::Remote(client) => match client.sql(&statement.sql).await {
                Ok(results) => results.iter().try_for_each(|r| print_remote(r, format)),
                Err(e) => Err(message(&e)),
            },
        };
        if let Err(message) = outcome {
            eprintln!("error in statement {} (`{}`): {message}", counter, echo(&statement.sql));
            return false;
        }
    }
    true
}

fn print_batches(schema: &SchemaRef, batches: &[RecordBatch], format: Format) -> Result<(), String> {
    write_batches(schema, batches, format).map_err(|e| format!("cannot print the result: {e}"))
}

fn write_batches(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => writeln!(out, "{}", pretty_format_batches_with_schema(schema.clone(), batches)?)?,
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
            let batches: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&batches)?;
            w.finish()?;
            drop(w);
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Prints a server's result: JSON rows as objects for `--format json`; text cells otherwise.
fn print_remote(r: &RemoteResult, format: Format) -> Result<(), String> {
    if let Format::Json = format {
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = r
            .rows
            .iter()
            .map(|row| {
                r.columns
                    .iter()
                    .zip(row)
                    .filter(|(_, v)| !v.is_null())
                    .map(|(c, v)| (c.name.clone(), v.clone()))
                    .collect()
            })
            .collect();
        let mut out = std::io::stdout().lock();
        let text = serde_json::to_string(&rows).map_err(|e| e.to_string())?;
        return writeln!(out, "{text}").and_then(|_| out.flush()).map_err(|e| e.to_string());
    }
    let schema: SchemaRef =
        Arc::new(Schema::new(r.columns.iter().map(|c| Field::new(&c.name, DataType::Utf8, true)).collect::<Vec<_>>()));
    let columns: Vec<ArrayRef> = (0..r.columns.len())
        .map(|i| {
            Arc::new(StringArray::from_iter(r.rows.iter().map(|row| match row.get(i) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v) => Some(v.to_string()),
            }))) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| e.to_string())?;
    print_batches(&schema, &[batch], format)
}

/// Reads statements from stdin; a line ending in `;` runs what has been typed.
async fn interactive(backend: &Backend, format: Format) -> ExitCode {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut buffer = String::new();
    let mut ok = true;
    let mut counter = 0;
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
            ok &= run(backend, &buffer, format, &mut counter).await;
            buffer.clear();
        }
        prompt(!buffer.trim().is_empty());
    }
    if !buffer.trim().is_empty() {
        ok &= run(backend, &buffer, format, &mut counter).await;
    }
    if ok || tty { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
