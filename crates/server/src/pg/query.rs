//! The statements of one PostgreSQL connection: the simple query protocol (several statements
//! per message), the extended protocol (Parse/Describe/Bind/Execute, with suspended portals),
//! and COPY with the client, all in the connection's own engine [`Session`] (its settings,
//! transaction block and cursors).
//!
//! A statement runs as the logged-in user with their current role. In the simple protocol a
//! failing statement answers with the results of the statements before it (they committed, and
//! a CONSUME among them has claimed its messages) and then the error.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_query_response};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::QueryParser;
use pgwire::api::stmt::StoredStatement;
use pgwire::api::store::{Entry, MemPortalStore, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, METADATA_USER, PgWireConnectionState, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail, CopyInResponse, CopyOutResponse};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Close, CloseComplete, Describe, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL,
    TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{EmptyQueryResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use tokio::sync::Mutex;
use topicfusion_engine::write::copy::CopyIn;
use topicfusion_engine::{
    ClientCopy, CopyFormat, Database, ExecuteError, Outcome, ParamValue, PreparedStatement, Principal, Session,
    StatementResult,
};

use super::copy::{CopyDecoder, CopyEncoder};
use super::encode::{DataRows, wire_fields};
use super::introspection;
use super::params::decode_parameter;

/// A statement error as PostgreSQL reports it, with its SQLSTATE.
pub fn statement_error(e: &ExecuteError) -> PgWireError {
    let message = match e.kind {
        topicfusion_engine::ErrorKind::Internal => {
            tracing::error!(error = %e.source, "internal error");
            "internal error: see the server log".to_owned()
        }
        _ => e.message(),
    };
    user_error(e.kind.sqlstate(), message)
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message)))
}

/// The user a connection logged in as, with their current role (a role change applies to the
/// next statement; a dropped user's connection can run nothing more).
fn principal<C: ClientInfo>(db: &Database, client: &C) -> PgWireResult<Principal> {
    let name = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
    db.principal(&name).ok_or_else(|| fatal("28000", format!("user {name} does not exist any more")))
}

/// A prepared statement: parsed once (at Parse), and what Describe says of it.
#[derive(Debug, Clone)]
pub struct Prepared {
    parsed: Option<Arc<PreparedStatement>>,
    /// asyncpg's type introspection query, answered by [`super::introspection`].
    asyncpg_types: bool,
    /// The parameter types: the client's where it gave them, else inferred, else text.
    parameters: Vec<Type>,
    columns: Option<datafusion::arrow::datatypes::SchemaRef>,
}

/// A COPY FROM STDIN in progress.
struct CopyInProgress {
    decoder: CopyDecoder,
    writer: CopyIn,
}

