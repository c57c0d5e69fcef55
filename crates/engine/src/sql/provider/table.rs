//! The `TableProvider` of a durable table, and its scan operator.
//!
//! Filters on the primary key become key lookups or key ranges: `pk = v` and `pk IN (..)` on a
//! whole key read only those keys; `=`/`<`/`<=`/`>`/`>=`/`BETWEEN` on the first key column read
//! only that range. Every filter is still reported `Inexact`, so DataFusion re-checks it.
//! With `with_key`, the scan also yields the storage key as a trailing `__tf_key` column: the
//! DELETE and UPDATE plans use it to know which stored row each result row is.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, ScalarValue, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use topicfusion_storage::codec::{decode_row, encode_key_value};
use topicfusion_storage::{Store, keys};

use crate::catalog::types::{rows_to_batch, scalar_to_value};
use crate::catalog::{Table, storage_err};

/// The name of the storage-key column of a keyed scan.
pub const KEY_COLUMN: &str = "__tf_key";
const CHUNK_ROWS: usize = 8192;

#[derive(Debug)]
pub struct UserTable {
    pub table: Arc<Table>,
    store: Arc<Store>,
    with_key: bool,
    schema: SchemaRef,
}

impl UserTable {
    pub fn new(table: Arc<Table>, store: Arc<Store>, with_key: bool) -> Self {
        let schema = if with_key {
            let mut fields: Vec<Field> = table.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
            Arc::new(Schema::new(fields))
        } else {
            Arc::clone(&table.schema)
        };
        Self { table, store, with_key, schema }
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }
}

#[async_trait]
impl TableProvider for UserTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        let i = self.table.meta.columns.iter().position(|c| c.name == column)?;
        self.table.defaults.get(i)?.as_ref()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let schema = Arc::new(self.schema.project(&projection)?);
        let access = KeyAccess::plan(&self.table, filters);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(TableScanExec {
            table: Arc::clone(&self.table),
            store: Arc::clone(&self.store),
            projection,
            schema,
            access,
            limit,
            with_key: self.with_key,
            properties,
        }))
    }
}

/// Which keys a scan reads (suffixes after the table prefix).
#[derive(Debug, Clone, PartialEq)]
enum KeyAccess {
    /// Exactly these primary keys.
    Points(Vec<Vec<u8>>),
    /// Keys in `[start, end)`; `None` is unbounded.
    Range { start: Option<Vec<u8>>, end: Option<Vec<u8>> },
}

impl KeyAccess {
    fn plan(table: &Table, filters: &[Expr]) -> Self {
        let pk = &table.meta.primary_key;
        let full = KeyAccess::Range { start: None, end: None };
        if pk.is_empty() {
            return full;
        }
        let columns = &table.meta.columns;
        // The key of a literal, only when it converts to the column type without loss.
        let key_of = |col: usize, s: &ScalarValue| -> Option<Vec<u8>> {
            let ty = columns[col].data_type;
            let back = s.cast_to(&ty.arrow()).ok()?.cast_to(&s.data_type()).ok()?;
            if &back != s {
                return None;
            }
            let v = scalar_to_value(s, ty).ok()?;
            let mut out = Vec::new();
            encode_key_value(&v, &mut out).ok()?;
            Some(out)
        };
        let mut conjuncts = Vec::new();
        for f in filters {
            split_and(f, &mut conjuncts);
        }
        // Equalities (and IN lists) per primary-key column.
        let mut eq: Vec<Option<Vec<Vec<u8>>>> = vec![None; pk.len()];
        let (mut lower, mut upper): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
        for c in conjuncts {
            for (slot, &col) in pk.iter().enumerate() {
                let name = &columns[col].name;
                if let Some(values) = equality(c, name) {
                    if let Some(keys) = values.iter().map(|v| key_of(col, v)).collect::<Option<Vec<_>>>() {
                        eq[slot] = Some(keys);
                    }
                } else if slot == 0 {
                    for (op, v) in bounds(c, name) {
                        let Some(k) = key_of(col, &v) else { continue };
                        // Past a key at its type's maximum there is no key: `> MAX` matches
                        // nothing and `<= MAX` everything.
                        match op {
                            Operator::Gt => match keys::try_prefix_end(&k) {
                                Some(end) => lower = Some(end),
                                None => return KeyAccess::Points(Vec::new()),
                            },
                            Operator::GtEq => lower = Some(k),
                            Operator::Lt => upper = Some(k),
                            Operator::LtEq => upper = keys::try_prefix_end(&k).or(upper),
                            _ => {}
                        }
                    }
                }
            }
        }
        if eq.iter().all(Option::is_some) {
            // A whole key: the cross product of the per-column choices (bounded to stay small).
            let mut points: Vec<Vec<u8>> = vec![Vec::new()];
            for choices in eq.iter().flatten() {
                if points.len() * choices.len() > 10_000 {
                    return full;
                }
                points = points.iter().flat_map(|p| choices.iter().map(move |c| [p.as_slice(), c].concat())).collect();
            }
            points.sort();
            points.dedup();
            return KeyAccess::Points(points);
        }
        if let Some(first) = &eq[0]
            && first.len() == 1
        {
            return KeyAccess::Range { start: Some(first[0].clone()), end: keys::try_prefix_end(&first[0]) };
        }
        KeyAccess::Range { start: lower, end: upper }
    }
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            split_and(left, out);
            split_and(right, out);
        }
        other => out.push(other),
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v),
        _ => None,
    }
}

