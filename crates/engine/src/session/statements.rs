//! The statements that act on a session rather than on data: `BEGIN` / `COMMIT` / `ROLLBACK`,
//! `SET` / `SHOW` / `RESET` of PostgreSQL's run-time parameters, `DISCARD ALL`, `DECLARE` /
//! `FETCH` / `MOVE` / `CLOSE` of cursors, `UNLISTEN`, and `COPY ... TO STDOUT` (a query whose
//! rows the interface sends as they come). `SET datafusion.*` and `SHOW datafusion.*` are DataFusion's own and are
//! planned as usual (in the session's own copy of the settings).

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::planner::object_name_to_table_reference;
use topicfusion_dialect::sqlparser::ast::{
    self as sql, CloseCursor, DiscardObject, Expr, Set, Statement as SqlStatement, TransactionIsolationLevel,
    TransactionMode, Value,
};
use topicfusion_dialect::{CopySource, CopyTo, SessionStatement};

use super::{Cursor, Session};
use crate::auth::Principal;
use crate::database::{Database, identity};
use crate::session::settings;
use crate::statement::{ClientCopy, StatementResult, count_result, rows_result, status_result};

/// The most savepoints one transaction block holds (they cost memory and undo nothing).
const MAX_SAVEPOINTS: usize = 10_000;

/// The name a cursor is known by: unquoted names are lowercased, as PostgreSQL does.
pub fn cursor_name(ident: &sql::Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

/// A `SET` value as text: `'a'`, `a`, `1`, and lists (`SET search_path TO a, b`).
fn set_value(values: &[Expr]) -> Result<Option<String>> {
    let mut parts = Vec::with_capacity(values.len());
    for v in values {
        let text = match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                    s.clone()
                }
                Value::Number(n, _) => n.clone(),
                Value::Boolean(b) => if *b { "on" } else { "off" }.to_owned(),
                Value::Null => return plan_err!("SET does not take NULL: use DEFAULT"),
                other => other.to_string(),
            },
            Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") => {
                return Ok(None);
            }
            Expr::Identifier(i) => i.value.clone(),
            Expr::UnaryOp { op: sql::UnaryOperator::Minus, expr } => {
                format!("-{}", set_value(std::slice::from_ref(expr))?.unwrap_or_default())
            }
            other => return plan_err!("SET takes constants, not {other}"),
        };
        parts.push(text);
    }
    Ok(Some(parts.join(", ")))
}

fn isolation_name(level: &TransactionIsolationLevel) -> &'static str {
    match level {
        TransactionIsolationLevel::ReadUncommitted => "read uncommitted",
        TransactionIsolationLevel::ReadCommitted => "read committed",
        TransactionIsolationLevel::RepeatableRead => "repeatable read",
        TransactionIsolationLevel::Serializable => "serializable",
        TransactionIsolationLevel::Snapshot => "snapshot",
    }
}

