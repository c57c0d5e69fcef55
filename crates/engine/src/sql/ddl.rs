//! Schema and table DDL, intercepted from DataFusion's plans (DataFusion would create in-memory
//! tables): CREATE/DROP SCHEMA and CREATE/DROP TABLE, each one durable commit.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, Constraint, DFSchemaRef, Result, not_impl_err, plan_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{
    CreateCatalogSchema, CreateMemoryTable, DropCatalogSchema, DropTable, Expr, ExprSchemable, LogicalPlan,
    LogicalPlanBuilder, cast,
};
use topicfusion_storage::{ChangeOp, Commit};

use crate::catalog::types::{ColumnMeta, ColumnType};
use crate::catalog::{
    CatalogState, DEFAULT_SCHEMA, SYSTEM_SCHEMA, TableMeta, check_new_name, delete_schema, delete_table, now_ms,
    put_new_table, put_schema, require_schema, storage_err,
};
use crate::core::{Core, reference_parts};

pub async fn create_schema(core: &Core, c: &CreateCatalogSchema) -> Result<String> {
    let name = match c.schema_name.split_once('.') {
        None => c.schema_name.clone(),
        Some(("datafusion", s)) => s.to_owned(),
        Some((catalog, _)) => return plan_err!("catalog {catalog} does not exist"),
    };
    if name == SYSTEM_SCHEMA || name == crate::catalog::PG_CATALOG_SCHEMA {
        return plan_err!("schema {name} is reserved");
    }
    check_new_name("schema", None, &name)?;
    // Touches no route: DML goes on (DDL statements serialize on the catalog's write lock).
    let mut st = core.catalog.write();
    if st.schemas.contains_key(&name) {
        if c.if_not_exists {
            return Ok(format!("schema {name} already exists, skipping"));
        }
        return plan_err!("schema {name} already exists");
    }
    let mut next = st.clone();
    let mut commit = Commit::default();
    put_schema(&mut commit, &mut next, &name);
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    *st = next;
    Ok(format!("created schema {name}"))
}

pub async fn drop_schema(core: &Core, d: &DropCatalogSchema) -> Result<String> {
    let name = d.name.schema_name().to_owned();
    let _ddl = core.ddl_lock.write().await;
    let mut st = core.catalog.write();
    if !st.schemas.contains_key(&name) {
        if d.if_exists {
            return Ok(format!("schema {name} does not exist, skipping"));
        }
        return plan_err!("schema {name} does not exist");
    }
    if name == DEFAULT_SCHEMA {
        return plan_err!("the default schema {name} cannot be dropped");
    }
    let tables: Vec<_> = st.tables.values().filter(|t| t.meta.schema == name).cloned().collect();
    let topics: Vec<_> = st.topics.values().filter(|t| t.meta.schema == name).cloned().collect();
    if !d.cascade && (!tables.is_empty() || !topics.is_empty()) {
        return plan_err!(
            "schema {name} is not empty: drop its tables and topics first, or use DROP SCHEMA {name} CASCADE"
        );
    }
    let mut next = st.clone();
    let mut commit = Commit::default();
    for topic in &topics {
        crate::catalog::delete_topic(&mut commit, &mut next, &topic.meta);
        commit.partition_ops.extend(
            (0..topic.meta.partitions)
                .map(|p| topicfusion_storage::PartitionOp::Drop { topic_id: topic.meta.id, partition: p }),
        );
    }
    for table in &tables {
        check_not_a_source(&next, &table.meta)?;
        delete_table(&mut commit, &mut next, table);
    }
    delete_schema(&mut commit, &mut next, &name);
    let topic_ids: Vec<u64> = topics.iter().map(|t| t.meta.id).collect();
    let forgotten = core.groups.forget_topics(&mut commit, &topic_ids);
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    forgotten.committed();
    *st = next;
    for topic in &topics {
        core.jobs.request_compaction(topic.meta.id, 0..topic.meta.partitions);
    }
    Ok(format!("dropped schema {name}"))
}

