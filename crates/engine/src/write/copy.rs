//! `COPY <table> FROM`: loading a durable table from a server file ([`copy_from`]: CSV or
//! newline-delimited JSON through DataFusion's readers) or from the client ([`CopyIn`]: rows the
//! PostgreSQL protocol decoded from the client's text, csv or binary data). Both are typed by the
//! table's columns, fill the columns the COPY does not name with their DEFAULT (or NULL), and go
//! through the table write path, so topic routes see every row as an INSERT.
//!
//! A COPY commits in chunks of [`COPY_CHUNK_ROWS`] rows or [`COPY_CHUNK_BYTES`] of row data,
//! whichever comes first, so its memory is bounded whatever the input's size: each chunk is atomic (rows and their topic messages together), and a failure
//! (a bad value, a duplicate key) leaves the chunks before it committed and says how many rows
//! those hold.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::{DFSchema, Result, ScalarValue, exec_err, plan_err};
use datafusion::datasource::file_format::options::{CsvReadOptions, JsonReadOptions};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{Expr, cast, col, lit};
use futures::StreamExt;
use topicfusion_dialect::{CopyEndpoint, CopyFormat, CopyFrom, CopyOptions};
use topicfusion_storage::{ChangeOp, Value};

use crate::catalog::Table;
use crate::catalog::types::{ColumnType, build_array};
use crate::core::{Core, resolve_name};
use crate::write::writer::{self, Changes};

/// Rows per commit of a COPY, at most.
pub const COPY_CHUNK_ROWS: usize = 65_536;
/// Bytes of row data (Arrow's in-memory size) per commit of a COPY, about at most.
pub const COPY_CHUNK_BYTES: usize = 32 << 20;

/// The table a COPY writes and the positions of the columns its input holds, in input order.
fn target(core: &Core, c: &CopyFrom) -> Result<(Arc<Table>, Vec<usize>)> {
    let (schema, name) = resolve_name(&c.table)?;
    let Some(table) = core.catalog.read().table(&schema, &name).cloned() else {
        return plan_err!("table {schema}.{name} does not exist");
    };
    let columns = &table.meta.columns;
    let mut targets = Vec::new();
    for ident in &c.columns {
        let name = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
        match columns.iter().position(|m| m.name == name) {
            Some(i) if targets.contains(&i) => return plan_err!("column {name} is listed twice"),
            Some(i) => targets.push(i),
            None => return plan_err!("table {} has no column {name}", table.meta.qualified_name()),
        }
    }
    if targets.is_empty() {
        targets = (0..columns.len()).collect();
    }
    Ok((table, targets))
}

/// The rows of a COPY not yet committed, and how many it has committed.
struct Chunks {
    table: Arc<Table>,
    chunk: Changes,
    rows: usize,
    bytes: usize,
    committed: u64,
}

impl Chunks {
    fn new(table: Arc<Table>) -> Self {
        Self { table, chunk: Changes::default(), rows: 0, bytes: 0, committed: 0 }
    }

    /// The error of a COPY that stopped: what committed before it, and why.
    fn stopped(&self, e: datafusion::error::DataFusionError) -> datafusion::error::DataFusionError {
        let what = crate::error::one_line(&e.to_string(), 1000);
        datafusion::error::DataFusionError::Execution(format!(
            "COPY stopped after committing {} rows to {}: {what}",
            self.committed,
            self.table.meta.qualified_name()
        ))
    }

    /// Adds a batch of full table rows; commits when the chunk is full.
    async fn add(&mut self, core: &Arc<Core>, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        if let Err(e) = writer::add_batch(&mut self.chunk, &self.table, ChangeOp::Insert, batch) {
            return Err(self.stopped(e));
        }
        if self.rows >= COPY_CHUNK_ROWS || self.bytes >= COPY_CHUNK_BYTES { self.flush(core).await } else { Ok(()) }
    }

    async fn flush(&mut self, core: &Arc<Core>) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.chunk);
        self.rows = 0;
        self.bytes = 0;
        match writer::write_statement(core, &self.table, false, async { Ok(changes) }).await {
            Ok(n) => {
                self.committed += n;
                Ok(())
            }
            Err(e) => Err(self.stopped(e)),
        }
    }
}

