//! `Database`: opens a data dir and executes SQL text (one or more `;`-separated statements,
//! standard and topic statements mixed) in order, each statement atomic. `Send + Sync`: share
//! it between tokio tasks with an `Arc`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, not_impl_err};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::{DdlStatement, Extension, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::Analyzer;
use topicfusion_dialect::{
    AckTarget, AlterUserAction, ClusterStatement, CopyEndpoint, CopyStatement, ParsedStatement, SessionStatement,
    Statement, TopicStatement, UserStatement, parse_sql,
};
use topicfusion_storage::keys::{self, CatalogKind};
use topicfusion_storage::{Clock, Commit, Durability, Message, Store};

use crate::auth::{Action, PermissionDenied, Principal, Users, authorize};
use crate::catalog::routes::{CompiledRoute, compile_route};
use crate::catalog::{Catalog, DEFAULT_SCHEMA, storage_err};
use crate::core::Core;
use crate::session::Session;
use crate::session::{functions, settings};
use crate::sql::ddl;
use crate::sql::plan::table_write::TableWriteRule;
use crate::sql::plan::topic_command::TopicCommandNode;
use crate::sql::plan::update_from;
use crate::sql::planner::TopicQueryPlanner;
use crate::sql::postgres::ParamValue;
use crate::sql::provider::catalog::DurableCatalog;
use crate::statement::ExecuteError;
use crate::statement::{ClientCopy, CommandTag, Description, Outcome, StatementResult, rows_result, status_result};
use crate::topics::ddl::find_topic;
use crate::topics::groups::{ConsumeRequest, Groups};
use crate::topics::retention;
use crate::write::literal_insert::{self, LiteralInsert};
use crate::write::writer;
use datafusion::sql::parser::Statement as DFStatement;
use topicfusion_dialect::sqlparser::ast::Statement as SqlStatement;

/// How a database is opened.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    pub durability: Durability,
    /// The default claim length of a group CONSUME.
    pub visibility_timeout_ms: u64,
    /// DataFusion's parallelism (default: the number of cores).
    pub target_partitions: Option<usize>,
    /// Whether role `user` may CONSUME and ACK (by default only service, dba and system may).
    pub allow_user_role_consume: bool,
    /// The most row data (Arrow bytes) one UPDATE, DELETE or INSERT ... SELECT may change;
    /// larger statements fail with an error saying so instead of exhausting memory.
    pub max_statement_bytes: usize,
    /// How often the retention job runs (0: never on its own; `RUN RETENTION` still works).
    pub retention_interval_ms: u64,
    /// Stamps commits and decides what retention deletes (tests move it).
    pub clock: Clock,
    /// The threads that run DML statements' key checks and writes ([`crate::write::commit_threads`]);
    /// 0: the number of cores, at least 2.
    pub commit_threads: usize,
    /// Memory bounds of live queries.
    pub live: crate::live::LiveOptions,
}

/// The default of [`DatabaseOptions::max_statement_bytes`]: 256 MiB.
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 256 << 20;

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Process,
            visibility_timeout_ms: 60_000,
            target_partitions: None,
            allow_user_role_consume: false,
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            retention_interval_ms: 60_000,
            clock: Clock::system(),
            commit_threads: 0,
            live: Default::default(),
        }
    }
}

/// A statement of the PostgreSQL protocol's extended query, parsed once at Parse; a plain
/// INSERT of parameters and literals also keeps its [`literal_insert::InsertTemplate`].
#[derive(Debug)]
pub struct PreparedStatement {
    pub parsed: ParsedStatement,
    insert: Option<literal_insert::InsertTemplate>,
}

/// SUBSCRIBE through an interface that answers once (HTTP `/sql`, a statement among others, a
/// prepared statement): where it runs instead.
pub(crate) fn subscribe_elsewhere() -> DataFusionError {
    DataFusionError::NotImplemented(
        "SUBSCRIBE streams its rows as they change: run it as the only statement of a PostgreSQL simple query (or in a cursor over the PostgreSQL protocol: DECLARE c CURSOR FOR SUBSCRIBE ...), or over the WebSocket /v1/api/live or SSE /v1/api/live/sse (docs/live-queries.md)".into(),
    )
}

fn denied(e: PermissionDenied) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

pub struct Database {
    pub(crate) core: Arc<Core>,
    ctx: SessionContext,
    allow_user_role_consume: bool,
    /// INSERTs that took the literal fast path (for tests and monitoring).
    literal_inserts: std::sync::atomic::AtomicU64,
    /// The background retention thread; joined when the database is dropped.
    _retention: retention::Executor,
    catalog: Arc<DurableCatalog>,
}

impl Drop for Database {
    fn drop(&mut self) {
        self.catalog.release_pg_catalog();
    }
}

/// A topic's routes compiled against the catalog state `st`. A route that no longer compiles
/// is marked broken, not a reason to refuse the whole data dir.
fn compile_routes(
    expr_ctx: &SessionContext,
    meta: &crate::catalog::TopicMeta,
    st: &crate::catalog::CatalogState,
) -> Vec<CompiledRoute> {
    meta.routes
        .iter()
        .map(|r| {
            let compiled = match st.table_by_id(r.table_id) {
                Some(t) => compile_route(expr_ctx, r.clone(), t),
                None => datafusion::common::exec_err!("route of topic {} names a missing table", meta.name),
            };
            compiled.unwrap_or_else(|e| CompiledRoute::broken(r.clone(), &e))
        })
        .collect()
}