/// What one connection's handlers share.
pub struct Queries {
    db: Arc<Database>,
    session: Arc<Mutex<Session>>,
    copy_in: Mutex<Option<CopyInProgress>>,
    /// The names of the statements the client prepared (Parse), for `DEALLOCATE ALL`.
    statement_names: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Queries {
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            session: Arc::new(Mutex::new(Session::for_connection())),
            copy_in: Mutex::new(None),
            statement_names: Default::default(),
        }
    }

    /// Starts a COPY FROM STDIN: its handler takes the client's data from here on.
    async fn start_copy_in(&self, target: Arc<topicfusion_engine::write::copy::CopyInTarget>) -> (i8, usize) {
        let writer = self.db.copy_in(Arc::clone(&target));
        let types = writer.column_types();
        let columns = types.len();
        let decoder = CopyDecoder::new(target.format, &target.options, types);
        *self.copy_in.lock().await = Some(CopyInProgress { decoder, writer });
        (if target.format == CopyFormat::Binary { 1 } else { 0 }, columns)
    }

    /// A statement's result as a response of the extended protocol.
    async fn response(&self, result: StatementResult, format: &Format) -> PgWireResult<Response> {
        let name = result.command.name;
        match result.copy {
            Some(ClientCopy::Out { rows, format, options }) => {
                let encoder = CopyEncoder::new(Arc::clone(&result.schema), format, &options)?;
                let (code, columns) = (encoder.format_code(), encoder.columns());
                return Ok(Response::CopyOut(CopyResponse::new(code, columns, copy_out(encoder, rows.into_inner()))));
            }
            Some(ClientCopy::In(target)) => {
                let (format, columns) = self.start_copy_in(target).await;
                return Ok(Response::CopyIn(CopyResponse::new(format, columns, stream::empty())));
            }
            None => {}
        }
        match name {
            "BEGIN" => return Ok(Response::TransactionStart(Tag::new(name))),
            "COMMIT" | "ROLLBACK" => return Ok(Response::TransactionEnd(Tag::new(name))),
            "ROLLBACK TO SAVEPOINT" => return Ok(Response::Execution(Tag::new("ROLLBACK"))),
            _ => {}
        }
        Ok(match result.command.outcome {
            Outcome::Rows => {
                let fields = Arc::new(wire_fields(&result.schema, format)?);
                let mut response =
                    QueryResponse::new(Arc::clone(&fields), stream::iter(DataRows::new(fields, result.batches)));
                if name == "FETCH" || name == "SHOW" {
                    response.set_command_tag(name);
                }
                Response::Query(response)
            }
            Outcome::RowCount => {
                let rows = row_count(&result);
                let tag = if name == "INSERT" { Tag::new(name).with_oid(0) } else { Tag::new(name) };
                Response::Execution(tag.with_rows(rows))
            }
            Outcome::Status => Response::Execution(Tag::new(name)),
        })
    }

    /// `DEALLOCATE` of statements the client prepared with the extended protocol (psycopg 3
    /// evicting one from its cache, or all after DDL): drops them and returns the tag. `None`
    /// for anything else, which the engine answers (an unknown name is `26000` there).
    fn deallocate<C>(&self, client: &mut C, target: Option<Option<String>>) -> Option<Tag>
    where
        C: ClientPortalStore,
        C::PortalStore: PortalStore,
    {
        let mut names = self.statement_names.lock().unwrap_or_else(|e| e.into_inner());
        let store = client.portal_store();
        match target? {
            None => {
                for name in names.drain() {
                    store.rm_statement(&name);
                }
                Some(Tag::new("DEALLOCATE ALL"))
            }
            Some(name) => {
                if name.is_empty() || store.get_statement(&name).is_none() {
                    return None;
                }
                store.rm_statement(&name);
                names.remove(&name);
                Some(Tag::new("DEALLOCATE"))
            }
        }
    }

    /// `MOVE` on a portal of the extended protocol (asyncpg's `cursor.forward(n)`), which
    /// PostgreSQL allows since its portals and cursors share names. `None`: the text is not that.
    async fn move_portal<C>(&self, client: &mut C, text: &str) -> PgWireResult<Option<u64>>
    where
        C: ClientInfo + ClientPortalStore + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
    {
        let first = text.trim_start().split(|c: char| c.is_whitespace()).next().unwrap_or("");
        if !first.eq_ignore_ascii_case("move") {
            return Ok(None);
        }
        let Ok(mut statements) = topicfusion_engine::parse_sql(text) else { return Ok(None) };
        let Some(topicfusion_engine::ParsedStatement {
            statement:
                topicfusion_engine::Statement::Session(topicfusion_engine::SessionStatement::Fetch {
                    rows: false,
                    direction,
                    cursor,
                }),
            ..
        }) = statements.pop()
        else {
            return Ok(None);
        };
        let name = topicfusion_engine::session::cursor_name(&cursor);
        if self.session.lock().await.cursor_schema(&name).is_some() {
            return Ok(None);
        }
        let store = client.portal_store().as_any().downcast_ref::<MemPortalStore<Prepared>>();
        let Some(portal) = store.and_then(|s| s.get_portal(&cursor.value)).and_then(|e| e.value().cloned()) else {
            return Ok(None);
        };
        let Some(n) = direction.forward_rows() else {
            return Err(user_error("55000", format!("cursor can only scan forward: {direction}")));
        };
        if n == 0 {
            return Ok(Some(0));
        }
        let mut fetched = portal.fetch(if n == u64::MAX { 0 } else { n as usize }).await?;
        let mut count = 0;
        while let Some(row) = fetched.response.data_rows().next().await {
            row?;
            count += 1;
        }
        Ok(Some(count))
    }
}

