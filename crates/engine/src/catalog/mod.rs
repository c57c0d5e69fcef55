//! The durable catalog: schemas, tables and topics, kept in memory and persisted as JSON
//! catalog entries through the store's commit path. Every change is one commit.

pub mod routes;
pub mod types;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use serde::{Deserialize, Serialize};
use topicfusion_storage::keys::{self, CatalogKind, SequenceKind};
use topicfusion_storage::{Commit, Store};

use self::routes::CompiledRoute;
use self::types::{ColumnMeta, arrow_schema};

/// The schema unqualified names resolve in.
pub const DEFAULT_SCHEMA: &str = "public";
/// The schema of the system tables (read-only, not stored).
pub const SYSTEM_SCHEMA: &str = "system";
/// PostgreSQL's catalog schema (in memory, from datafusion-pg-catalog): for psql and drivers.
pub const PG_CATALOG_SCHEMA: &str = "pg_catalog";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn storage_err(e: topicfusion_storage::StorageError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaMeta {
    pub name: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableMeta {
    pub id: u64,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnMeta>,
    /// Indices of the primary-key columns; empty means a hidden, monotonically assigned row id.
    pub primary_key: Vec<usize>,
    pub created_at_ms: i64,
}

impl TableMeta {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// A table: its metadata plus what writers share.
#[derive(Debug)]
pub struct Table {
    pub meta: TableMeta,
    pub schema: SchemaRef,
    /// Held exclusively by UPDATE and DELETE from their first read to their write, and by
    /// INSERTs into tables with hidden row ids; shared by other INSERTs (see `writer`). No lost
    /// updates, no duplicate keys.
    pub write_lock: Arc<tokio::sync::RwLock<()>>,
    /// Keys concurrent INSERTs are creating (see `writer::KeyReservation`).
    pub reserved_keys: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
    pub keys_released: tokio::sync::Notify,
    /// The next hidden row id (tables without a primary key); persisted with every insert.
    pub next_rowid: AtomicU64,
    /// Each column's DEFAULT as a DataFusion expression (what INSERT fills omitted columns with).
    pub defaults: Vec<Option<datafusion::logical_expr::Expr>>,
    /// Set (under the exclusive `write_lock`) once a live query watches the table: from then on
    /// every write hands its row changes to [`crate::live`].
    pub live: std::sync::atomic::AtomicBool,
    /// Rows written since the table was loaded (`topicfusion_rows_written_total`).
    pub rows_written: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteMeta {
    pub table_id: u64,
    /// `schema.table`
    pub table: String,
    /// `insert`, `update` or `delete`
    pub op: String,
    /// `key`, `full` or `diff`
    pub payload: String,
    /// The row filter as SQL text.
    pub filter: Option<String>,
    /// The partitioning expression as SQL text.
    pub partition_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicMeta {
    pub id: u64,
    pub schema: String,
    pub name: String,
    pub alias: Option<String>,
    pub partitions: u32,
    pub retention_seconds: Option<u64>,
    pub retention_max_bytes: Option<u64>,
    pub routes: Vec<RouteMeta>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl TopicMeta {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// A topic: its metadata and its compiled routes.
#[derive(Debug)]
pub struct Topic {
    pub meta: TopicMeta,
    pub routes: Vec<CompiledRoute>,
}

#[derive(Debug, Default, Clone)]
pub struct CatalogState {
    pub schemas: BTreeMap<String, SchemaMeta>,
    pub tables: BTreeMap<(String, String), Arc<Table>>,
    pub topics: BTreeMap<(String, String), Arc<Topic>>,
    next_table_id: u64,
    next_topic_id: u64,
}

impl CatalogState {
    pub fn table(&self, schema: &str, name: &str) -> Option<&Arc<Table>> {
        self.tables.get(&(schema.to_owned(), name.to_owned()))
    }

    pub fn table_by_id(&self, id: u64) -> Option<&Arc<Table>> {
        self.tables.values().find(|t| t.meta.id == id)
    }

    pub fn topic(&self, schema: &str, name: &str) -> Option<&Arc<Topic>> {
        self.topics.get(&(schema.to_owned(), name.to_owned()))
    }

    /// The topic with this name, or whose alias is this name. Aliases are unique across topic
    /// names and aliases; an unqualified name finds an alias in any schema, a qualified one only
    /// in its own schema (`sales.ev` never finds `public.events` whose alias is `ev`).
    pub fn topic_by_name_or_alias(&self, schema: &str, name: &str, qualified: bool) -> Option<&Arc<Topic>> {
        self.topic(schema, name).or_else(|| {
            self.topics
                .values()
                .find(|t| t.meta.alias.as_deref() == Some(name) && (!qualified || t.meta.schema == schema))
        })
    }

    /// Topics with at least one route from this table.
    pub fn topics_fed_by(&self, table_id: u64) -> Vec<Arc<Topic>> {
        self.topics.values().filter(|t| t.meta.routes.iter().any(|r| r.table_id == table_id)).cloned().collect()
    }
}

/// The catalog. DDL takes the write lock for its whole commit, so DDL statements apply one at
/// a time and readers see either the old or the new catalog.
#[derive(Debug)]
pub struct Catalog {
    state: RwLock<CatalogState>,
}

impl Catalog {
    /// Loads every entry from the store; creates the default schema on a new data dir.
    pub fn load(
        store: &Store,
        compile: impl Fn(&TopicMeta, &CatalogState) -> Result<Vec<CompiledRoute>>,
    ) -> Result<Self> {
        let (state, rekey) = Self::read_state(store, compile)?;
        if !rekey.batch.is_empty() {
            store.commit(rekey).map_err(storage_err)?;
        }
        let catalog = Self { state: RwLock::new(state) };
        if !catalog.read().schemas.contains_key(DEFAULT_SCHEMA) {
            let mut c = Commit::default();
            let mut st = catalog.write();
            put_schema(&mut c, &mut st, DEFAULT_SCHEMA);
            store.commit(c).map_err(storage_err)?;
        }
        Ok(catalog)
    }

    /// Replaces what the catalog holds by what the store holds, writing nothing: for a replica
    /// whose store changed under it (entries of another node applied, a snapshot installed).
    /// Tables are new objects: no writer may be running on this node.
    pub fn reload(
        &self,
        store: &Store,
        compile: impl Fn(&TopicMeta, &CatalogState) -> Result<Vec<CompiledRoute>>,
    ) -> Result<()> {
        let (state, _) = Self::read_state(store, compile)?;
        *self.write() = state;
        Ok(())
    }

    /// The catalog as stored, and the commit that moves entries of an older key layout.
    fn read_state(
        store: &Store,
        compile: impl Fn(&TopicMeta, &CatalogState) -> Result<Vec<CompiledRoute>>,
    ) -> Result<(CatalogState, Commit)> {
        let mut state = CatalogState::default();
        for (_, v) in scan_kind(store, CatalogKind::Schema)? {
            let s: SchemaMeta = from_json(&v)?;
            state.schemas.insert(s.name.clone(), s);
        }
        // Entries written before keys were `schema 00 name` (`schema.name`) move to their
        // canonical key in one commit at open.
        let mut rekey = Commit::default();
        for (k, v) in scan_kind(store, CatalogKind::Table)? {
            let meta: TableMeta = from_json(&v)?;
            let canonical = keys::qualified_catalog_key(CatalogKind::Table, &meta.schema, &meta.name);
            if k != canonical {
                rekey.batch.delete(&k);
                rekey.batch.put(&canonical, &v);
            }
            let next_rowid = read_sequence(store, SequenceKind::RowId, meta.id)?;
            state.tables.insert((meta.schema.clone(), meta.name.clone()), Arc::new(new_table(meta, next_rowid)));
        }
        let mut topic_metas: Vec<TopicMeta> = Vec::new();
        for (k, v) in scan_kind(store, CatalogKind::Topic)? {
            let meta: TopicMeta = from_json(&v)?;
            let canonical = keys::qualified_catalog_key(CatalogKind::Topic, &meta.schema, &meta.name);
            if k != canonical {
                rekey.batch.delete(&k);
                rekey.batch.put(&canonical, &v);
            }
            topic_metas.push(meta);
        }
        for meta in topic_metas {
            let routes = compile(&meta, &state)?;
            state.topics.insert((meta.schema.clone(), meta.name.clone()), Arc::new(Topic { meta, routes }));
        }
        state.next_table_id = read_sequence(store, SequenceKind::TableId, 0)?;
        state.next_topic_id = read_sequence(store, SequenceKind::TopicId, 0)?;
        Ok((state, rekey))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, CatalogState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, CatalogState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn new_table(meta: TableMeta, next_rowid: u64) -> Table {
    Table {
        schema: arrow_schema(&meta.columns),
        defaults: meta.columns.iter().map(|c| c.default.as_deref().and_then(|sql| compile_default(sql).ok())).collect(),
        meta,
        write_lock: Arc::new(tokio::sync::RwLock::new(())),
        reserved_keys: Default::default(),
        keys_released: tokio::sync::Notify::new(),
        next_rowid: AtomicU64::new(next_rowid),
        live: Default::default(),
        rows_written: AtomicU64::new(0),
    }
}

/// A column DEFAULT (SQL text) as a DataFusion expression. It may call functions (`now()`) but
/// not name columns.
pub fn compile_default(sql: &str) -> Result<datafusion::logical_expr::Expr> {
    use std::sync::LazyLock;
    static CTX: LazyLock<datafusion::execution::context::SessionContext> = LazyLock::new(|| {
        let mut config = datafusion::execution::context::SessionConfig::new();
        config.options_mut().sql_parser.parse_float_as_decimal = true;
        datafusion::execution::context::SessionContext::new_with_config(config)
    });
    topicfusion_dialect::parse_expr_checked(sql)?;
    CTX.parse_sql_expr(sql, &datafusion::common::DFSchema::empty())
}

fn scan_kind(store: &Store, kind: CatalogKind) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let prefix = keys::catalog_prefix(kind);
    store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).map_err(storage_err)
}

fn read_sequence(store: &Store, kind: SequenceKind, id: u64) -> Result<u64> {
    match store.get(&keys::sequence_key(kind, id)).map_err(storage_err)? {
        None => Ok(0),
        Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(b) => Ok(u64::from_be_bytes(b)),
            Err(_) => exec_err!("corrupt sequence value"),
        },
    }
}

fn from_json<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| DataFusionError::Execution(format!("corrupt catalog entry: {e}")))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("catalog metadata serializes")
}

/// Stages a new schema; the caller commits `c` and keeps `st` locked until then.
pub fn put_schema(c: &mut Commit, st: &mut CatalogState, name: &str) {
    let meta = SchemaMeta { name: name.to_owned(), created_at_ms: now_ms() };
    c.batch.put(keys::catalog_key(CatalogKind::Schema, name), to_json(&meta));
    st.schemas.insert(name.to_owned(), meta);
}

pub fn delete_schema(c: &mut Commit, st: &mut CatalogState, name: &str) {
    c.batch.delete(keys::catalog_key(CatalogKind::Schema, name));
    st.schemas.remove(name);
}

/// Allocates a table id and stages the table's entry.
pub fn put_new_table(c: &mut Commit, st: &mut CatalogState, mut meta: TableMeta) -> Result<Arc<Table>> {
    meta.id = st.next_table_id;
    st.next_table_id += 1;
    c.batch.put(keys::sequence_key(SequenceKind::TableId, 0), st.next_table_id.to_be_bytes());
    c.batch.put(keys::qualified_catalog_key(CatalogKind::Table, &meta.schema, &meta.name), to_json(&meta));
    let table = Arc::new(new_table(meta, 0));
    st.tables.insert((table.meta.schema.clone(), table.meta.name.clone()), Arc::clone(&table));
    Ok(table)
}

/// Stages the removal of a table and all its rows.
pub fn delete_table(c: &mut Commit, st: &mut CatalogState, table: &Table) {
    let prefix = keys::table_prefix(table.meta.id);
    c.batch.delete_range(&prefix, &keys::prefix_end(&prefix));
    c.batch.delete(keys::sequence_key(SequenceKind::RowId, table.meta.id));
    c.batch.delete(keys::qualified_catalog_key(CatalogKind::Table, &table.meta.schema, &table.meta.name));
    st.tables.remove(&(table.meta.schema.clone(), table.meta.name.clone()));
}

/// Allocates a topic id.
pub fn next_topic_id(c: &mut Commit, st: &mut CatalogState) -> u64 {
    let id = st.next_topic_id;
    st.next_topic_id += 1;
    c.batch.put(keys::sequence_key(SequenceKind::TopicId, 0), st.next_topic_id.to_be_bytes());
    id
}

/// Stages a topic's entry (new or changed).
pub fn put_topic(c: &mut Commit, st: &mut CatalogState, topic: Topic) -> Arc<Topic> {
    c.batch.put(
        keys::qualified_catalog_key(CatalogKind::Topic, &topic.meta.schema, &topic.meta.name),
        to_json(&topic.meta),
    );
    let topic = Arc::new(topic);
    st.topics.insert((topic.meta.schema.clone(), topic.meta.name.clone()), Arc::clone(&topic));
    topic
}

pub fn delete_topic(c: &mut Commit, st: &mut CatalogState, meta: &TopicMeta) {
    c.batch.delete(keys::qualified_catalog_key(CatalogKind::Topic, &meta.schema, &meta.name));
    st.topics.remove(&(meta.schema.clone(), meta.name.clone()));
}

/// Stages the next hidden row id of a table.
pub fn put_rowid_sequence(c: &mut Commit, table: &Table) {
    let next = table.next_rowid.load(Ordering::SeqCst);
    c.batch.put(keys::sequence_key(SequenceKind::RowId, table.meta.id), next.to_be_bytes());
}

/// The longest schema, table, topic or alias name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Checks the name of a new schema, table, topic or alias: 1 to 255 bytes, no NUL, and not in a
/// schema the system owns (`system`, `information_schema`: such tables could never be reached).
pub fn check_new_name(what: &str, schema: Option<&str>, name: &str) -> Result<()> {
    let what = if what == "alias" { "an alias".to_owned() } else { format!("a {what} name") };
    if name.is_empty() {
        return plan_err!("{what} cannot be empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return plan_err!("{what} can have at most {MAX_NAME_BYTES} bytes, got {}", name.len());
    }
    if name.contains('\0') {
        return plan_err!("{what} cannot contain the NUL character");
    }
    let reserved = |s: &str| {
        s == SYSTEM_SCHEMA || s.eq_ignore_ascii_case("information_schema") || s.eq_ignore_ascii_case(PG_CATALOG_SCHEMA)
    };
    if schema.is_some_and(reserved) || (what == "a schema name" && reserved(name)) {
        return plan_err!("schema {} is reserved for the system", schema.unwrap_or(name));
    }
    Ok(())
}

/// Checks that a schema exists.
pub fn require_schema(st: &CatalogState, schema: &str) -> Result<()> {
    if st.schemas.contains_key(schema) { Ok(()) } else { plan_err!("schema {schema} does not exist") }
}