/// `COPY <table> FROM '<file>'`.
pub async fn copy_from(ctx: &SessionContext, core: &Arc<Core>, c: &CopyFrom) -> Result<String> {
    let CopyEndpoint::File(path_text) = &c.source else {
        return plan_err!("COPY FROM STDIN needs a PostgreSQL client (psql's \\copy, a driver's copy API)");
    };
    let (table, file_columns) = target(core, c)?;
    let columns = &table.meta.columns;
    let path = Path::new(path_text);
    if !path.is_file() {
        return plan_err!("COPY cannot read {path_text}: no such file on the server");
    }
    let extension = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let file_schema = Schema::new(
        file_columns
            .iter()
            .map(|&i| Field::new(&columns[i].name, columns[i].data_type.arrow(), true))
            .collect::<Vec<_>>(),
    );
    let format = c.options.format(&c.source);
    let df = match format {
        CopyFormat::Json => {
            let options = JsonReadOptions::default().schema(&file_schema).file_extension(&extension);
            ctx.read_json(path_text.as_str(), options).await?
        }
        _ => {
            let options = CsvReadOptions::new()
                .schema(&file_schema)
                .has_header(c.options.header())
                .delimiter(c.options.delimiter(format) as u8)
                .quote(c.options.quote() as u8)
                .escape(c.options.escape() as u8)
                .file_extension(&extension);
            ctx.read_csv(path_text.as_str(), options).await?
        }
    };
    // Full table rows: the file's columns, the others their DEFAULT or NULL.
    let exprs: Vec<Expr> = columns
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let e = if file_columns.contains(&i) {
                col(format!("\"{}\"", m.name.replace('"', "\"\"")))
            } else {
                table.defaults[i].clone().unwrap_or_else(|| lit(ScalarValue::Null))
            };
            cast(e, m.data_type.arrow()).alias(&m.name)
        })
        .collect();
    let mut stream = df.select(exprs)?.execute_stream().await?;
    let mut chunks = Chunks::new(Arc::clone(&table));
    while let Some(batch) = stream.next().await {
        match batch {
            Ok(b) => chunks.add(core, &b).await?,
            Err(e) => return Err(chunks.stopped(e)),
        }
    }
    chunks.flush(core).await?;
    Ok(format!("copied {} rows into {}", chunks.committed, table.meta.qualified_name()))
}

/// What a `COPY ... FROM STDIN` writes: resolved before the client sends any data.
#[derive(Debug)]
pub struct CopyInTarget {
    table: Arc<Table>,
    /// The positions of the input's columns in the table.
    targets: Vec<usize>,
    pub format: CopyFormat,
    pub options: CopyOptions,
}

impl CopyInTarget {
    /// The types of the input's columns, in input order (to decode binary data).
    pub fn column_types(&self) -> Vec<ColumnType> {
        self.targets.iter().map(|&i| self.table.meta.columns[i].data_type).collect()
    }
}

/// Resolves a `COPY ... FROM STDIN` (the caller has checked it is one).
pub fn copy_in_target(core: &Core, c: &CopyFrom) -> Result<CopyInTarget> {
    // On a cluster node that does not lead: refused before the client sends rows (as any write).
    crate::core::blocking(|| core.store.ensure_writable()).map_err(crate::catalog::storage_err)?;
    let (table, targets) = target(core, c)?;
    Ok(CopyInTarget { table, targets, format: c.options.format(&c.source), options: c.options.clone() })
}

/// Rows of a COPY from the client, one inner `Vec` per row in input column order.
#[derive(Debug)]
pub enum CopyRows {
    /// Text and csv formats: each field as text (`None`: NULL), converted like a string literal
    /// of the column's type.
    Text(Vec<Vec<Option<String>>>),
    /// Binary format: values already of the column's type.
    Values(Vec<Vec<Value>>),
}