/// What a `DEALLOCATE [PREPARE] name | ALL` text drops: `Some(None)` for ALL, `Some(Some(name))`
/// for one statement, `None` when the text is not one DEALLOCATE.
fn deallocate_target(text: &str) -> Option<Option<String>> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
    let first = text.trim_start().split(|c: char| c.is_whitespace()).next().unwrap_or("");
    if !first.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut statements = topicfusion_engine::parse_sql(text).ok()?;
    let (Some(parsed), true) = (statements.pop(), statements.is_empty()) else { return None };
    let topicfusion_engine::Statement::DataFusion(df) = parsed.statement else { return None };
    let DFStatement::Statement(st) = *df else { return None };
    let SqlStatement::Deallocate { name, .. } = *st else { return None };
    if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
        return Some(None);
    }
    Some(Some(topicfusion_engine::session::cursor_name(&name)))
}

/// The CopyData messages of a `COPY ... TO STDOUT` as a stream (the extended protocol's
/// response; pgwire adds the binary trailer).
fn copy_out(
    encoder: CopyEncoder,
    rows: datafusion::execution::SendableRecordBatchStream,
) -> impl futures::Stream<Item = PgWireResult<CopyData>> + Send + 'static {
    stream::unfold(Some((encoder, rows)), |state| async move {
        let (mut encoder, mut rows) = state?;
        let out = match rows.next().await {
            Some(Ok(batch)) => encoder.rows(&batch).map(|r| r.into_iter().map(Ok).collect::<Vec<_>>()),
            Some(Err(e)) => Err(user_error("XX000", e.to_string())),
            None => return encoder.leftover_start().map(|s| (vec![Ok(s)], None)),
        };
        let out = out.unwrap_or_else(|e| vec![Err(e)]);
        Some((out, Some((encoder, rows))))
    })
    .flat_map(stream::iter)
}

/// The client decodes a prepared SELECT's rows by the columns Describe gave. Execute plans the
/// statement again with the bound values, which can widen a column (`int_col + $1` is described
/// as int4, a bound integer literal makes it int8): such a column is cast back to the described
/// type (an error if a value does not fit). A column of another kind of type (a table dropped
/// and created again with other types) is PostgreSQL's `0A000`: the rows are not sent under the
/// old description. A column described without a type (`SELECT $1`) is sent as it is.
fn conform_to_description(
    described: &datafusion::arrow::datatypes::SchemaRef,
    result: &mut StatementResult,
) -> PgWireResult<()> {
    use datafusion::arrow::compute::{CastOptions, cast_with_options};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let changed = || user_error("0A000", "cached plan must not change result type".into());
    let (want, have) = (described.fields(), result.schema.fields());
    if want.len() != have.len() {
        return Err(changed());
    }
    let family = |t: &DataType| {
        if t.is_integer() {
            1
        } else if t.is_floating() {
            2
        } else if matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
            3
        } else if matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) {
            4
        } else {
            0
        }
    };
    let mut casts = Vec::new();
    for (i, (w, h)) in want.iter().zip(have.iter()).enumerate() {
        let same_on_the_wire = super::encode::pg_type(w).ok() == super::encode::pg_type(h).ok();
        if same_on_the_wire || w.data_type() == &DataType::Null {
            continue;
        }
        let (fw, fh) = (family(w.data_type()), family(h.data_type()));
        if fw == 0 || fw != fh {
            return Err(changed());
        }
        casts.push((i, w.data_type().clone()));
    }
    if casts.is_empty() {
        return Ok(());
    }
    let mut fields: Vec<Field> = have.iter().map(|f| f.as_ref().clone()).collect();
    for (i, ty) in &casts {
        fields[*i] = fields[*i].clone().with_data_type(ty.clone()).with_nullable(true);
    }
    let schema = Arc::new(Schema::new(fields));
    let options = CastOptions { safe: false, ..Default::default() };
    let mut batches = Vec::with_capacity(result.batches.len());
    for batch in &result.batches {
        let mut columns = batch.columns().to_vec();
        for (i, ty) in &casts {
            columns[*i] = cast_with_options(&columns[*i], ty, &options)
                .map_err(|e| user_error("22003", format!("a result value does not fit its described type: {e}")))?;
        }
        batches.push(
            datafusion::arrow::record_batch::RecordBatch::try_new(Arc::clone(&schema), columns)
                .map_err(|e| user_error("XX000", e.to_string()))?,
        );
    }
    result.schema = schema;
    result.batches = batches;
    Ok(())
}