impl Database {
    /// Starts writing the client's rows of a `COPY ... FROM STDIN` (see [`ClientCopy::In`]).
    pub fn copy_in(&self, target: Arc<crate::write::copy::CopyInTarget>) -> crate::write::copy::CopyIn {
        crate::write::copy::CopyIn::new(Arc::clone(&self.core), target)
    }

    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, options: DatabaseOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store =
            Arc::new(Store::open_with_clock(dir, options.durability, options.clock.clone()).map_err(storage_err)?);
        let expr_ctx = SessionContext::new();
        let catalog = Catalog::load(&store, |meta, st| Ok(compile_routes(&expr_ctx, meta, st)))?;
        let users = Users::load(&store)?;
        // Every data dir has root (role system); the server gives it its password.
        users.ensure_root(&store, None)?;
        let jobs = retention::Jobs::load(&store)?;
        let store_for_live = Arc::clone(&store);
        let groups = Groups::new(options.visibility_timeout_ms);
        let core = Arc::new(Core {
            store,
            catalog,
            users,
            ddl_lock: Arc::new(tokio::sync::RwLock::new(())),
            expr_ctx,
            limits: crate::core::Limits { max_statement_bytes: options.max_statement_bytes },
            jobs,
            commit_threads: crate::write::commit_threads::CommitThreads::start(options.commit_threads)?,
            cluster: std::sync::OnceLock::new(),
            live: crate::live::Live::start(&store_for_live, options.live)?,
            metrics: crate::metrics::Metrics::new(store_for_live.metrics()),
            groups,
        });
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema("datafusion", DEFAULT_SCHEMA);
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        // Numeric literals with a fraction are exact decimals, as in PostgreSQL.
        config.options_mut().sql_parser.parse_float_as_decimal = true;
        if let Some(n) = options.target_partitions {
            config = config.with_target_partitions(n);
        }
        let mut analyzer_rules = Analyzer::new().rules;
        analyzer_rules.push(Arc::new(crate::sql::postgres::casts::PostgresCasts::default()));
        analyzer_rules.push(Arc::new(TableWriteRule));
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_analyzer_rules(analyzer_rules)
            .with_query_planner(Arc::new(TopicQueryPlanner::new(Arc::clone(&core))))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let catalog = Arc::new(DurableCatalog::new(Arc::clone(&core)));
        ctx.register_catalog("datafusion", Arc::clone(&catalog) as _);
        crate::sql::postgres::install_pg_catalog(&ctx, &core)?;
        functions::install(&ctx);
        let retention = retention::Executor::start(
            Arc::clone(&core),
            std::time::Duration::from_millis(options.retention_interval_ms),
        )?;
        Ok(Self {
            core,
            ctx,
            _retention: retention,
            catalog,
            allow_user_role_consume: options.allow_user_role_consume,
            literal_inserts: Default::default(),
        })
    }

    /// Replaces the in-memory state (catalog and routes, users, cached group state) by what the
    /// store holds, writing nothing: for a replica whose store changed under it, entries of
    /// another node applied or a snapshot installed. No statement may write on this node
    /// meanwhile (a follower does not write; a new leader reloads before its first write).
    pub fn reload_from_store(&self) -> Result<()> {
        let core = &self.core;
        core.catalog.reload(&core.store, |meta, st| Ok(compile_routes(&core.expr_ctx, meta, st)))?;
        core.users.reload(&core.store)?;
        core.groups.forget_cached();
        // The reload made new table objects (not live until subscribed to again): live queries
        // of the old ones would miss their writes, so they end (`table_changed`).
        core.live.check_tables(&core.catalog);
        core.live.revalidate(&core.users);
        Ok(())
    }

    /// Makes this database a node of `cluster` (`system.cluster`, `ALTER CLUSTER`); set once.
    pub fn set_cluster(&self, cluster: Arc<dyn crate::core::Cluster>) {
        let _ = self.core.cluster.set(cluster);
        // The store replicates now: positions follow the log (the dispatcher started from
        // RocksDB's sequence number).
        self.core.live.rebase(self.core.store.position());
    }

    /// The store this database keeps its data in.
    pub fn store(&self) -> &Arc<Store> {
        &self.core.store
    }

    /// A new session (see [`Session`]): give each connection its own.
    pub fn session(&self) -> Session {
        Session::new()
    }

    /// The DataFusion context a session plans with: its own once it changed a setting, else
    /// the database's shared one.
    pub(crate) fn context<'a>(&'a self, session: &'a Session) -> &'a SessionContext {
        session.ctx.as_ref().unwrap_or(&self.ctx)
    }

    /// Executes every statement of `sql` in order as `root` (the embedded interface) and
    /// returns their results; stops at the first failing statement.
    pub async fn execute(&self, sql: &str) -> Result<Vec<StatementResult>, ExecuteError> {
        self.execute_as(&Principal::root(), sql).await
    }

    /// Executes every statement of `sql` in order as `principal`, in a session of its own, for
    /// a caller without a client data stream (HTTP, the CLI): a COPY with the client is an
    /// error there.
    pub async fn execute_as(&self, principal: &Principal, sql: &str) -> Result<Vec<StatementResult>, ExecuteError> {
        let mut results = self.execute_in(&mut Session::new(), principal, sql).await?;
        // A COPY with the client is always the last statement (execute_in checks it).
        if results.last().is_some_and(|r| r.copy.is_some()) {
            let copy = results.pop().expect("checked above");
            let e = DataFusionError::Plan(
                "COPY ... FROM STDIN and COPY ... TO STDOUT move rows between the server and a PostgreSQL client: run them over the PostgreSQL protocol (here, INSERT or SELECT the rows)".into(),
            );
            let statement = results.len() + 1;
            return Err(ExecuteError { completed: results, ..ExecuteError::new(statement, copy.sql, e) });
        }
        Ok(results)
    }

    /// Executes every statement of `sql` in order as `principal` in `session`, each checked
    /// against its role before it runs; stops at the first failing statement (the error holds
    /// the results of the statements before it). Text that does not parse runs nothing.
    pub async fn execute_in(
        &self,
        session: &mut Session,
        principal: &Principal,
        sql: &str,
    ) -> Result<Vec<StatementResult>, ExecuteError> {
        // Bulk and single-row INSERTs of literals skip the SQL parser (same rows, same checks).
        let scanned = if session.bare_names_in_public() { topicfusion_dialect::scan_values_insert(sql) } else { None };
        if let Some(scanned) = scanned {
            let fast = literal_insert::from_scanned(&self.core.catalog.read(), &scanned);
            if let Some(fast) = fast {
                let command = CommandTag { name: "INSERT", outcome: Outcome::RowCount };
                let started = Instant::now();
                let inserted = self.insert_rows(fast).await;
                self.core.metrics.statement(command.name, inserted.is_ok(), started.elapsed());
                return match inserted {
                    Ok((schema, batches)) => {
                        Ok(vec![StatementResult { sql: scanned.sql.to_owned(), command, schema, batches, copy: None }])
                    }
                    Err(source) => Err(ExecuteError::new(1, scanned.sql.to_owned(), source)),
                };
            }
        }
        let statements = parse(sql).inspect_err(|_| {
            self.core.metrics.statement("UNPARSED", false, Duration::ZERO);
        })?;
        let count = statements.len();
        let mut out = Vec::with_capacity(count);
        for (i, parsed) in statements.into_iter().enumerate() {
            let sql = parsed.sql.clone();
            let command = CommandTag::of(&parsed.statement);
            let started = Instant::now();
            let executed = self.execute_statement(session, principal, parsed.statement).await;
            self.core.metrics.statement(command.name, executed.is_ok(), started.elapsed());
            self.after_table_ddl(command);
            match executed {
                Ok(result) => {
                    let copy = result.copy.is_some();
                    out.push(StatementResult { sql, command, ..result });
                    if copy && i + 1 < count {
                        let e = DataFusionError::Plan(
                            "a COPY with the client must be the last statement of its query".into(),
                        );
                        return Err(ExecuteError { completed: out, ..ExecuteError::new(i + 2, String::new(), e) });
                    }
                }
                Err(source) => return Err(ExecuteError { completed: out, ..ExecuteError::new(i + 1, sql, source) }),
            }
        }
        Ok(out)
    }

    /// Starts a live query (docs/live-queries.md) for `principal`: `sql` is one `SUBSCRIBE`
    /// statement or one plain `SELECT` (then `snapshot` and `from_position` come from the
    /// arguments; a SUBSCRIBE's own options win where the arguments leave them open).
    pub async fn subscribe(
        &self,
        principal: &Principal,
        sql: &str,
        snapshot: Option<bool>,
        from_position: Option<u64>,
    ) -> Result<crate::live::Subscription, ExecuteError> {
        let mut statements = parse_sql(sql).map_err(|e| ExecuteError::new(0, sql.to_owned(), e))?;
        let fail = |e| ExecuteError::new(1, sql.to_owned(), e);
        let one = || fail(DataFusionError::Plan("a live query is one SELECT or SUBSCRIBE statement".into()));
        let (query, snapshot, from) = match statements.pop().map(|p| p.statement) {
            Some(Statement::Subscribe(s)) if statements.is_empty() => {
                (s.query, snapshot.or(s.snapshot), from_position.or(s.from_position))
            }
            Some(Statement::DataFusion(s)) if statements.is_empty() => match *s {
                DFStatement::Statement(st) => match *st {
                    SqlStatement::Query(q) => (q, snapshot, from_position),
                    _ => return Err(one()),
                },
                _ => return Err(one()),
            },
            _ => return Err(one()),
        };
        self.start_live_query(principal, sql, query, snapshot, from).await.map_err(fail)
    }

    /// Starts the live query `query` (its text `sql`, as `system.live_queries` shows it).
    pub(crate) async fn start_live_query(
        &self,
        principal: &Principal,
        sql: &str,
        query: Box<datafusion::sql::sqlparser::ast::Query>,
        snapshot: Option<bool>,
        from: Option<u64>,
    ) -> Result<crate::live::Subscription> {
        // On a cluster, live queries run on the leader, whose writers report their changes
        // (elsewhere: the not-leader error naming the leader, as a write gets).
        self.core.store.ensure_writable().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let snapshot = snapshot.unwrap_or(from.is_none());
        if snapshot && from.is_some() {
            return Err(DataFusionError::Plan(
                "a live query starts either with a snapshot or from a position, not both: set snapshot = false with from_position".into(),
            ));
        }
        let compiled = crate::live::LiveQuery::compile(&self.core, principal, &query)?;
        let table = Arc::clone(&compiled.table);
        let subscription = self.core.live.subscribe(&self.core.store, principal, sql, compiled, snapshot, from).await?;
        // A DROP TABLE or DROP USER that ran while this one registered may have checked the
        // subscriptions before this one was among them: check it (its later checks see it).
        let current = self.core.catalog.read().table(&table.meta.schema, &table.meta.name).cloned();
        if !current.is_some_and(|t| Arc::ptr_eq(&t, &table)) {
            return Err(DataFusionError::Plan(format!("table {} was dropped", table.meta.qualified_name())));
        }
        if self.core.users.principal(&principal.name).is_none() {
            return Err(DataFusionError::Plan(format!("user {} was dropped", principal.name)));
        }
        Ok(subscription)
    }

    /// After a statement that may have dropped tables (`DROP TABLE`, `DROP SCHEMA ... CASCADE`):
    /// live queries of a table that is gone end.
    fn after_table_ddl(&self, command: CommandTag) {
        if matches!(command.name, "DROP TABLE" | "DROP SCHEMA") {
            self.core.live.check_tables(&self.core.catalog);
        }
    }

    /// Parses the text of a prepared statement (at most one statement). `Ok(None)`: the text
    /// holds no statement.
    pub fn prepare(&self, sql: &str) -> Result<Option<PreparedStatement>, ExecuteError> {
        let Some(parsed) = parse_one(sql)? else { return Ok(None) };
        if matches!(parsed.statement, Statement::Subscribe(_)) {
            // Refused at Parse: a client must not learn a statement that never answers.
            return Err(ExecuteError::new(1, parsed.sql, subscribe_elsewhere()));
        }
        let insert = match &parsed.statement {
            Statement::DataFusion(df) => match df.as_ref() {
                DFStatement::Statement(st) => match st.as_ref() {
                    SqlStatement::Insert(insert) => literal_insert::template(&self.core.catalog.read(), insert),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        Ok(Some(PreparedStatement { parsed, insert }))
    }

    /// Executes a prepared statement with its `$n` parameters bound to `params` (the PostgreSQL
    /// protocol's extended query: the text is parsed once, at Parse).
    pub async fn execute_prepared(
        &self,
        session: &mut Session,
        principal: &Principal,
        prepared: &PreparedStatement,
        params: &[ParamValue],
    ) -> Result<StatementResult, ExecuteError> {
        let PreparedStatement { parsed, insert } = prepared;
        let fail = |source| ExecuteError::new(1, parsed.sql.clone(), source);
        let template = insert.as_ref().filter(|_| session.bare_names_in_public());
        let rows = template.and_then(|t| t.rows(&self.core.catalog.read(), params));
        if let Some(rows) = rows {
            let command = CommandTag { name: "INSERT", outcome: Outcome::RowCount };
            let started = Instant::now();
            let inserted = self.insert_rows(rows).await;
            self.core.metrics.statement(command.name, inserted.is_ok(), started.elapsed());
            let (schema, batches) = inserted.map_err(fail)?;
            return Ok(StatementResult { sql: parsed.sql.clone(), command, schema, batches, copy: None });
        }
        let mut statement = parsed.statement.clone();
        let command = CommandTag::of(&statement);
        if matches!(statement, Statement::Subscribe(_)) {
            // Refused before its parameters are looked at: it does not run here at all.
            return Err(fail(subscribe_elsewhere()));
        }
        crate::sql::postgres::bind_parameters(&mut statement, params).map_err(fail)?;
        let started = Instant::now();
        let executed = self.execute_statement(session, principal, statement).await;
        self.core.metrics.statement(command.name, executed.is_ok(), started.elapsed());
        self.after_table_ddl(command);
        let result = executed.map_err(fail)?;
        Ok(StatementResult { sql: parsed.sql.clone(), command, ..result })
    }

    /// What a prepared statement returns and which parameters it takes, without running it.
    pub async fn describe(
        &self,
        session: &mut Session,
        principal: &Principal,
        prepared: &ParsedStatement,
    ) -> Result<Description, ExecuteError> {
        let command = CommandTag::of(&prepared.statement);
        let fail = |source| ExecuteError::new(1, prepared.sql.clone(), source);
        let count = crate::sql::postgres::parameter_count(&prepared.statement).map_err(fail)?;
        let mut parameters = vec![None; count];
        let mut columns = None;
        let plan = match prepared.statement.clone() {
            Statement::DataFusion(mut s) if command.outcome == Outcome::Rows => {
                if let DFStatement::Statement(st) = s.as_mut() {
                    if let SqlStatement::ShowVariable { variable } = st.as_ref() {
                        let name =
                            settings::canonical_name(&variable.iter().map(|v| v.value.clone()).collect::<Vec<_>>());
                        if !name.starts_with("datafusion.") {
                            let (column, _) =
                                settings::show(session, &name, identity(principal)).unwrap_or((name, String::new()));
                            let schema = Schema::new(vec![Field::new(column, DataType::Utf8, false)]);
                            return Ok(Description { command, columns: Some(Arc::new(schema)), parameters });
                        }
                    }
                    if self.session_statement_kind(st.as_ref()) {
                        return Ok(Description { command, columns: None, parameters });
                    }
                    functions::bind_session_functions(st, session, identity(principal), false).map_err(fail)?;
                }
                Some(self.context(session).state().statement_to_plan(*s).await.map_err(fail)?)
            }
            Statement::DataFusion(s) if command.outcome == Outcome::RowCount => {
                // An INSERT, UPDATE or DELETE DataFusion cannot plan here (UPDATE ... FROM) still
                // runs; its parameters are sent as text.
                self.context(session).state().statement_to_plan(*s).await.ok()
            }
            Statement::Topic(TopicStatement::ShowTopics) => Some(self.show_topics_plan().await.map_err(fail)?),
            Statement::Topic(s @ TopicStatement::Consume(_))
            | Statement::Topic(s @ TopicStatement::Ack(_))
            | Statement::Topic(s @ TopicStatement::RunRetention(_)) => {
                self.authorize_topic_statement(principal, &s).map_err(fail)?;
                Some(extension(s).map_err(fail)?)
            }
            Statement::ExplainTopic { verbose, statement } => Some(
                extension(statement)
                    .and_then(|p| LogicalPlanBuilder::from(p).explain(verbose, false)?.build())
                    .map_err(fail)?,
            ),
            Statement::Session(SessionStatement::Fetch { rows: true, cursor, .. }) => {
                let name = crate::session::cursor_name(&cursor);
                let Some(schema) = session.cursor_schema(&name) else {
                    return Err(fail(DataFusionError::Execution(format!("cursor \"{name}\" does not exist"))));
                };
                return Ok(Description { command, columns: Some(schema), parameters });
            }
            _ => None,
        };
        if let Some(plan) = plan {
            let plan = if command.outcome == Outcome::Rows {
                let plan = self.authorize_plan(principal, plan).map_err(fail)?;
                columns = Some(Arc::clone(plan.schema().inner()));
                plan
            } else {
                plan
            };
            collect_parameter_types(&plan, &mut parameters).map_err(fail)?;
        }
        Ok(Description { command, columns, parameters })
    }

    /// Whether a statement acts on the session (it returns no rows to describe).
    fn session_statement_kind(&self, st: &SqlStatement) -> bool {
        matches!(
            st,
            SqlStatement::StartTransaction { .. }
                | SqlStatement::Commit { .. }
                | SqlStatement::Rollback { .. }
                | SqlStatement::Savepoint { .. }
                | SqlStatement::ReleaseSavepoint { .. }
                | SqlStatement::Deallocate { .. }
                | SqlStatement::Set(_)
                | SqlStatement::Discard { .. }
                | SqlStatement::Declare { .. }
                | SqlStatement::Close { .. }
        )
    }

    async fn show_topics_plan(&self) -> Result<LogicalPlan> {
        let sql =
            "SELECT name, alias, partitions, retention_seconds, retention_max_bytes FROM system.topics ORDER BY name";
        self.ctx.state().create_logical_plan(sql).await
    }

    /// `ALTER CLUSTER ADD|REMOVE NODE` (the caller is authorized), through the server's cluster.
    async fn cluster_statement(&self, statement: ClusterStatement) -> Result<StatementResult> {
        let Some(cluster) = self.core.cluster.get() else {
            return datafusion::common::plan_err!(
                "not supported: ALTER CLUSTER on a server without [cluster] (a single node; see docs/cluster.md)"
            );
        };
        let status = match statement {
            ClusterStatement::AddNode { id, raft, http, pg } => {
                cluster.add_node(id, raft, http, pg).await?;
                format!("node {id} added: it votes")
            }
            ClusterStatement::RemoveNode { id } => {
                cluster.remove_node(id).await?;
                format!("node {id} removed")
            }
        };
        Ok(status_result(status))
    }

    fn authorize(&self, principal: &Principal, action: Action) -> Result<()> {
        authorize(principal, action, self.allow_user_role_consume).map_err(denied)
    }

    fn authorize_topic_statement(&self, principal: &Principal, statement: &TopicStatement) -> Result<()> {
        let action = match statement {
            TopicStatement::CreateTopic(_)
            | TopicStatement::DropTopic(_)
            | TopicStatement::ClearTopic(_)
            | TopicStatement::AlterTopic(_)
            | TopicStatement::RunRetention(_) => Action::Ddl,
            TopicStatement::ShowTopics => Action::ReadWrite,
            TopicStatement::Consume(_)
            | TopicStatement::Ack(_)
            | TopicStatement::ResetConsumerGroup(_)
            | TopicStatement::DropConsumerGroup(_) => Action::Consume,
        };
        self.authorize(principal, action)
    }

    /// Checks every part of a DataFusion plan (subqueries and EXPLAIN inputs included), and
    /// returns it as the principal may run it. Tables are recognized by what the plan scans
    /// (its table provider), not by the name written: a session's default schema or search
    /// path cannot make `users` mean `system.users` past the check. Role `user` sees only
    /// itself in `pg_catalog.pg_roles`.
    pub(crate) fn authorize_plan(&self, principal: &Principal, plan: LogicalPlan) -> Result<LogicalPlan> {
        use datafusion::logical_expr::Statement as DFPlanStatement;
        let mut needed = Vec::new();
        let mut copy_targets = Vec::new();
        plan.apply_with_subqueries(|node| {
            match node {
                LogicalPlan::Copy(copy) => {
                    needed.push(Action::FileSystem);
                    copy_targets.push(copy.output_url.clone());
                }
                LogicalPlan::Ddl(DdlStatement::CreateExternalTable(_)) => needed.push(Action::FileSystem),
                LogicalPlan::Ddl(_) => needed.push(Action::Ddl),
                LogicalPlan::Statement(DFPlanStatement::SetVariable(_) | DFPlanStatement::ResetVariable(_)) => {
                    needed.push(Action::SetOption)
                }
                LogicalPlan::TableScan(scan) if crate::sql::provider::system::is_users_table(scan.source.as_ref()) => {
                    needed.push(Action::ReadUsers)
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        needed.into_iter().try_for_each(|a| self.authorize(principal, a))?;
        copy_targets.iter().try_for_each(|t| prepare_copy_target(t))?;
        if principal.role >= crate::auth::Role::Dba {
            return Ok(plan);
        }
        let plan = crate::sql::provider::system::only_own_live_queries(plan, &principal.name)?;
        crate::sql::postgres::catalog::only_own_role(plan, &principal.name)
    }

    async fn execute_statement(
        &self,
        session: &mut Session,
        principal: &Principal,
        statement: Statement,
    ) -> Result<StatementResult> {
        match &statement {
            Statement::Topic(s) | Statement::ExplainTopic { statement: s, .. } => {
                self.authorize_topic_statement(principal, s)?
            }
            Statement::User(UserStatement::Alter(a))
                if a.name == principal.name && matches!(a.action, AlterUserAction::SetPassword(_)) => {}
            Statement::User(_) => self.authorize(principal, Action::ManageUsers)?,
            Statement::Copy(CopyStatement::From(c)) if c.source != CopyEndpoint::Client => {
                self.authorize(principal, Action::FileSystem)?
            }
            Statement::Cluster(_) => self.authorize(principal, Action::ManageCluster)?,
            Statement::Subscribe(_) => return Err(subscribe_elsewhere()),
            Statement::Copy(_) | Statement::DataFusion(_) | Statement::Session(_) => {}
        }
        let plan = match statement {
            Statement::Subscribe(_) => unreachable!("refused above"),
            Statement::User(s) => {
                let core = Arc::clone(&self.core);
                let principal = principal.clone();
                let status = tokio::task::spawn_blocking(move || core.users.execute(&core.store, &principal, &s))
                    .await
                    .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
                self.core.live.revalidate(&self.core.users);
                return Ok(status_result(status));
            }
            Statement::Copy(CopyStatement::From(c)) => {
                if c.source == CopyEndpoint::Client {
                    let target = crate::write::copy::copy_in_target(&self.core, &c)?;
                    let schema = Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]));
                    return Ok(StatementResult {
                        copy: Some(ClientCopy::In(Arc::new(target))),
                        ..rows_result(schema, vec![])
                    });
                }
                return Ok(status_result(crate::write::copy::copy_from(self.context(session), &self.core, &c).await?));
            }
            Statement::Copy(CopyStatement::To(c)) => return self.copy_to(session, principal, c).await,
            Statement::Session(s) => return self.session_statement(session, principal, s).await,
            Statement::Cluster(s) => return self.cluster_statement(s).await,
            Statement::Topic(TopicStatement::ShowTopics) => self.show_topics_plan().await?,
            Statement::Topic(s) => {
                // Run directly: DataFusion's optimizer and physical planner have nothing to do on
                // a topic statement but cost every ACK and CONSUME its CPU.
                let schema = crate::sql::plan::topic_command::output_schema(&s);
                let batch = crate::sql::exec::topic_command::run_statement(&self.core, &s, Arc::clone(&schema)).await?;
                return Ok(rows_result(schema, vec![batch]));
            }
            Statement::ExplainTopic { verbose, statement } => {
                LogicalPlanBuilder::from(extension(statement)?).explain(verbose, false)?.build()?
            }
            Statement::DataFusion(mut s) => {
                let mut defaults = Vec::new();
                let mut planned = None;
                match s.as_mut() {
                    DFStatement::Statement(st) => {
                        if let Some(result) = self.session_sql(session, principal, st.as_mut()).await? {
                            return Ok(result);
                        }
                        functions::bind_session_functions(st.as_mut(), session, identity(principal), true)?;
                        match st.as_mut() {
                            // DataFusion keeps them in the session every connection shares, and
                            // EXECUTE would run a plan authorized for whoever prepared it.
                            SqlStatement::Prepare { .. } | SqlStatement::Execute { .. } => {
                                return datafusion::common::plan_err!(
                                    "PREPARE and EXECUTE are not supported: use your driver's prepared statements (the PostgreSQL protocol's extended query) or parameters"
                                );
                            }
                            SqlStatement::Insert(insert) if session.bare_names_in_public() => {
                                let fast = literal_insert::prepare(&self.core.catalog.read(), insert)?;
                                if let Some(fast) = fast {
                                    let (schema, batches) = self.insert_rows(fast).await?;
                                    return Ok(rows_result(schema, batches));
                                }
                            }
                            SqlStatement::CreateTable(ct) => defaults = column_defaults(ct),
                            SqlStatement::Update(u) if update_from::has_from(u) => {
                                if let Some(table) = self.update_target(u) {
                                    planned = Some(update_from::plan(self.context(session), u.clone(), &table).await?);
                                }
                            }
                            _ => {}
                        }
                    }
                    DFStatement::Reset(datafusion::sql::parser::ResetStatement::Variable(name))
                        if !name.to_string().to_ascii_lowercase().starts_with("datafusion.") =>
                    {
                        return self.reset(session, &name.to_string());
                    }
                    _ => {}
                }
                let plan = match planned {
                    Some(plan) => plan,
                    None => self.context(session).state().statement_to_plan(*s).await?,
                };
                let plan = self.authorize_plan(principal, plan)?;
                if let LogicalPlan::Statement(
                    datafusion::logical_expr::Statement::SetVariable(_)
                    | datafusion::logical_expr::Statement::ResetVariable(_),
                ) = &plan
                {
                    // The session's own copy of the settings, so no other session sees it.
                    let ctx = session.ctx.get_or_insert_with(|| SessionContext::new_with_state(self.ctx.state()));
                    ctx.execute_logical_plan(plan).await?.collect().await?;
                    return Ok(status_result("SET".into()));
                }
                if let LogicalPlan::Ddl(ddl) = &plan {
                    let core = &self.core;
                    let status = match ddl {
                        DdlStatement::CreateMemoryTable(c) => {
                            let rows = match c.input.as_ref() {
                                LogicalPlan::EmptyRelation(_) => None,
                                input => {
                                    let input = ddl::ctas_input(input.clone())?;
                                    let schema = Arc::clone(input.schema());
                                    let stream = self
                                        .context(session)
                                        .execute_logical_plan(input)
                                        .await?
                                        .execute_stream()
                                        .await?;
                                    Some(ddl::InitialRows { schema, stream })
                                }
                            };
                            ddl::create_table(core, c, &defaults, rows).await?
                        }
                        DdlStatement::DropTable(d) => ddl::drop_table(core, d).await?,
                        DdlStatement::CreateCatalogSchema(c) => ddl::create_schema(core, c).await?,
                        DdlStatement::DropCatalogSchema(d) => ddl::drop_schema(core, d).await?,
                        other => return not_impl_err!("{} is not supported", other.name()),
                    };
                    return Ok(status_result(status));
                }
                plan
            }
        };
        let plan = self.authorize_plan(principal, plan)?;
        let df = self.context(session).execute_logical_plan(plan).await?;
        let schema = Arc::clone(df.schema().inner());
        let batches = df.collect().await?;
        Ok(rows_result(schema, batches))
    }

    /// The durable table an UPDATE writes, if it is one.
    fn update_target(&self, u: &topicfusion_dialect::sqlparser::ast::Update) -> Option<Arc<crate::catalog::Table>> {
        let topicfusion_dialect::sqlparser::ast::TableFactor::Table { name, .. } = &u.table.relation else {
            return None;
        };
        let (schema, table) = crate::core::resolve_name(name).ok()?;
        self.core.catalog.read().table(&schema, &table).cloned()
    }

    /// The literal INSERT fast path: the rows go straight to the write path.
    async fn insert_rows(&self, insert: LiteralInsert) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.literal_inserts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = insert.table;
        writer::check_rows_size(&insert.rows, self.core.limits.max_statement_bytes, &table)?;
        let changes = async { writer::insert_changes(&table, insert.rows) };
        let count = writer::write_statement(&self.core, &table, false, changes).await?;
        let schema = Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(UInt64Array::from(vec![count]))])?;
        Ok((schema, vec![batch]))
    }

    /// CONSUME through the engine API as `root` (the same semantics as the SQL statement).
    pub async fn consume(&self, topic: &str, request: &ConsumeRequest) -> Result<Vec<Message>> {
        self.consume_as(&Principal::root(), topic, request).await
    }

    /// CONSUME through the engine API as `principal`.
    pub async fn consume_as(
        &self,
        principal: &Principal,
        topic: &str,
        request: &ConsumeRequest,
    ) -> Result<Vec<Message>> {
        let started = Instant::now();
        let consumed = async {
            self.authorize(principal, Action::Consume)?;
            if let Some(g) = &request.group {
                check_group_name(g)?;
            }
            let topic = self.find_topic(topic)?;
            let partition = crate::topics::groups::check_partition(&topic, request.partition.map(u64::from))?;
            let request = ConsumeRequest { partition, ..request.clone() };
            self.core.groups.consume(&self.core, &topic, &request).await
        }
        .await;
        self.core.metrics.statement("CONSUME", consumed.is_ok(), started.elapsed());
        consumed
    }

    /// ACK through the engine API as `principal`: returns the group's position in the partition
    /// (its lowest offset not yet acknowledged).
    pub async fn ack_as(
        &self,
        principal: &Principal,
        topic: &str,
        group: &str,
        partition: Option<u32>,
        target: &AckTarget,
    ) -> Result<u64> {
        let started = Instant::now();
        let acked = self.ack_unrecorded(principal, topic, group, partition, target).await;
        self.core.metrics.statement("ACK", acked.is_ok(), started.elapsed());
        acked
    }

    async fn ack_unrecorded(
        &self,
        principal: &Principal,
        topic: &str,
        group: &str,
        partition: Option<u32>,
        target: &AckTarget,
    ) -> Result<u64> {
        self.authorize(principal, Action::Consume)?;
        check_group_name(group)?;
        let topic = self.find_topic(topic)?;
        let partition = crate::topics::groups::check_partition(&topic, partition.map(u64::from))?;
        if let AckTarget::Offsets(list) = target
            && (list.is_empty() || list.len() > topicfusion_dialect::MAX_ACK_OFFSETS)
        {
            return datafusion::common::plan_err!(
                "an ACK lists 1 to {} offsets, got {}",
                topicfusion_dialect::MAX_ACK_OFFSETS,
                list.len()
            );
        }
        self.core.groups.ack(&self.core.store, &topic, group, partition, target).await
    }

    /// Whether a topic (by `[schema.]name` or alias) exists.
    pub fn topic_exists(&self, topic: &str) -> bool {
        self.find_topic(topic).is_ok()
    }

    fn find_topic(&self, topic: &str) -> Result<Arc<crate::catalog::Topic>> {
        // Names from the API are taken as written (no SQL case folding), one or two parts.
        let parts: Vec<&str> = topic.split('.').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            return datafusion::common::plan_err!("invalid topic name '{topic}': expected [schema.]name");
        }
        let name = topicfusion_dialect::sqlparser::ast::ObjectName::from(
            parts
                .into_iter()
                .map(|p| topicfusion_dialect::sqlparser::ast::Ident::with_quote('"', p))
                .collect::<Vec<_>>(),
        );
        find_topic(&self.core.catalog.read(), &name)
    }

    /// Creates `root` on a new data dir and sets its password when it has none yet and one is
    /// given. Returns whether root is left without a password.
    pub fn ensure_root(&self, password: Option<&str>) -> Result<bool> {
        self.core.users.ensure_root(&self.core.store, password)
    }

    /// Checks a user's password (argon2: slow on purpose, call it from a blocking thread).
    pub fn verify_password(&self, user: &str, password: &str, loopback: bool) -> Option<Principal> {
        self.core.users.verify(user, password, loopback)
    }

    /// A user as the principal statements run as (current role), or `None` if it does not exist.
    pub fn principal(&self, name: &str) -> Option<Principal> {
        self.core.users.principal(name)
    }

    /// A stored user (its credentials included), or `None` if the user does not exist.
    pub fn user(&self, name: &str) -> Option<crate::auth::UserMeta> {
        self.core.users.get(name)
    }

    /// A user's current role and credential tag (which changes with the password), or `None`
    /// if the user does not exist.
    pub fn user_credentials(&self, user: &str) -> Option<(Principal, String)> {
        self.core.users.get(user).map(|u| (Principal { name: u.name.clone(), role: u.role() }, u.credential_tag()))
    }

    /// A secret kept in the data dir (created at first use): `len` random bytes under `name`.
    pub fn secret(&self, name: &str, len: usize) -> Result<Vec<u8>> {
        let key = keys::catalog_key(CatalogKind::Setting, name);
        if let Some(v) = self.core.store.get(&key).map_err(crate::catalog::storage_err)? {
            return Ok(v);
        }
        let mut secret = vec![0u8; len];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let mut commit = Commit::default();
        commit.batch.put(&key, &secret);
        self.core.store.commit(commit).map_err(crate::catalog::storage_err)?;
        Ok(secret)
    }

    /// Starts a shutdown: every long poll returns at once (with what it has, usually nothing)
    /// and later ones do not wait. Statements still run; drop the database to close it.
    pub fn begin_shutdown(&self) {
        self.core.groups.begin_shutdown();
        self.core.live.shutdown();
    }

    /// Syncs the write-ahead log to disk (a clean close also survives a power loss after it).
    pub fn sync_wal(&self) -> Result<()> {
        self.core.store.sync_wal().map_err(crate::catalog::storage_err)
    }

    /// Flushes memtables and waits for RocksDB's compactions to finish (blocking; benchmarks).
    pub fn settle_storage(&self) -> Result<()> {
        self.core.store.settle().map_err(crate::catalog::storage_err)
    }

    /// How many INSERT statements took the literal fast path since the database was opened.
    pub fn literal_inserts(&self) -> u64 {
        self.literal_inserts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Everything `/metrics` shows now (docs/operations.md).
    pub fn gather_metrics(&self) -> Vec<prometheus::proto::MetricFamily> {
        crate::metrics::gather(&self.core)
    }

    /// The registry `/metrics` gathers, for the server's own instruments.
    pub fn metrics_registry(&self) -> &prometheus::Registry {
        self.core.metrics.registry()
    }

    /// How many long polls are waiting on commit signals now.
    pub fn waiting_consumers(&self) -> usize {
        self.core.store.waiters()
    }
}

