//! `pg_catalog` as drivers read it: datafusion-pg-catalog's schema, with three tables patched.
//! - `pg_constraint` and `pg_index` hold the primary keys of the durable tables and their
//!   indexes (SQLAlchemy reflects a table's primary key by joining the two), and their key
//!   columns are arrays (`int2[]`, `oidvector` as `int4[]`: `unnest(conkey)` works) rather than
//!   the text of the bundled system rows.
//! - `pg_class` has the `reloptions` column (always NULL: no table has storage options).
//! - `pg_attribute` gives DECIMAL columns their `atttypmod` (precision and scale), so
//!   `format_type` says `numeric(10,2)` as PostgreSQL does.
//!
//! The durable tables' oids are the ones `pg_class` shows (datafusion-pg-catalog allocates them
//! when `pg_class` is read), so the rows are built at scan time from `pg_class` and
//! `pg_namespace`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, AsArray, Int64Builder, ListBuilder, RecordBatch, StringArray, new_null_array,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, collect};

use crate::core::Core;

/// The key-column lists that become `int2[]`.
const INT2_LISTS: [&str; 4] = ["conkey", "confkey", "indkey", "indoption"];
/// The oid lists (`oidvector`) that become `int4[]`.
const OID_LISTS: [&str; 2] = ["indclass", "indcollation"];

/// The tables patched here.
const PATCHED: [&str; 4] = ["pg_constraint", "pg_index", "pg_class", "pg_attribute"];

/// The `pg_catalog` schema with our `pg_constraint` and `pg_index`.
#[derive(Debug)]
pub struct PgCatalogSchema {
    inner: Arc<dyn SchemaProvider>,
    core: Arc<Core>,
}