/// pgwire's `send_describe_response`, feeding the messages instead of flushing each: the
/// client's Sync (or Flush) sends them with the rest of the answer in one write.
async fn feed_describe_response<C, R>(client: &mut C, response: &R) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    R: DescribeResponse,
{
    use pgwire::messages::data::{NoData, ParameterDescription, RowDescription};
    if let Some(types) = response.parameters() {
        let oids = types.iter().map(|t| t.oid()).collect();
        client.feed(PgWireBackendMessage::ParameterDescription(ParameterDescription::new(oids))).await?;
    }
    if response.is_no_data() {
        client.feed(PgWireBackendMessage::NoData(NoData::new())).await?;
    } else {
        let fields = response.fields().iter().map(Into::into).collect();
        client.feed(PgWireBackendMessage::RowDescription(RowDescription::new(fields))).await?;
    }
    Ok(())
}

fn row_count(result: &StatementResult) -> usize {
    use datafusion::arrow::array::UInt64Array;
    result
        .batches
        .iter()
        .filter_map(|b| b.columns().first()?.as_any().downcast_ref::<UInt64Array>().cloned())
        .flat_map(|a| a.iter().flatten().collect::<Vec<_>>())
        .sum::<u64>() as usize
}

fn status_text(result: &StatementResult) -> String {
    use datafusion::arrow::array::StringArray;
    result
        .batches
        .iter()
        .filter_map(|b| {
            b.columns().first()?.as_any().downcast_ref::<StringArray>()?.iter().flatten().next().map(str::to_owned)
        })
        .next()
        .unwrap_or_default()
}

async fn cancel_receiver<C: ClientInfo>(client: &C) -> Option<futures::channel::oneshot::Receiver<()>> {
    let handle = client.session_extensions().get::<Arc<ConnectionHandle>>()?;
    Some(handle.start_query().await)
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    /// Runs a simple query and sends every message of its answer: the rows or tags of each
    /// statement in order (COPY's data included), the error that stopped them, ReadyForQuery.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let text = query.query;
        let mut failed = false;
        if text.chars().all(|c| c == ';' || c.is_whitespace()) {
            client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?;
        } else {
            let cancel = cancel_receiver(client).await;
            let run = self.run_simple(client, &text);
            let outcome = match cancel {
                Some(cancel) => tokio::select! {
                    r = run => r,
                    _ = cancel => Err(PgWireError::QueryCanceled),
                },
                None => run.await,
            };
            match outcome {
                Ok(f) => failed = f,
                Err(e) => return Err(e),
            }
        }
        if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            let status = self.transaction_status(failed).await;
            client.set_state(PgWireConnectionState::ReadyForQuery);
            client.set_transaction_status(status);
            client.send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(status))).await?;
        }
        Ok(())
    }

    async fn do_query<C>(&self, _client: &mut C, _query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        unreachable!("on_query runs simple queries")
    }
}

impl Queries {
    /// The transaction status a ReadyForQuery reports: in a block (failed if a statement of it
    /// failed), or idle.
    async fn transaction_status(&self, failed: bool) -> TransactionStatus {
        match (self.session.lock().await.in_transaction(), failed) {
            (true, true) => TransactionStatus::Error,
            (true, false) => TransactionStatus::Transaction,
            (false, _) => TransactionStatus::Idle,
        }
    }