fn check_not_a_source(st: &CatalogState, table: &TableMeta) -> Result<()> {
    if let Some(topic) = st.topics_fed_by(table.id).first() {
        let route = topic.meta.routes.iter().find(|r| r.table_id == table.id).expect("fed by");
        return plan_err!(
            "table {} is a source of topic {}: drop the route first (ALTER TOPIC {} DROP SOURCE {} ON {})",
            table.qualified_name(),
            topic.meta.qualified_name(),
            topic.meta.qualified_name(),
            table.qualified_name(),
            route.op.to_uppercase()
        );
    }
    Ok(())
}

/// The rows of a `CREATE TABLE ... AS` query, already cast to storable types (see [`ctas_input`]).
pub struct InitialRows {
    pub schema: DFSchemaRef,
    pub stream: SendableRecordBatchStream,
}

/// The query of a `CREATE TABLE ... AS` with every column cast to the type the table will store
/// (unsigned integers to the next signed type, string and binary variants to TEXT and BYTEA,
/// time-zoned timestamps to UTC TIMESTAMP); unsupported types fail naming the column.
pub fn ctas_input(input: LogicalPlan) -> Result<LogicalPlan> {
    let mut exprs = Vec::new();
    for (q, f) in input.schema().iter() {
        let to = match f.data_type() {
            DataType::Int8 | DataType::UInt8 => DataType::Int16,
            DataType::UInt16 => DataType::Int32,
            DataType::UInt32 | DataType::UInt64 => DataType::Int64,
            DataType::Float16 => DataType::Float32,
            DataType::Null => DataType::Utf8,
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
            DataType::Timestamp(_, _) => ColumnType::Timestamp.arrow(),
            other => match ColumnType::from_arrow(other) {
                Ok(t) => t.arrow(),
                Err(_) => return plan_err!("column {} has type {other}, which a table cannot store", f.name()),
            },
        };
        let col = Expr::Column(Column::from((q, f)));
        exprs.push(if &to == f.data_type() { col } else { cast(col, to).alias(f.name()) });
    }
    LogicalPlanBuilder::from(input).project(exprs)?.build()
}

/// CREATE TABLE, with column DEFAULTs (`(column, SQL text)`, from the statement's AST) and, for
/// `CREATE TABLE ... AS`, its rows: the table entry and all rows are one commit.
pub async fn create_table(
    core: &Core,
    c: &CreateMemoryTable,
    defaults: &[(String, String)],
    rows: Option<InitialRows>,
) -> Result<String> {
    let (schema, name) = reference_parts(c.name.clone())?;
    check_new_name("table", Some(&schema), &name)?;
    if c.or_replace {
        return not_impl_err!("CREATE OR REPLACE TABLE is not supported");
    }
    if c.temporary {
        return not_impl_err!("temporary tables are not supported");
    }
    let mut primary_key = Vec::new();
    for constraint in c.constraints.iter() {
        match constraint {
            Constraint::PrimaryKey(cols) if primary_key.is_empty() => primary_key = cols.clone(),
            Constraint::PrimaryKey(_) => return plan_err!("a table can have only one PRIMARY KEY"),
            Constraint::Unique(_) => return not_impl_err!("UNIQUE constraints are not supported (only PRIMARY KEY)"),
        }
    }
    let ctas = rows.is_some();
    if c.if_not_exists && core.catalog.read().table(&schema, &name).is_some() {
        return Ok(format!("table {schema}.{name} already exists, skipping"));
    }
    let input_schema = rows.as_ref().map_or_else(|| Arc::clone(c.input.schema()), |r| Arc::clone(&r.schema));
    let mut columns = Vec::new();
    for (i, field) in input_schema.fields().iter().enumerate() {
        if field.name() == crate::sql::provider::table::KEY_COLUMN || field.name().starts_with("__old_") {
            return plan_err!("column name {} is reserved", field.name());
        }
        let data_type = match ColumnType::from_arrow(field.data_type()) {
            Ok(t) => t,
            Err(_) => {
                return plan_err!(
                    "column {} has unsupported type {}: use SMALLINT, INT, BIGINT, REAL, DOUBLE, DECIMAL(p,s), BOOLEAN, TEXT, VARCHAR, DATE, TIMESTAMP or BYTEA",
                    field.name(),
                    field.data_type()
                );
            }
        };
        let default = defaults.iter().find(|(n, _)| n == field.name()).map(|(_, sql)| sql.clone());
        if let Some(sql) = &default {
            check_default(field.name(), sql, data_type)?;
        }
        // CREATE TABLE ... AS makes nullable columns (as PostgreSQL does), whatever the query.
        let nullable = (rows.is_some() || field.is_nullable()) && !primary_key.contains(&i);
        columns.push(ColumnMeta { name: field.name().clone(), data_type, nullable, default });
    }
    if columns.is_empty() {
        return plan_err!("a table needs at least one column");
    }
    let meta =
        TableMeta { id: 0, schema: schema.clone(), name: name.clone(), columns, primary_key, created_at_ms: now_ms() };
    // The rows, read before any lock is taken (keys do not depend on the table id).
    let mut changes = match rows {
        Some(rows) => {
            let staging = crate::catalog::new_table(meta.clone(), 0);
            crate::write::writer::read_changes(rows.stream, &staging, ChangeOp::Insert, core.limits.max_statement_bytes)
                .await?
        }
        None => crate::write::writer::Changes::default(),
    };
    let mut st = core.catalog.write();
    require_schema(&st, &schema)?;
    if st.table(&schema, &name).is_some() {
        if c.if_not_exists {
            return Ok(format!("table {schema}.{name} already exists, skipping"));
        }
        return plan_err!("table {schema}.{name} already exists");
    }
    let mut next = st.clone();
    let mut commit = Commit::default();
    let table = put_new_table(&mut commit, &mut next, meta)?;
    let count =
        crate::core::blocking(|| crate::write::writer::stage(&core.store, &table, &[], &mut changes, &mut commit))?;
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    *st = next;
    if ctas {
        Ok(format!("created table {schema}.{name} with {count} rows"))
    } else {
        Ok(format!("created table {schema}.{name}"))
    }
}