impl PgCatalogSchema {
    pub fn new(inner: Arc<dyn SchemaProvider>, core: Arc<Core>) -> Self {
        Self { inner, core }
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.inner.table(name).await? else { return Ok(None) };
        if !PATCHED.contains(&name) {
            return Ok(Some(table));
        }
        let mut fields: Vec<_> = table
            .schema()
            .fields()
            .iter()
            .map(|f| match list_type(f.name()) {
                Some(t) => Arc::new(Field::new(f.name(), t, true)),
                None => Arc::clone(f),
            })
            .collect();
        if name == "pg_class" && !fields.iter().any(|f| f.name() == "reloptions") {
            fields.push(Arc::new(Field::new(
                "reloptions",
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            )));
        }
        let schema = Arc::new(Schema::new(fields));
        Ok(Some(Arc::new(KeyedTable {
            name: name.to_owned(),
            inner: table,
            schema,
            catalog: Arc::clone(&self.inner),
            core: Arc::clone(&self.core),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }
}

/// The array type a list column becomes, if it is one.
fn list_type(column: &str) -> Option<DataType> {
    let item = if INT2_LISTS.contains(&column) {
        DataType::Int16
    } else if OID_LISTS.contains(&column) {
        DataType::Int32
    } else {
        return None;
    };
    Some(DataType::List(Arc::new(Field::new_list_field(item, true))))
}

/// `pg_constraint` or `pg_index` with key columns as arrays (and, for `pg_constraint`, the
/// primary keys of the durable tables).
#[derive(Debug)]
struct KeyedTable {
    name: String,
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    catalog: Arc<dyn SchemaProvider>,
    core: Arc<Core>,
}

/// All rows of a table of the inner catalog, as one batch.
async fn read_all(state: &dyn Session, table: &Arc<dyn TableProvider>) -> Result<RecordBatch> {
    let plan: Arc<dyn ExecutionPlan> = table.scan(state, None, &[], None).await?;
    let batches = collect(plan, state.task_ctx()).await?;
    Ok(concat_batches(&table.schema(), &batches)?)
}

/// A text list of numbers (`[1, 2]`, `{1,2}`, `1 2`) as a list of `item`s.
fn number_lists(column: &ArrayRef, list: &DataType) -> Result<ArrayRef> {
    if column.data_type() == list {
        return Ok(Arc::clone(column));
    }
    let text = cast(column, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    let mut out = ListBuilder::new(Int64Builder::new());
    for v in text.iter() {
        match v {
            None => out.append_null(),
            Some(v) => {
                for n in v.split(|c: char| !c.is_ascii_digit() && c != '-').filter(|s| !s.is_empty()) {
                    out.values().append_option(n.parse::<i64>().ok());
                }
                out.append(true);
            }
        }
    }
    Ok(cast(&(Arc::new(out.finish()) as ArrayRef), list)?)
}

/// A list column from a list of values per row.
fn lists(rows: &[Vec<i64>], list: &DataType) -> Result<ArrayRef> {
    let mut out = ListBuilder::new(Int64Builder::new());
    for r in rows {
        r.iter().for_each(|v| out.values().append_value(*v));
        out.append(true);
    }
    Ok(cast(&(Arc::new(out.finish()) as ArrayRef), list)?)
}

/// A durable table with a primary key, as the patched tables show it.
struct PrimaryKey {
    namespace: i32,
    table: i32,
    name: String,
    /// Key columns' attnums (1-based).
    keys: Vec<i64>,
}

impl PrimaryKey {
    /// Oids of their own, away from the relations' (allocated upwards from 16384).
    fn constraint_oid(&self) -> i32 {
        self.table.saturating_add(1 << 28)
    }

    fn index_oid(&self) -> i32 {
        self.table.saturating_add(3 << 27)
    }
}

#[async_trait]
impl TableProvider for KeyedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let inner = read_all(state, &self.inner).await?;
        let rows = inner.num_rows();
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| match (inner.column_by_name(f.name()), list_type(f.name())) {
                (Some(c), Some(list)) => number_lists(c, &list),
                (Some(c), None) => Ok(Arc::clone(c)),
                (None, _) => Ok(new_null_array(f.data_type(), rows)),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut columns = columns;
        if self.name == "pg_attribute" {
            self.decimal_typmods(state, &mut columns).await?;
        }
        let mut batches = vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?];
        if self.name == "pg_constraint" || self.name == "pg_index" {
            let keys = self.primary_keys(state).await?;
            batches.push(self.key_rows(&keys)?);
        }
        Ok(MemorySourceConfig::try_new_exec(&[batches], Arc::clone(&self.schema), projection.cloned())?)
    }
}

impl KeyedTable {
    /// `atttypmod` of the durable tables' DECIMAL columns: `((precision << 16) | scale) + 4`.
    async fn decimal_typmods(&self, state: &dyn Session, columns: &mut [ArrayRef]) -> Result<()> {
        let index = |name: &str| self.schema.fields().iter().position(|f| f.name() == name);
        let (Some(rel), Some(num), Some(typmod)) = (index("attrelid"), index("attnum"), index("atttypmod")) else {
            return Ok(());
        };
        let oids = self.table_oids(state).await?;
        let mut decimals: HashMap<(i64, i64), i64> = HashMap::new();
        for table in self.core.catalog.read().tables.values() {
            let Some(&oid) = oids.get(&(table.meta.schema.clone(), table.meta.name.clone())) else { continue };
            for (i, c) in table.meta.columns.iter().enumerate() {
                if let crate::catalog::types::ColumnType::Decimal { precision, scale } = c.data_type {
                    decimals.insert((oid as i64, i as i64 + 1), (((precision as i64) << 16) | scale.max(0) as i64) + 4);
                }
            }
        }
        if decimals.is_empty() {
            return Ok(());
        }
        let as_i64 = |a: &ArrayRef| -> Result<Vec<Option<i64>>> {
            Ok(cast(a, &DataType::Int64)?.as_primitive::<datafusion::arrow::datatypes::Int64Type>().iter().collect())
        };
        let (rels, nums, mods) = (as_i64(&columns[rel])?, as_i64(&columns[num])?, as_i64(&columns[typmod])?);
        let patched: Vec<Option<i64>> = rels
            .iter()
            .zip(&nums)
            .zip(mods)
            .map(|((r, n), m)| match (r, n) {
                (Some(r), Some(n)) => decimals.get(&(*r, *n)).copied().or(m),
                _ => m,
            })
            .collect();
        let typmods: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(patched));
        columns[typmod] = cast(&typmods, self.schema.field(typmod).data_type())?;
        Ok(())
    }

    /// The oids `pg_class` gives the durable tables, by `(schema, name)`.
    async fn table_oids(&self, state: &dyn Session) -> Result<HashMap<(String, String), i32>> {
        let read = async |table: &str| -> Result<RecordBatch> {
            match self.catalog.table(table).await? {
                Some(t) => read_all(state, &t).await,
                None => Ok(RecordBatch::new_empty(Arc::new(Schema::empty()))),
            }
        };
        let (classes, namespaces) = (read("pg_class").await?, read("pg_namespace").await?);
        let text = |b: &RecordBatch, name: &str| -> Result<Vec<Option<String>>> {
            let Some(c) = b.column_by_name(name) else { return Ok(Vec::new()) };
            Ok(cast(c, &DataType::Utf8)?.as_string::<i32>().iter().map(|v| v.map(str::to_owned)).collect())
        };
        let int = |b: &RecordBatch, name: &str| -> Result<Vec<Option<i32>>> {
            let Some(c) = b.column_by_name(name) else { return Ok(Vec::new()) };
            Ok(cast(c, &DataType::Int32)?.as_primitive::<datafusion::arrow::datatypes::Int32Type>().iter().collect())
        };
        let schema_name: HashMap<i32, String> = int(&namespaces, "oid")?
            .into_iter()
            .zip(text(&namespaces, "nspname")?)
            .filter_map(|(o, n)| Some((o?, n?)))
            .collect();
        Ok(int(&classes, "relnamespace")?
            .into_iter()
            .zip(text(&classes, "relname")?)
            .zip(int(&classes, "oid")?)
            .filter_map(|((ns, name), oid)| Some(((schema_name.get(&ns?)?.clone(), name?), oid?)))
            .collect())
    }

    /// The durable tables with a primary key.
    async fn primary_keys(&self, state: &dyn Session) -> Result<Vec<PrimaryKey>> {
        let oids = self.table_oids(state).await?;
        let namespaces = self.namespace_oids(state).await?;
        let mut keys = Vec::new();
        let tables: Vec<_> = self.core.catalog.read().tables.values().cloned().collect();
        for table in tables {
            let meta = &table.meta;
            if meta.primary_key.is_empty() {
                continue;
            }
            let (Some(&rel), Some(&namespace)) =
                (oids.get(&(meta.schema.clone(), meta.name.clone())), namespaces.get(&meta.schema))
            else {
                continue;
            };
            keys.push(PrimaryKey {
                namespace,
                table: rel,
                name: format!("{}_pkey", meta.name),
                keys: meta.primary_key.iter().map(|&i| i as i64 + 1).collect(),
            });
        }
        Ok(keys)
    }

    /// The oids of the schemas, by name.
    async fn namespace_oids(&self, state: &dyn Session) -> Result<HashMap<String, i32>> {
        let Some(t) = self.catalog.table("pg_namespace").await? else { return Ok(HashMap::new()) };
        let namespaces = read_all(state, &t).await?;
        let (Some(names), Some(oids)) = (namespaces.column_by_name("nspname"), namespaces.column_by_name("oid")) else {
            return Ok(HashMap::new());
        };
        let names = cast(names, &DataType::Utf8)?;
        let oids = cast(oids, &DataType::Int32)?;
        Ok(names
            .as_string::<i32>()
            .iter()
            .zip(oids.as_primitive::<datafusion::arrow::datatypes::Int32Type>().iter())
            .filter_map(|(n, o)| Some((n?.to_owned(), o?)))
            .collect())
    }

    /// The rows of the primary keys in this table (`pg_constraint` or `pg_index`).
    fn key_rows(&self, keys: &[PrimaryKey]) -> Result<RecordBatch> {
        let n = keys.len();
        let constraint = self.name == "pg_constraint";
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                let ty = f.data_type();
                let ints = |v: Vec<i64>| -> Result<ArrayRef> {
                    Ok(cast(&(Arc::new(datafusion::arrow::array::Int64Array::from(v)) as ArrayRef), ty)?)
                };
                let each = |f: &dyn Fn(&PrimaryKey) -> i64| ints(keys.iter().map(f).collect());
                let same = |s: ScalarValue| -> Result<ArrayRef> { Ok(cast(&s.to_array_of_size(n)?, ty)?) };
                let flag = |b: bool| same(ScalarValue::Boolean(Some(b)));
                let list = |f: &dyn Fn(&PrimaryKey) -> Vec<i64>| lists(&keys.iter().map(f).collect::<Vec<_>>(), ty);
                match (constraint, f.name().as_str()) {
                    (true, "oid") => each(&|k| k.constraint_oid() as i64),
                    (true, "conname") => Ok(cast(
                        &(Arc::new(keys.iter().map(|k| Some(k.name.clone())).collect::<StringArray>()) as ArrayRef),
                        ty,
                    )?),
                    (true, "connamespace") => each(&|k| k.namespace as i64),
                    (true, "conrelid") => each(&|k| k.table as i64),
                    (true, "conindid") => each(&|k| k.index_oid() as i64),
                    (true, "conkey") => list(&|k| k.keys.clone()),
                    (true, "contype") => same(ScalarValue::Utf8(Some("p".into()))),
                    (true, "condeferrable" | "condeferred") => flag(false),
                    (true, "convalidated" | "conislocal" | "connoinherit") => flag(true),
                    (true, "contypid" | "conparentid" | "confrelid" | "coninhcount") => ints(vec![0; n]),
                    (true, "confupdtype" | "confdeltype" | "confmatchtype") => {
                        same(ScalarValue::Utf8(Some(" ".into())))
                    }
                    (false, "indexrelid") => each(&|k| k.index_oid() as i64),
                    (false, "indrelid") => each(&|k| k.table as i64),
                    (false, "indnatts" | "indnkeyatts") => each(&|k| k.keys.len() as i64),
                    (
                        false,
                        "indisunique" | "indisprimary" | "indimmediate" | "indisvalid" | "indisready" | "indislive",
                    ) => flag(true),
                    (
                        false,
                        "indnullsnotdistinct" | "indisexclusion" | "indisclustered" | "indcheckxmin" | "indisreplident",
                    ) => flag(false),
                    (false, "indkey") => list(&|k| k.keys.clone()),
                    (false, "indclass" | "indcollation" | "indoption") => list(&|k| vec![0; k.keys.len()]),
                    _ => Ok(new_null_array(ty, n)),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}