    /// Runs the statements of a simple query; returns whether one failed (its error sent).
    async fn run_simple<C>(&self, client: &mut C, text: &str) -> PgWireResult<bool>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let principal = principal(&self.db, client)?;
        if let Some(count) = self.move_portal(client, text).await? {
            send_execution_response(client, Tag::new("MOVE").with_rows(count as usize)).await?;
            return Ok(false);
        }
        if let Some(tag) = self.deallocate(client, deallocate_target(text)) {
            send_execution_response(client, tag).await?;
            return Ok(false);
        }
        if let Some(form) = super::live::live_form(text) {
            // Streams until the subscription ends or the client cancels (this future dropped).
            return match super::live::stream(client, &self.db, &principal, form).await {
                Ok(()) => Ok(false),
                Err(PgWireError::UserError(info)) => {
                    client.feed(PgWireBackendMessage::ErrorResponse((*info).into())).await?;
                    Ok(true)
                }
                Err(e) => Err(e),
            };
        }
        let outcome = {
            let mut session = self.session.lock().await;
            self.db.execute_in(&mut session, &principal, text).await
        };
        let (results, error) = match outcome {
            Ok(results) => (results, None),
            Err(mut e) => (std::mem::take(&mut e.completed), Some(e)),
        };
        for result in results {
            self.send_simple(client, result).await?;
        }
        if let Some(e) = &error {
            let info: ErrorInfo = statement_error(e).into();
            client.feed(PgWireBackendMessage::ErrorResponse(info.into())).await?;
        }
        Ok(error.is_some())
    }

    /// Sends one statement's answer in the simple protocol.
    async fn send_simple<C>(&self, client: &mut C, result: StatementResult) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if result.command.name == "ROLLBACK" || result.command.name == "ROLLBACK TO SAVEPOINT" {
            let warning = ErrorInfo::new("WARNING".into(), "25P01".into(), status_text(&result));
            client.feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(warning))).await?;
        }
        match result.copy {
            Some(ClientCopy::Out { rows, format, options }) => {
                let mut rows = rows.into_inner();
                // PostgreSQL's order: CopyOutResponse, a CopyData per row, CopyDone, then the tag.
                let mut encoder = CopyEncoder::new(Arc::clone(&result.schema), format, &options)?;
                let formats = vec![encoder.format_code() as i16; encoder.columns()];
                let response = CopyOutResponse::new(encoder.format_code(), encoder.columns() as i16, formats);
                client.send(PgWireBackendMessage::CopyOutResponse(response)).await?;
                let mut count = 0usize;
                while let Some(batch) = rows.next().await {
                    let batch = match batch {
                        Ok(b) => b,
                        Err(e) => {
                            client.send(PgWireBackendMessage::CopyFail(CopyFail::new(e.to_string()))).await?;
                            return Err(user_error("XX000", e.to_string()));
                        }
                    };
                    for row in encoder.rows(&batch)? {
                        client.feed(PgWireBackendMessage::CopyData(row)).await?;
                        count += 1;
                    }
                    client.flush().await?;
                }
                // The binary trailer; with no rows, in the same message as the header (as
                // PostgreSQL sends it: psycopg 3 reads the header with what follows it).
                let start = encoder.leftover_start();
                if format == CopyFormat::Binary {
                    let mut end = start.map(|s| s.data.to_vec()).unwrap_or_default();
                    end.extend_from_slice(&[0xFF, 0xFF]);
                    client.feed(PgWireBackendMessage::CopyData(CopyData::new(end.into()))).await?;
                } else if let Some(start) = start {
                    client.feed(PgWireBackendMessage::CopyData(start)).await?;
                }
                client.feed(PgWireBackendMessage::CopyDone(CopyDone::new())).await?;
                send_execution_response(client, Tag::new("COPY").with_rows(count)).await
            }
            Some(ClientCopy::In(target)) => {
                let (format, columns) = self.start_copy_in(target).await;
                let response = CopyInResponse::new(format, columns as i16, vec![format as i16; columns]);
                client.send(PgWireBackendMessage::CopyInResponse(response)).await?;
                client.set_state(PgWireConnectionState::CopyInProgress(false));
                Ok(())
            }
            None => match self.response(result, &Format::UnifiedText).await? {
                Response::Query(rows) => send_query_response(client, rows, true).await,
                Response::Execution(tag) | Response::TransactionStart(tag) | Response::TransactionEnd(tag) => {
                    send_execution_response(client, tag).await
                }
                _ => Ok(()),
            },
        }
    }
}