/// Parses SQL text: the topic dialect, or (for catalog queries only our parser refuses) the
/// PostgreSQL compatibility parser; catalog SELECTs are rewritten for DataFusion.
fn parse(sql: &str) -> Result<Vec<topicfusion_dialect::ParsedStatement>, ExecuteError> {
    let mut statements = match parse_sql(sql) {
        Ok(statements) => statements,
        // Too deep for our parser is too deep for any.
        Err(source) if source.to_string().contains("expression nesting too deep") => {
            return Err(ExecuteError::new(0, sql.to_owned(), source));
        }
        Err(source) => match crate::sql::postgres::parse_catalog_query(sql) {
            Some(Ok(statements)) => statements,
            Some(Err(e)) => return Err(ExecuteError::new(0, sql.to_owned(), e)),
            None => return Err(ExecuteError::new(0, sql.to_owned(), source)),
        },
    };
    for parsed in &mut statements {
        crate::sql::postgres::rewrite_catalog_queries(parsed);
        match &mut parsed.statement {
            Statement::DataFusion(df) => match df.as_mut() {
                DFStatement::Statement(st) => crate::sql::postgres::literals::normalize(st),
                DFStatement::Explain(e) => {
                    if let DFStatement::Statement(st) = e.statement.as_mut() {
                        crate::sql::postgres::literals::normalize(st)
                    }
                }
                _ => {}
            },
            Statement::Copy(CopyStatement::To(topicfusion_dialect::CopyTo {
                source: topicfusion_dialect::CopySource::Query(q),
                ..
            })) => crate::sql::postgres::literals::normalize_node(q.as_mut()),
            _ => {}
        }
    }
    Ok(statements)
}