impl Database {
    /// Runs `st` if it acts on the session (else `None`: plan it as usual).
    pub(crate) async fn session_sql(
        &self,
        session: &mut Session,
        principal: &Principal,
        st: &mut SqlStatement,
    ) -> Result<Option<StatementResult>> {
        let who = identity(principal);
        let result = match st {
            // No multi-statement transactions: accepted so that drivers work.
            SqlStatement::StartTransaction { .. } => {
                session.in_transaction = true;
                status_result(
                    "topicfusion has no multi-statement transactions: every statement commits on its own".into(),
                )
            }
            SqlStatement::Commit { .. } => {
                session.end_transaction();
                status_result(
                    "topicfusion has no multi-statement transactions: every statement commits on its own".into(),
                )
            }
            // Savepoints are names in the transaction block; nothing is undone by ROLLBACK TO
            // (every statement has committed), as ROLLBACK says too.
            SqlStatement::Savepoint { name } => {
                if !session.in_transaction {
                    return plan_err!("SAVEPOINT can only be used in transaction blocks");
                }
                if session.savepoints.len() >= MAX_SAVEPOINTS {
                    return plan_err!("not supported: more than {MAX_SAVEPOINTS} savepoints in one transaction block");
                }
                session.savepoints.push(cursor_name(name));
                status_result("SAVEPOINT".into())
            }
            SqlStatement::ReleaseSavepoint { name } => {
                session.back_to_savepoint(&cursor_name(name), "RELEASE SAVEPOINT")?;
                session.savepoints.pop();
                status_result("RELEASE".into())
            }
            SqlStatement::Rollback { savepoint: Some(name), .. } => {
                session.back_to_savepoint(&cursor_name(name), "ROLLBACK TO SAVEPOINT")?;
                status_result(
                    "topicfusion has no multi-statement transactions: every statement since the savepoint has committed on its own and none was rolled back".into(),
                )
            }
            // Over HTTP there are no protocol-level prepared statements to drop (the PostgreSQL
            // interface drops a named one before it gets here).
            SqlStatement::Deallocate { name, .. } => {
                if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                    status_result("DEALLOCATE ALL".into())
                } else {
                    return plan_err!("prepared statement \"{}\" does not exist", name.value);
                }
            }
            SqlStatement::Rollback { .. } => {
                session.end_transaction();
                status_result(
                    "topicfusion has no multi-statement transactions: every statement since BEGIN has committed on its own and none was rolled back".into(),
                )
            }
            SqlStatement::Set(set) => return self.set(session, set).await,
            SqlStatement::ShowVariable { variable } => {
                let name = settings::canonical_name(&variable.iter().map(|v| v.value.clone()).collect::<Vec<_>>());
                if name.to_ascii_lowercase().starts_with("datafusion.") || name.eq_ignore_ascii_case("all") {
                    return Ok(None);
                }
                let Some((column, value)) = settings::show(session, &name, who) else {
                    return plan_err!("unrecognized configuration parameter \"{name}\"");
                };
                let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
                let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vec![value]))])?;
                rows_result(schema, vec![batch])
            }
            SqlStatement::Discard { object_type } => {
                if *object_type == DiscardObject::ALL {
                    if session.in_transaction {
                        return plan_err!("DISCARD ALL cannot run inside a transaction block");
                    }
                    session.reset();
                    session.close(None)?;
                }
                status_result(format!("DISCARD {object_type}"))
            }
            SqlStatement::Declare { stmts } => {
                let [declare] = stmts.as_mut_slice() else {
                    return plan_err!("DECLARE takes one cursor");
                };
                let (Some([name]), Some(query)) = (Some(declare.names.as_slice()), declare.for_query.take()) else {
                    return plan_err!("not supported: DECLARE of a variable (only DECLARE name CURSOR FOR query)");
                };
                let hold = declare.hold == Some(true);
                if !hold && !session.in_transaction {
                    return plan_err!("DECLARE CURSOR can only be used in transaction blocks (or WITH HOLD)");
                }
                if declare.scroll == Some(true) {
                    return plan_err!("not supported: SCROLL cursors (cursors read forward only)");
                }
                let name = cursor_name(name);
                if session.cursors.contains_key(&name) {
                    return plan_err!("cursor \"{name}\" already exists");
                }
                let mut query = SqlStatement::Query(query);
                crate::session::functions::bind_session_functions(&mut query, session, who, true)?;
                let plan =
                    self.context(session).state().statement_to_plan(DFStatement::Statement(Box::new(query))).await?;
                let cursor = self.open_cursor(session, principal, plan, hold).await?;
                session.declare(name, cursor)?;
                status_result("DECLARE CURSOR".into())
            }
            SqlStatement::Close { cursor } => {
                match cursor {
                    CloseCursor::All => session.close(None)?,
                    CloseCursor::Specific { name } => session.close(Some(&cursor_name(name)))?,
                }
                status_result("CLOSE CURSOR".into())
            }
            _ => return Ok(None),
        };
        Ok(Some(result))
    }

    /// `SET`: PostgreSQL's run-time parameters in the session; DataFusion's own (`datafusion.*`)
    /// are planned (`None`).
    async fn set(&self, session: &mut Session, set: &Set) -> Result<Option<StatementResult>> {
        match set {
            Set::SingleAssignment { variable, values, .. } => {
                let name = variable.to_string();
                if name.to_ascii_lowercase().starts_with("datafusion.") {
                    return Ok(None);
                }
                settings::set(session, &name, set_value(values)?.as_deref())?;
            }
            Set::SetTimeZone { value, .. } => {
                settings::set(session, "TimeZone", set_value(std::slice::from_ref(value))?.as_deref())?;
            }
            Set::SetNames { charset_name, .. } => {
                settings::set(session, "client_encoding", Some(&charset_name.value))?;
            }
            Set::SetTransaction { modes, session: whole_session, .. } => {
                for mode in modes {
                    match mode {
                        TransactionMode::IsolationLevel(level) => {
                            let name =
                                if *whole_session { "default_transaction_isolation" } else { "transaction_isolation" };
                            settings::set(session, name, Some(isolation_name(level)))?;
                        }
                        TransactionMode::AccessMode(sql::TransactionAccessMode::ReadOnly) => {
                            return plan_err!("not supported: read-only transactions");
                        }
                        TransactionMode::AccessMode(_) => {}
                    }
                }
            }
            other => return plan_err!("not supported: {other}"),
        }
        Ok(Some(status_result("SET".into())))
    }

    /// `RESET name` / `RESET ALL` of PostgreSQL's run-time parameters (`RESET ALL` also resets
    /// DataFusion's settings of the session).
    pub(crate) fn reset(&self, session: &mut Session, name: &str) -> Result<StatementResult> {
        if name.eq_ignore_ascii_case("all") {
            session.reset();
        } else {
            settings::reset(session, name)?;
        }
        Ok(status_result("RESET".into()))
    }

    /// Starts a query whose rows a cursor reads as they are fetched.
    async fn open_cursor(
        &self,
        session: &Session,
        principal: &Principal,
        plan: datafusion::logical_expr::LogicalPlan,
        hold: bool,
    ) -> Result<Cursor> {
        let ctx = self.context(session);
        let plan = self.authorize_plan(principal, plan)?;
        let df = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::clone(df.schema().inner());
        Ok(Cursor::new(schema, df.execute_stream().await?, hold))
    }

    /// `FETCH`, `MOVE`, `DECLARE ... CURSOR FOR SUBSCRIBE`, `UNLISTEN`.
    pub(crate) async fn session_statement(
        &self,
        session: &mut Session,
        principal: &Principal,
        statement: SessionStatement,
    ) -> Result<StatementResult> {
        match statement {
            // This server never LISTENs, so there is nothing to stop listening to.
            SessionStatement::Unlisten { .. } => Ok(status_result("UNLISTEN".into())),
            SessionStatement::DeclareSubscribe { cursor, hold, binary, scroll, subscribe } => {
                if !session.live_cursors {
                    return Err(crate::database::subscribe_elsewhere());
                }
                if binary || scroll {
                    let what = if binary { "BINARY" } else { "SCROLL" };
                    return plan_err!("not supported: {what} cursors over a live query (they read forward, as text)");
                }
                if !hold && !session.in_transaction {
                    return plan_err!("DECLARE CURSOR can only be used in transaction blocks (or WITH HOLD)");
                }
                let name = cursor_name(&cursor);
                // Checked before the subscription starts (its snapshot may wait for a turn).
                session.can_declare(&name)?;
                let sql = subscribe.to_string();
                let (snapshot, from) = (subscribe.snapshot, subscribe.from_position);
                let subscription = self.start_live_query(principal, &sql, subscribe.query, snapshot, from).await?;
                session.declare(name, Cursor::live(subscription.into_stream(), hold))?;
                Ok(status_result("DECLARE CURSOR".into()))
            }
            SessionStatement::Fetch { rows, direction, cursor } => {
                let name = cursor_name(&cursor);
                let cursor = session.cursor(&name)?;
                let Some(n) = direction.forward_rows() else {
                    return exec_err!(
                        "cursor can only scan forward: {direction} needs a SCROLL cursor, which this server does not have"
                    );
                };
                let schema = Arc::clone(&cursor.schema);
                let (batches, count) = cursor.read(n, rows).await?;
                Ok(if rows { rows_result(schema, batches) } else { count_result(count) })
            }
        }
    }

    /// `COPY { table | (query) } TO STDOUT`: opens the query as a cursor the interface reads.
    pub(crate) async fn copy_to(
        &self,
        session: &mut Session,
        principal: &Principal,
        copy: CopyTo,
    ) -> Result<StatementResult> {
        let plan = match copy.source {
            CopySource::Query(q) => {
                let mut query = SqlStatement::Query(q);
                crate::session::functions::bind_session_functions(&mut query, session, identity(principal), true)?;
                self.context(session).state().statement_to_plan(DFStatement::Statement(Box::new(query))).await?
            }
            CopySource::Table { table, columns } => {
                let table = self.context(session).table(object_name_to_table_reference(table, true)?).await?;
                let table = if columns.is_empty() {
                    table
                } else {
                    let names: Vec<String> = columns.iter().map(cursor_name).collect();
                    table.select_columns(&names.iter().map(String::as_str).collect::<Vec<_>>())?
                };
                table.into_unoptimized_plan()
            }
        };
        let plan = self.authorize_plan(principal, plan)?;
        let df = self.context(session).execute_logical_plan(plan).await?;
        let schema = Arc::clone(df.schema().inner());
        let rows = df.execute_stream().await?;
        let format = copy.options.format(&topicfusion_dialect::CopyEndpoint::Client);
        Ok(StatementResult {
            copy: Some(ClientCopy::Out { rows: crate::statement::RowStream::new(rows), format, options: copy.options }),
            ..rows_result(schema, vec![])
        })
    }
}
