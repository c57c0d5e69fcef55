//! Schema and table DDL, intercepted from DataFusion's plans (DataFusion would create in-memory
//! tables): CREATE/DROP SCHEMA and CREATE/DROP TABLE, each one durable commit.

use datafusion::common::{Constraint, Result, not_impl_err, plan_err};
use datafusion::logical_expr::{CreateCatalogSchema, CreateMemoryTable, DropCatalogSchema, DropTable, LogicalPlan};
use topicfusion_storage::Commit;

use crate::catalog::{
    CatalogState, DEFAULT_SCHEMA, SYSTEM_SCHEMA, TableMeta, check_new_name, delete_schema, delete_table, now_ms,
    put_new_table, put_schema, require_schema, storage_err,
};
use crate::core::{Core, reference_parts};
use crate::types::{ColumnMeta, ColumnType};

pub async fn create_schema(core: &Core, c: &CreateCatalogSchema) -> Result<String> {
    let name = match c.schema_name.split_once('.') {
        None => c.schema_name.clone(),
        Some(("datafusion", s)) => s.to_owned(),
        Some((catalog, _)) => return plan_err!("catalog {catalog} does not exist"),
    };
    if name == SYSTEM_SCHEMA {
        return plan_err!("schema {name} is reserved");
    }
    check_new_name("schema", None, &name)?;
    let _ddl = core.ddl_lock.write().await;
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
    core.store.commit(commit).map_err(storage_err)?;
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
    let _claims = core.groups.forget_topics(&mut commit, &topic_ids);
    core.store.commit(commit).map_err(storage_err)?;
    *st = next;
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

pub async fn create_table(core: &Core, c: &CreateMemoryTable) -> Result<String> {
    let (schema, name) = reference_parts(c.name.clone())?;
    check_new_name("table", Some(&schema), &name)?;
    if !matches!(c.input.as_ref(), LogicalPlan::EmptyRelation(_)) {
        return not_impl_err!("CREATE TABLE ... AS SELECT is not supported: create the table, then INSERT ... SELECT");
    }
    if c.or_replace {
        return not_impl_err!("CREATE OR REPLACE TABLE is not supported");
    }
    if c.temporary {
        return not_impl_err!("temporary tables are not supported");
    }
    if !c.column_defaults.is_empty() {
        return not_impl_err!("column DEFAULT values are not supported");
    }
    let mut primary_key = Vec::new();
    for constraint in c.constraints.iter() {
        match constraint {
            Constraint::PrimaryKey(cols) if primary_key.is_empty() => primary_key = cols.clone(),
            Constraint::PrimaryKey(_) => return plan_err!("a table can have only one PRIMARY KEY"),
            Constraint::Unique(_) => return not_impl_err!("UNIQUE constraints are not supported (only PRIMARY KEY)"),
        }
    }
    let input_schema = c.input.schema();
    let mut columns = Vec::new();
    for (i, field) in input_schema.fields().iter().enumerate() {
        if field.name() == crate::provider::table::KEY_COLUMN || field.name().starts_with("__old_") {
            return plan_err!("column name {} is reserved", field.name());
        }
        columns.push(ColumnMeta {
            name: field.name().clone(),
            data_type: match ColumnType::from_arrow(field.data_type()) {
                Ok(t) => t,
                Err(_) => return plan_err!(
                    "column {} has unsupported type {}: use SMALLINT, INT, BIGINT, REAL, DOUBLE, DECIMAL(p,s), BOOLEAN, TEXT, VARCHAR, DATE, TIMESTAMP or BYTEA",
                    field.name(),
                    field.data_type()
                ),
            },
            nullable: field.is_nullable() && !primary_key.contains(&i),
        });
    }
    if columns.is_empty() {
        return plan_err!("a table needs at least one column");
    }
    let _ddl = core.ddl_lock.write().await;
    let mut st = core.catalog.write();
    require_schema(&st, &schema)?;
    if st.table(&schema, &name).is_some() {
        if c.if_not_exists {
            return Ok(format!("table {schema}.{name} already exists, skipping"));
        }
        return plan_err!("table {schema}.{name} already exists");
    }
    let meta =
        TableMeta { id: 0, schema: schema.clone(), name: name.clone(), columns, primary_key, created_at_ms: now_ms() };
    let mut next = st.clone();
    let mut commit = Commit::default();
    put_new_table(&mut commit, &mut next, meta)?;
    core.store.commit(commit).map_err(storage_err)?;
    *st = next;
    Ok(format!("created table {schema}.{name}"))
}

pub async fn drop_table(core: &Core, d: &DropTable) -> Result<String> {
    let (schema, name) = reference_parts(d.name.clone())?;
    let _ddl = core.ddl_lock.write().await;
    let table = core.catalog.read().table(&schema, &name).cloned();
    let Some(table) = table else {
        if d.if_exists {
            return Ok(format!("table {schema}.{name} does not exist, skipping"));
        }
        return plan_err!("table {schema}.{name} does not exist");
    };
    // Wait for statements writing the table to finish.
    let _writes = table.write_lock.lock().await;
    let mut st = core.catalog.write();
    check_not_a_source(&st, &table.meta)?;
    let mut next = st.clone();
    let mut commit = Commit::default();
    delete_table(&mut commit, &mut next, &table);
    core.store.commit(commit).map_err(storage_err)?;
    *st = next;
    Ok(format!("dropped table {schema}.{name}"))
}