/// Parses text that must hold at most one statement (a prepared statement).
fn parse_one(sql: &str) -> Result<Option<topicfusion_dialect::ParsedStatement>, ExecuteError> {
    let mut statements = parse(sql)?;
    if statements.len() > 1 {
        return Err(ExecuteError::new(
            0,
            sql.to_owned(),
            DataFusionError::Plan("cannot insert multiple commands into a prepared statement".into()),
        ));
    }
    Ok(statements.pop())
}

fn check_group_name(group: &str) -> Result<()> {
    let max = crate::topics::groups::MAX_GROUP_NAME_BYTES;
    if group.is_empty() || group.len() > max {
        return datafusion::common::plan_err!("a group name must have 1 to {max} bytes, got {}", group.len());
    }
    Ok(())
}

/// `(column, DEFAULT as SQL text)` of a CREATE TABLE, column names normalized as DataFusion does.
fn column_defaults(ct: &topicfusion_dialect::sqlparser::ast::CreateTable) -> Vec<(String, String)> {
    use topicfusion_dialect::sqlparser::ast::ColumnOption;
    ct.columns
        .iter()
        .filter_map(|c| {
            let default = c.options.iter().find_map(|o| match &o.option {
                ColumnOption::Default(e) => Some(e.to_string()),
                _ => None,
            })?;
            let name = if c.name.quote_style.is_some() { c.name.value.clone() } else { c.name.value.to_lowercase() };
            Some((name, default))
        })
        .collect()
}

