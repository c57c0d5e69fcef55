//! `COPY <table> FROM '<file>'`: streams a CSV or newline-delimited JSON file into a durable
//! table through DataFusion's readers (typed by the table's columns) and the table write path.
//!
//! A COPY commits in chunks of [`COPY_CHUNK_ROWS`] rows, so its memory is bounded whatever the
//! file's size: each chunk is atomic (rows and their topic messages together), and a failure
//! (a bad value, a duplicate key) leaves the chunks before it committed and says how many rows
//! those hold.

use std::path::Path;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::datasource::file_format::options::{CsvReadOptions, JsonReadOptions};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{Expr, cast, col, lit};
use futures::StreamExt;
use topicfusion_dialect::{CopyFormat, CopyFrom};
use topicfusion_storage::ChangeOp;

use crate::core::{Core, resolve_name};
use crate::writer::{self, Changes};

/// Rows per commit of a COPY.
pub const COPY_CHUNK_ROWS: usize = 65_536;

pub async fn copy_from(ctx: &SessionContext, core: &Core, c: &CopyFrom) -> Result<String> {
    let (schema, name) = resolve_name(&c.table)?;
    let Some(table) = core.catalog.read().table(&schema, &name).cloned() else {
        return plan_err!("table {schema}.{name} does not exist");
    };
    let columns = &table.meta.columns;
    let mut file_columns = Vec::new();
    for ident in &c.columns {
        let name = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
        match columns.iter().position(|m| m.name == name) {
            Some(i) if file_columns.contains(&i) => return plan_err!("column {name} is listed twice"),
            Some(i) => file_columns.push(i),
            None => return plan_err!("table {} has no column {name}", table.meta.qualified_name()),
        }
    }
    if file_columns.is_empty() {
        file_columns = (0..columns.len()).collect();
    }
    let path = Path::new(&c.path);
    if !path.is_file() {
        return plan_err!("COPY cannot read {}: no such file on the server", c.path);
    }
    let extension = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let file_schema = Schema::new(
        file_columns
            .iter()
            .map(|&i| Field::new(&columns[i].name, columns[i].data_type.arrow(), true))
            .collect::<Vec<_>>(),
    );
    let df = match c.format {
        CopyFormat::Csv => {
            let options = CsvReadOptions::new()
                .schema(&file_schema)
                .has_header(c.header)
                .delimiter(c.delimiter)
                .file_extension(&extension);
            ctx.read_csv(c.path.as_str(), options).await?
        }
        CopyFormat::Json => {
            let options = JsonReadOptions::default().schema(&file_schema).file_extension(&extension);
            ctx.read_json(c.path.as_str(), options).await?
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

    let mut committed = 0u64;
    let mut chunk = Changes::default();
    let mut chunk_rows = 0usize;
    let stopped = |committed: u64, e: datafusion::error::DataFusionError| {
        let what = crate::database::one_line(&e.to_string(), 1000);
        exec_err!("COPY stopped after committing {committed} rows to {}: {what}", table.meta.qualified_name())
    };
    loop {
        let next = stream.next().await;
        let done = next.is_none();
        if let Some(batch) = next {
            let added = batch.and_then(|b| {
                chunk_rows += b.num_rows();
                writer::add_batch(&mut chunk, &table, ChangeOp::Insert, &b)
            });
            if let Err(e) = added {
                return stopped(committed, e);
            }
        }
        if chunk_rows >= COPY_CHUNK_ROWS || (done && chunk_rows > 0) {
            let changes = std::mem::take(&mut chunk);
            chunk_rows = 0;
            match writer::write_statement(core, &table, false, async { Ok(changes) }).await {
                Ok(n) => committed += n,
                Err(e) => return stopped(committed, e),
            }
        }
        if done {
            return Ok(format!("copied {committed} rows into {}", table.meta.qualified_name()));
        }
    }
}