/// `col = v`, `col IN (v, ...)` or `col = v OR col = w ...`: the values.
fn equality(e: &Expr, col: &str) -> Option<Vec<ScalarValue>> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let mut values = equality(left, col)?;
            values.extend(equality(right, col)?);
            Some(values)
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => {
            let v = if column_name(left) == Some(col) {
                literal(right)
            } else if column_name(right) == Some(col) {
                literal(left)
            } else {
                None
            };
            v.map(|v| vec![v.clone()])
        }
        Expr::InList(list) if !list.negated && column_name(&list.expr) == Some(col) => {
            list.list.iter().map(|e| literal(e).cloned()).collect()
        }
        _ => None,
    }
}

/// Comparisons of `col` with a literal, as `col <op> v`.
fn bounds(e: &Expr, col: &str) -> Vec<(Operator, ScalarValue)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if column_name(left) == Some(col)
                && let Some(v) = literal(right)
            {
                return vec![(*op, v.clone())];
            }
            if column_name(right) == Some(col)
                && let Some(v) = literal(left)
                && let Some(op) = op.swap()
            {
                return vec![(op, v.clone())];
            }
            vec![]
        }
        Expr::Between(Between { expr, negated: false, low, high }) if column_name(expr) == Some(col) => {
            match (literal(low), literal(high)) {
                (Some(l), Some(h)) => vec![(Operator::GtEq, l.clone()), (Operator::LtEq, h.clone())],
                _ => vec![],
            }
        }
        _ => vec![],
    }
}

/// Reads a table's rows: point lookups, or a range streamed from one snapshot.
#[derive(Debug)]
pub struct TableScanExec {
    table: Arc<Table>,
    store: Arc<Store>,
    projection: Vec<usize>,
    schema: SchemaRef,
    access: KeyAccess,
    limit: Option<usize>,
    with_key: bool,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for TableScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let access = match &self.access {
            KeyAccess::Points(p) => format!("points={}", p.len()),
            KeyAccess::Range { start: None, end: None } => "full".to_owned(),
            KeyAccess::Range { .. } => "range".to_owned(),
        };
        write!(f, "TableScanExec: table={}, keys={access}", self.table.meta.qualified_name())
    }
}

impl ExecutionPlan for TableScanExec {
    fn name(&self) -> &str {
        "TableScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() { Ok(self) } else { internal_err!("TableScanExec has no children") }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("TableScanExec has one partition, asked for {partition}");
        }
        let decoder = Decoder {
            table: Arc::clone(&self.table),
            projection: self.projection.clone(),
            schema: Arc::clone(&self.schema),
            with_key: self.with_key,
        };
        let prefix = keys::table_prefix(self.table.meta.id);
        let schema = Arc::clone(&self.schema);
        let limit = self.limit.unwrap_or(usize::MAX);
        match &self.access {
            KeyAccess::Points(points) => {
                let full_keys: Vec<Vec<u8>> = points.iter().map(|p| [prefix.as_slice(), p].concat()).collect();
                let store = Arc::clone(&self.store);
                let read = async move {
                    let read = move || {
                        let values = store.multi_get(&full_keys).map_err(storage_err)?;
                        let pairs: Vec<(Vec<u8>, Vec<u8>)> = full_keys
                            .into_iter()
                            .zip(values)
                            .filter_map(|(k, v)| v.map(|v| (k, v)))
                            .take(limit)
                            .collect();
                        decoder.decode(&pairs)
                    };
                    tokio::task::spawn_blocking(read)
                        .await
                        .map_err(|e| datafusion::error::DataFusionError::ExecutionJoin(Box::new(e)))?
                };
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::once(read))))
            }
            KeyAccess::Range { start, end } => {
                let start = [prefix.as_slice(), start.as_deref().unwrap_or(&[])].concat();
                let end = match end {
                    Some(e) => [prefix.as_slice(), e].concat(),
                    None => keys::prefix_end(&prefix),
                };
                let chunk = CHUNK_ROWS.min(limit.max(1));
                let rx = self.store.scan_chunks(start, end, chunk);
                let stream = tokio_stream(rx).map(move |chunk| decoder.decode(&chunk.map_err(storage_err)?));
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
            }
        }
    }
}

fn tokio_stream<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Decoder {
    table: Arc<Table>,
    projection: Vec<usize>,
    schema: SchemaRef,
    with_key: bool,
}

impl Decoder {
    fn decode(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<RecordBatch> {
        let columns = &self.table.meta.columns;
        let rows = pairs.iter().map(|(_, v)| decode_row(v).map_err(storage_err)).collect::<Result<Vec<_>>>()?;
        let n = columns.len();
        let table_cols: Vec<usize> = self.projection.iter().copied().filter(|&i| i < n).collect();
        let table_schema = Arc::new(self.table.schema.project(&table_cols)?);
        let batch = rows_to_batch(&table_schema, columns, &table_cols, &rows)?;
        if !self.with_key || table_cols.len() == self.projection.len() {
            return Ok(RecordBatch::try_new_with_options(
                Arc::clone(&self.schema),
                batch.columns().to_vec(),
                &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
            )?);
        }
        let keys: ArrayRef = Arc::new(BinaryArray::from_iter_values(
            pairs.iter().map(|(k, _)| keys::decode_row_key(k).map(|(_, pk)| pk.to_vec()).unwrap_or_default()),
        ));
        let mut arrays = Vec::with_capacity(self.projection.len());
        let mut it = batch.columns().iter();
        for &i in &self.projection {
            arrays.push(if i < n {
                Arc::clone(it.next().expect("one array per table column"))
            } else {
                Arc::clone(&keys)
            });
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), arrays)?)
    }
}