fn extension(statement: TopicStatement) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Extension(Extension { node: Arc::new(TopicCommandNode::new(statement)?) }))
}

/// Who a principal is, for the run-time parameters and functions that depend on it.
pub(crate) fn identity(principal: &Principal) -> settings::Identity<'_> {
    settings::Identity { user: &principal.name, superuser: principal.role == crate::auth::Role::System }
}

/// The types of a plan's `$n` parameters: DataFusion's inference from their context, else the
/// type a cast gives them (`$1::bigint`).
fn collect_parameter_types(plan: &LogicalPlan, parameters: &mut [Option<DataType>]) -> Result<()> {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::logical_expr::{Cast, Expr};
    let slot = |name: &str| name.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1);
    for (name, ty) in plan.get_parameter_types()? {
        if let Some(p) = slot(&name).and_then(|i| parameters.get_mut(i)) {
            *p = ty;
        }
    }
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::Cast(Cast { expr, field }) = e
                    && let Expr::Placeholder(p) = expr.as_ref()
                    && let Some(slot) = slot(&p.id).and_then(|i| parameters.get_mut(i))
                    && slot.is_none()
                {
                    *slot = Some(field.data_type().clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(())
}

/// Creates the directory a `COPY ... TO '<path>'` writes into, so that a path that cannot be
/// written is a clear error naming it (DataFusion reports a failed write as an internal error
/// after the fact). Object-store URLs are left to DataFusion.
fn prepare_copy_target(url: &str) -> Result<()> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return Ok(());
    }
    let path = std::path::Path::new(path);
    // A path with an extension is one file; otherwise DataFusion writes files into the directory.
    let dir = match path.extension() {
        Some(_) => path.parent().filter(|p| !p.as_os_str().is_empty()),
        None => Some(path),
    };
    let Some(dir) = dir else { return Ok(()) };
    // A probe file: an existing directory may still refuse writes (a read-only mount, /proc).
    let probe = dir.join(format!(".topicfusion-copy-probe-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::File::create(&probe))
        .and_then(|_| std::fs::remove_file(&probe))
        .or_else(|e| datafusion::common::plan_err!("COPY cannot write {url}: {e}"))
}