#[async_trait]
impl CopyHandler for Queries {
    async fn on_copy_data<C>(&self, _client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.copy_in.lock().await;
        let Some(copy) = guard.as_mut() else { return Ok(()) };
        let result = async {
            copy.decoder.push(&data.data);
            while let Some(rows) = copy.decoder.next_batch()? {
                copy.writer.write(rows).await.map_err(|e| user_error("22P04", e.to_string()))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // The COPY ends here; the rest of the client's data is ignored.
            guard.take();
        }
        result
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(mut copy) = self.copy_in.lock().await.take() else { return Ok(()) };
        for rows in copy.decoder.finish()? {
            copy.writer.write(rows).await.map_err(|e| user_error("22P04", e.to_string()))?;
        }
        let count = copy.writer.finish().await.map_err(|e| user_error("22P04", e.to_string()))?;
        send_execution_response(client, Tag::new("COPY").with_rows(count as usize)).await
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Rows of full chunks have committed (COPY commits in chunks); the rest is dropped.
        self.copy_in.lock().await.take();
        user_error("57014", format!("COPY from stdin failed: {}", fail.message))
    }
}

/// Parses and describes statements of the extended protocol.
pub struct Describer {
    db: Arc<Database>,
    session: Arc<Mutex<Session>>,
}

#[async_trait]
impl QueryParser for Describer {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let principal = principal(&self.db, client)?;
        if introspection::is_asyncpg_type_query(sql) {
            return Ok(Some(Prepared {
                parsed: None,
                asyncpg_types: true,
                parameters: vec![Type::OID_ARRAY],
                columns: Some(introspection::schema()),
            }));
        }
        let parsed = self.db.prepare(sql).map_err(|e| statement_error(&e))?;
        let Some(parsed) = parsed else { return Ok(None) };
        let described = {
            let mut session = self.session.lock().await;
            self.db.describe(&mut session, &principal, &parsed.parsed).await.map_err(|e| statement_error(&e))?
        };
        let parameters = (0..described.parameters.len().max(types.len()))
            .map(|i| {
                let declared = types.get(i).cloned().flatten().filter(|t| *t != Type::UNKNOWN);
                let inferred = described
                    .parameters
                    .get(i)
                    .cloned()
                    .flatten()
                    .and_then(|t| arrow_pg::datatypes::into_pg_type(&t).ok());
                declared.or(inferred).unwrap_or(Type::TEXT)
            })
            .collect();
        Ok(Some(Prepared {
            parsed: Some(Arc::new(parsed)),
            asyncpg_types: false,
            parameters,
            columns: described.columns,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.parameters.clone())
    }

    fn get_result_schema(&self, stmt: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.columns {
            Some(schema) => wire_fields(schema, format.unwrap_or(&Format::UnifiedText)),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Describer;

    fn query_parser(&self) -> Arc<Describer> {
        Arc::new(Describer { db: Arc::clone(&self.db), session: Arc::clone(&self.session) })
    }

    /// Parse, as pgwire does it, remembering the statement's name for `DEALLOCATE ALL`.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned());
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if !name.is_empty() && name != DEFAULT_NAME {
            self.statement_names.lock().unwrap_or_else(|e| e.into_inner()).insert(name);
        }
        client.feed(PgWireBackendMessage::ParseComplete(ParseComplete::new())).await?;
        Ok(())
    }

    /// Bind, as pgwire does it, but BindComplete waits in the buffer for the Execute's answer
    /// and the Sync's flush: one socket write per statement, not one per message.
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let portal = Portal::try_new(&message, statement)?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) => {
                if !message.parameters.is_empty() {
                    return Err(user_error(
                        "08P01",
                        format!(
                            "bind message supplies {} parameters, but prepared statement {statement_name:?} requires 0",
                            message.parameters.len()
                        ),
                    ));
                }
                client.portal_store().put_empty_portal(portal_name);
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client.feed(PgWireBackendMessage::BindComplete(BindComplete::new())).await?;
        Ok(())
    }

    /// Close of a statement also forgets its name.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                self.statement_names.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
            }
            TARGET_TYPE_BYTE_PORTAL => client.portal_store().rm_portal(name),
            _ => {}
        }
        client.feed(PgWireBackendMessage::CloseComplete(CloseComplete::new())).await?;
        Ok(())
    }

    /// Describe: also of a cursor declared with SQL (`DECLARE c CURSOR ...`), which PostgreSQL
    /// describes as a portal of the same name (psycopg's server-side cursors ask so).
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == TARGET_TYPE_BYTE_PORTAL
            && let Some(name) = message.name.as_deref()
            && client.portal_store().get_portal(name).is_none()
            && let Some(schema) = self.session.lock().await.cursor_schema(name)
        {
            let fields = wire_fields(&schema, &Format::UnifiedText)?;
            return feed_describe_response(client, &DescribePortalResponse::new(fields)).await;
        }
        // pgwire's own, with the answer fed (the Sync or Flush after it sends it).
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => match client.portal_store().get_statement(name) {
                Some(Entry::Value(stmt)) => {
                    let response = self.do_describe_statement(client, &stmt).await?;
                    feed_describe_response(client, &response).await
                }
                Some(Entry::Empty) => feed_describe_response(client, &DescribeStatementResponse::no_data()).await,
                None => Err(PgWireError::StatementNotFound(name.to_owned())),
            },
            TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
                Some(Entry::Value(portal)) => {
                    let response = self.do_describe_portal(client, &portal).await?;
                    feed_describe_response(client, &response).await
                }
                Some(Entry::Empty) => feed_describe_response(client, &DescribePortalResponse::no_data()).await,
                None => Err(PgWireError::PortalNotFound(name.to_owned())),
            },
            other => Err(PgWireError::InvalidTargetType(other)),
        }
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        if prepared.asyncpg_types {
            let raw = portal.parameters.first().cloned().flatten();
            let oids = introspection::oids(raw.as_deref(), portal.parameter_format.is_binary(0))?;
            let principal = principal(&self.db, client)?;
            let batch = {
                let mut session = self.session.lock().await;
                introspection::answer(&self.db, &mut session, &principal, &oids).await?
            };
            let fields = Arc::new(wire_fields(&batch.schema(), &portal.result_column_format)?);
            let rows = DataRows::new(Arc::clone(&fields), vec![batch]);
            return Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows))));
        }
        let Some(parsed) = &prepared.parsed else { return Ok(Response::EmptyQuery) };
        if let Some(tag) = self.deallocate(client, deallocate_target(&parsed.parsed.sql)) {
            return Ok(Response::Execution(tag));
        }
        let params = (0..portal.parameters.len())
            .map(|i| decode_parameter(portal, i, prepared.parameters.get(i).unwrap_or(&Type::TEXT)))
            .collect::<PgWireResult<Vec<ParamValue>>>()?;
        let principal = principal(&self.db, client)?;
        let result = {
            let mut session = self.session.lock().await;
            self.db.execute_prepared(&mut session, &principal, parsed, &params).await
        };
        let mut result = result.map_err(|e| statement_error(&e))?;
        if let Some(described) = &prepared.columns
            && !described.fields().is_empty()
            && result.command.outcome == Outcome::Rows
            && result.copy.is_none()
        {
            conform_to_description(described, &mut result)?;
        }
        if result.command.name == "ROLLBACK" || result.command.name == "ROLLBACK TO SAVEPOINT" {
            let warning = ErrorInfo::new("WARNING".into(), "25P01".into(), status_text(&result));
            client.feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(warning))).await?;
        }
        self.response(result, &portal.result_column_format).await
    }
}