/// A DEFAULT must compile, name no column, hold no subquery and cast to the column's type.
fn check_default(column: &str, sql: &str, ty: ColumnType) -> Result<()> {
    let expr = match crate::catalog::compile_default(sql) {
        Ok(e) => e,
        Err(e) => {
            return plan_err!("invalid DEFAULT of column {column}: {}", crate::error::one_line(&e.to_string(), 300));
        }
    };
    let subquery = expr
        .exists(|e| Ok(matches!(e, Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_))))
        .unwrap_or(true);
    if subquery {
        return plan_err!("the DEFAULT of column {column} cannot contain a subquery");
    }
    let from = expr.get_type(&datafusion::common::DFSchema::empty())?;
    if !datafusion::arrow::compute::can_cast_types(&from, &ty.arrow()) {
        return plan_err!("the DEFAULT of column {column} has type {from}, which does not cast to {}", ty.sql_name());
    }
    Ok(())
}

pub async fn drop_table(core: &Core, d: &DropTable) -> Result<String> {
    let (schema, name) = reference_parts(d.name.clone())?;
    // Only this table's writers are waited for; DML on other tables goes on. Whether a route
    // still reads the table is checked under the catalog's write lock, which ALTER TOPIC holds
    // while it adds one.
    let table = core.catalog.read().table(&schema, &name).cloned();
    let Some(table) = table else {
        if d.if_exists {
            return Ok(format!("table {schema}.{name} does not exist, skipping"));
        }
        return plan_err!("table {schema}.{name} does not exist");
    };
    // Wait for statements writing the table to finish.
    let _writes = table.write_lock.write().await;
    let mut st = core.catalog.write();
    if !st.table(&schema, &name).is_some_and(|t| Arc::ptr_eq(t, &table)) {
        return plan_err!("table {schema}.{name} was dropped by a concurrent statement");
    }
    check_not_a_source(&st, &table.meta)?;
    let mut next = st.clone();
    let mut commit = Commit::default();
    delete_table(&mut commit, &mut next, &table);
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    *st = next;
    Ok(format!("dropped table {schema}.{name}"))
}
