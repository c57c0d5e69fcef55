//! `Database`: opens a data dir and executes SQL text (one or more `;`-separated statements,
//! standard and topic statements mixed) in order, each statement atomic. `Send + Sync`: share
//! it between tokio tasks with an `Arc`.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result, not_impl_err};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::{DdlStatement, Extension, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::Analyzer;
use topicfusion_dialect::{Statement, TopicStatement, parse_sql};
use topicfusion_storage::{Durability, Message, Store};

use crate::catalog::{Catalog, DEFAULT_SCHEMA, storage_err};
use crate::cdc::router::compile_route;
use crate::core::Core;
use crate::ddl;
use crate::groups::{ConsumeRequest, Groups};
use crate::plan::table_write::TableWriteRule;
use crate::plan::topic_command::TopicCommandNode;
use crate::planner::TopicQueryPlanner;
use crate::provider::catalog::DurableCatalog;
use crate::topics::find_topic;

/// How a database is opened.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    pub durability: Durability,
    /// The default claim length of a group CONSUME.
    pub visibility_timeout_ms: u64,
    /// DataFusion's parallelism (default: the number of cores).
    pub target_partitions: Option<usize>,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self { durability: Durability::Process, visibility_timeout_ms: 60_000, target_partitions: None }
    }
}

/// The result of one statement.
#[derive(Debug, Clone)]
pub struct StatementResult {
    /// The statement's SQL text.
    pub sql: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// A statement failed; the statements before it have committed, the ones after it did not run.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct ExecuteError {
    /// 1-based position of the failing statement in the SQL text (0: the text did not parse).
    pub statement: usize,
    pub sql: String,
    #[source]
    pub source: DataFusionError,
}

pub struct Database {
    core: Arc<Core>,
    ctx: SessionContext,
}

impl Database {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, options: DatabaseOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = Arc::new(Store::open(dir, options.durability).map_err(storage_err)?);
        let expr_ctx = SessionContext::new();
        let catalog = Catalog::load(&store, |meta, st| {
            meta.routes
                .iter()
                .map(|r| match st.table_by_id(r.table_id) {
                    Some(t) => compile_route(&expr_ctx, r.clone(), t),
                    None => datafusion::common::exec_err!("route of topic {} names a missing table", meta.name),
                })
                .collect()
        })?;
        let core = Arc::new(Core {
            store,
            catalog,
            groups: Groups::new(options.visibility_timeout_ms),
            ddl_lock: tokio::sync::RwLock::new(()),
            expr_ctx,
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
        analyzer_rules.push(Arc::new(TableWriteRule));
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_analyzer_rules(analyzer_rules)
            .with_query_planner(Arc::new(TopicQueryPlanner::new(Arc::clone(&core))))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog("datafusion", Arc::new(DurableCatalog::new(Arc::clone(&core))));
        Ok(Self { core, ctx })
    }

    /// Executes every statement of `sql` in order and returns their results; stops at the first
    /// failing statement.
    pub async fn execute(&self, sql: &str) -> Result<Vec<StatementResult>, ExecuteError> {
        let statements = parse_sql(sql).map_err(|source| ExecuteError { statement: 0, sql: sql.to_owned(), source })?;
        let mut out = Vec::with_capacity(statements.len());
        for (i, parsed) in statements.into_iter().enumerate() {
            let sql = parsed.sql.clone();
            match self.execute_statement(parsed.statement).await {
                Ok((schema, batches)) => out.push(StatementResult { sql, schema, batches }),
                Err(source) => return Err(ExecuteError { statement: i + 1, sql, source }),
            }
        }
        Ok(out)
    }

    async fn execute_statement(&self, statement: Statement) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let plan = match statement {
            Statement::Topic(TopicStatement::ShowTopics) => {
                let sql = "SELECT name, alias, partitions, retention_seconds, retention_max_bytes FROM system.topics ORDER BY name";
                self.ctx.state().create_logical_plan(sql).await?
            }
            Statement::Topic(s) => extension(s)?,
            Statement::ExplainTopic { verbose, statement } => {
                LogicalPlanBuilder::from(extension(statement)?).explain(verbose, false)?.build()?
            }
            Statement::DataFusion(s) => {
                let plan = self.ctx.state().statement_to_plan(*s).await?;
                if let LogicalPlan::Ddl(ddl) = &plan {
                    let core = &self.core;
                    let status = match ddl {
                        DdlStatement::CreateMemoryTable(c) => ddl::create_table(core, c).await?,
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
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema = Arc::clone(df.schema().inner());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }

    /// CONSUME through the engine API (the same semantics as the SQL statement).
    pub async fn consume(&self, topic: &str, request: &ConsumeRequest) -> Result<Vec<Message>> {
        let name = topicfusion_dialect::sqlparser::ast::ObjectName::from(
            topic.split('.').map(topicfusion_dialect::sqlparser::ast::Ident::new).collect::<Vec<_>>(),
        );
        let topic = find_topic(&self.core.catalog.read(), &name)?;
        self.core.groups.consume(&self.core.store, &topic, request).await
    }
}

fn extension(statement: TopicStatement) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Extension(Extension { node: Arc::new(TopicCommandNode::new(statement)?) }))
}

fn status_result(status: String) -> (SchemaRef, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![Field::new("status", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vec![status]))])
        .expect("one string column");
    (schema, vec![batch])
}