/// A `COPY ... FROM STDIN` in progress: the interface feeds it rows as the client's data
/// arrives, then [`CopyIn::finish`]es it.
pub struct CopyIn {
    core: Arc<Core>,
    target: Arc<CopyInTarget>,
    chunks: Chunks,
}

impl CopyIn {
    pub(crate) fn new(core: Arc<Core>, target: Arc<CopyInTarget>) -> Self {
        let chunks = Chunks::new(Arc::clone(&target.table));
        Self { core, target, chunks }
    }

    /// The input's column types.
    pub fn column_types(&self) -> Vec<ColumnType> {
        self.target.column_types()
    }

    /// Adds rows; commits a chunk whenever [`COPY_CHUNK_ROWS`] or [`COPY_CHUNK_BYTES`] are pending.
    pub async fn write(&mut self, rows: CopyRows) -> Result<()> {
        let batch = self.batch(rows).map_err(|e| self.chunks.stopped(e))?;
        self.chunks.add(&self.core, &batch).await
    }

    /// Commits what is pending; returns how many rows the COPY wrote in all.
    pub async fn finish(mut self) -> Result<u64> {
        self.chunks.flush(&self.core).await?;
        Ok(self.chunks.committed)
    }

    /// Full table rows (the columns the COPY does not name get their DEFAULT or NULL).
    fn batch(&self, rows: CopyRows) -> Result<RecordBatch> {
        let table = &self.target.table;
        let columns = &table.meta.columns;
        let width = self.target.targets.len();
        let n = match &rows {
            CopyRows::Text(r) => r.len(),
            CopyRows::Values(r) => r.len(),
        };
        let mut arrays: Vec<Option<ArrayRef>> = vec![None; columns.len()];
        for (j, &i) in self.target.targets.iter().enumerate() {
            let ty = columns[i].data_type;
            let array = match &rows {
                CopyRows::Text(rows) => {
                    if let Some(r) = rows.iter().find(|r| r.len() != width) {
                        return exec_err!("a COPY row has {} fields, the COPY names {width} columns", r.len());
                    }
                    let text: StringArray = rows.iter().map(|r| r[j].as_deref()).collect();
                    let options = CastOptions { safe: false, ..Default::default() };
                    if ty == ColumnType::Bytea {
                        // PostgreSQL's bytea input (`\x00ff`), as for a bytea literal.
                        let bytes = text
                            .iter()
                            .map(|v| v.map(crate::catalog::types::bytea_in).transpose())
                            .collect::<std::result::Result<Vec<_>, _>>();
                        match bytes {
                            Ok(b) => {
                                Arc::new(b.into_iter().collect::<datafusion::arrow::array::BinaryArray>()) as ArrayRef
                            }
                            Err(e) => return exec_err!("column {}: {e}", columns[i].name),
                        }
                    } else {
                        match cast_with_options(&text, &ty.arrow(), &options) {
                            Ok(a) => a,
                            Err(e) => return exec_err!("column {}: {e}", columns[i].name),
                        }
                    }
                }
                CopyRows::Values(rows) => {
                    if let Some(r) = rows.iter().find(|r| r.len() != width) {
                        return exec_err!("a COPY row has {} fields, the COPY names {width} columns", r.len());
                    }
                    build_array(ty, rows.iter().map(|r| &r[j]))?
                }
            };
            arrays[i] = Some(array);
        }
        let schema = crate::catalog::types::arrow_schema(columns);
        let empty = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let mut out = Vec::with_capacity(columns.len());
        for (i, a) in arrays.into_iter().enumerate() {
            let a = match a {
                Some(a) => a,
                None => match &table.defaults[i] {
                    None => datafusion::arrow::array::new_null_array(&columns[i].data_type.arrow(), n),
                    Some(default) => {
                        let e = cast(default.clone(), columns[i].data_type.arrow());
                        let physical = self.core.expr_ctx.create_physical_expr(e, &DFSchema::empty())?;
                        physical.evaluate(&empty)?.into_array(n)?
                    }
                },
            };
            out.push(a);
        }
        Ok(RecordBatch::try_new(schema, out)?)
    }
}
