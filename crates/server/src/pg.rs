//! The PostgreSQL wire protocol (pgwire): psql, pgbench and Postgres drivers run the whole
//! dialect over `[server] pg_listen`. Login is SCRAM-SHA-256 against the same users as HTTP
//! (TLS when `pg_tls_cert`/`pg_tls_key` are set); every statement runs as the logged-in user on
//! the engine runtime, checked by the engine's role rule. Simple and extended query protocols:
//! the extended one describes statements (parameter types inferred by DataFusion, result
//! columns) and binds `$n` parameters as literals. A cancel request (or a closed connection)
//! ends a statement at its next await point: a waiting CONSUME returns nothing.
//!
//! There are no multi-statement transactions: the engine accepts `BEGIN` and `COMMIT` so
//! drivers work, every statement commits on its own, and `ROLLBACK` arrives with a warning that
//! nothing was undone.

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::array::{Array, StringArray, UInt64Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Sink, SinkExt, stream};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, METADATA_USER, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::response::NoticeResponse;
use pgwire::tokio::tokio_rustls::TlsAcceptor;
use tokio::runtime::Handle;
use topicfusion_engine::users::SCRAM_ITERATIONS;
use topicfusion_engine::{Database, ExecuteError, Outcome, ParamValue, Principal, StatementResult};

/// What every PostgreSQL connection shares.
pub struct PgState {
    pub db: Arc<Database>,
    /// The runtime statements run on (as for HTTP requests).
    pub engine: Handle,
    pub tls: Option<TlsAcceptor>,
    /// The server certificate (PEM), for SCRAM's channel binding under TLS.
    pub cert_pem: Option<Vec<u8>>,
    pub connections: Arc<ConnectionManager>,
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve_connection(state: Arc<PgState>, socket: tokio::net::TcpStream) {
    let tls = state.tls.clone();
    let handlers = ConnectionHandlers::new(state);
    if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
        tracing::debug!(error = %e, "postgres connection ended with an error");
    }
}

/// The handlers of one connection (the SASL handler keeps the connection's login state).
struct ConnectionHandlers {
    state: Arc<PgState>,
    startup: Arc<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
    queries: Arc<Queries>,
}

impl ConnectionHandlers {
    fn new(state: Arc<PgState>) -> Self {
        let mut scram = ScramAuth::new(Arc::new(Credentials(Arc::clone(&state.db))));
        scram.set_iterations(SCRAM_ITERATIONS as usize);
        if let Some(pem) = &state.cert_pem
            && let Err(e) = scram.configure_certificate(pem)
        {
            tracing::warn!(error = %e, "SCRAM channel binding is off: the certificate could not be read");
        }
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.6 (topicfusion {})", env!("CARGO_PKG_VERSION"));
        parameters.is_superuser = false;
        let startup = SASLAuthStartupHandler::new(Arc::new(parameters))
            .with_scram(scram)
            .with_connection_manager(Arc::clone(&state.connections));
        let queries = Arc::new(Queries { db: Arc::clone(&state.db), engine: state.engine.clone() });
        Self { state, startup: Arc::new(startup), queries }
    }
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(DefaultCancelHandler::new(Arc::clone(&self.state.connections)))
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LoginErrors)
    }
}

/// Names the user of the connection in a failed login (SCRAM's own user field is empty with
/// libpq), and logs it.
struct LoginErrors;

impl ErrorHandler for LoginErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        if let PgWireError::InvalidPassword(_) = error {
            let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
            tracing::warn!(user = %user, peer = %client.socket_addr(), "failed PostgreSQL login");
            let message = format!("password authentication failed for user \"{user}\"");
            *error = PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), "28P01".into(), message)));
        }
    }
}

/// The SCRAM credentials of the database's users.
struct Credentials(Arc<Database>);

impl Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials")
    }
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let name = login.user().unwrap_or_default();
        let Some(user) = self.0.user(name) else {
            // An unknown user fails exactly like a wrong password.
            return Ok(Password::new(Some(random_bytes()), random_bytes()));
        };
        let credential = user.scram.as_ref().filter(|c| c.iterations == SCRAM_ITERATIONS).and_then(|c| c.decode());
        match credential {
            Some((salt, salted_password)) => Ok(Password::new(Some(salt), salted_password)),
            None if user.password_hash.is_empty() => Err(fatal(
                "28P01",
                format!(
                    "user {name} has no password: set [auth] root_password (or TOPICFUSION_ROOT_PASSWORD) to log in over the PostgreSQL protocol"
                ),
            )),
            None => Err(fatal(
                "28P01",
                format!(
                    "user {name} has no SCRAM-SHA-256 credential yet (created before the PostgreSQL protocol): set the password again with ALTER USER {name} SET PASSWORD '...' over HTTP"
                ),
            )),
        }
    }
}

fn random_bytes() -> Vec<u8> {
    use rand_core::RngCore;
    let mut b = vec![0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    b
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message)))
}

/// The engine's error as a PostgreSQL error with its SQLSTATE.
fn statement_error(e: ExecuteError) -> PgWireError {
    let message = match e.kind {
        topicfusion_engine::ErrorKind::Internal => {
            tracing::error!(error = %e.source, "internal error");
            "internal error: see the server log".to_owned()
        }
        _ => e.source.to_string(),
    };
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), e.kind.sqlstate().into(), message)))
}

/// The user a connection logged in as, with their current role (a role change applies to the
/// next statement; a dropped user's connection can run nothing more).
fn principal<C: ClientInfo>(db: &Database, client: &C) -> PgWireResult<Principal> {
    let name = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
    match db.principal(&name) {
        Some(principal) => Ok(principal),
        None => Err(fatal("28000", format!("user {name} does not exist any more"))),
    }
}

/// Runs statements for one connection.
struct Queries {
    db: Arc<Database>,
    engine: Handle,
}

/// Runs `work` on the engine runtime; dropping the future (cancel request, closed connection)
/// aborts it at its next await point.
async fn run_on_engine<T: Send + 'static>(
    engine: &Handle,
    work: impl Future<Output = T> + Send + 'static,
) -> PgWireResult<T> {
    crate::bridge::run_on(engine, work).await.map_err(|e| {
        tracing::error!(error = %e, "engine task failed");
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "XX000".into(),
            "internal error: see the server log".into(),
        )))
    })
}

/// A statement's result as a PostgreSQL response. BEGIN and COMMIT change the transaction
/// status drivers track; ROLLBACK also warns that nothing was undone.
async fn response<C>(client: &mut C, result: StatementResult, format: &Format) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let name = result.command.name;
    match name {
        "BEGIN" => return Ok(Response::TransactionStart(Tag::new(name))),
        "COMMIT" => return Ok(Response::TransactionEnd(Tag::new(name))),
        "ROLLBACK" => {
            let status = status_text(&result.batches);
            let warning = ErrorInfo::new("WARNING".into(), "25P01".into(), status);
            client.send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(warning))).await?;
            return Ok(Response::TransactionEnd(Tag::new(name)));
        }
        _ => {}
    }
    match result.command.outcome {
        Outcome::Rows => rows_response(&result.schema, result.batches, format),
        Outcome::RowCount => {
            let rows = row_count(&result.batches);
            let tag = if name == "INSERT" { Tag::new(name).with_oid(0) } else { Tag::new(name) };
            Ok(Response::Execution(tag.with_rows(rows)))
        }
        Outcome::Status => Ok(Response::Execution(Tag::new(name))),
    }
}

fn status_text(batches: &[RecordBatch]) -> String {
    batches
        .iter()
        .filter_map(|b| {
            b.columns().first()?.as_any().downcast_ref::<StringArray>()?.iter().flatten().next().map(str::to_owned)
        })
        .next()
        .unwrap_or_default()
}

fn row_count(batches: &[RecordBatch]) -> usize {
    batches
        .iter()
        .filter_map(|b| b.columns().first()?.as_any().downcast_ref::<UInt64Array>().cloned())
        .flat_map(|a| a.iter().flatten().collect::<Vec<_>>())
        .sum::<u64>() as usize
}

fn rows_response(schema: &SchemaRef, batches: Vec<RecordBatch>, format: &Format) -> PgWireResult<Response> {
    let schema = wire_schema(schema);
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, None)?);
    let mut rows = Vec::new();
    for batch in batches {
        let batch = wire_batch(&schema, batch)?;
        rows.extend(encode_recordbatch(Arc::clone(&fields), batch));
    }
    Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows))))
}

/// The schema as sent: PostgreSQL has no unsigned types, so the engine's `UInt64` columns
/// (offsets, ids, counts) go as `bigint` (a value above 2^63-1 is an error) rather than as
/// `numeric`, which drivers would hand out as decimals.
fn wire_schema(schema: &SchemaRef) -> SchemaRef {
    if !schema.fields().iter().any(|f| f.data_type() == &DataType::UInt64) {
        return Arc::clone(schema);
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::UInt64 => Arc::new(f.as_ref().clone().with_data_type(DataType::Int64)),
            _ => Arc::clone(f),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn wire_batch(schema: &SchemaRef, batch: RecordBatch) -> PgWireResult<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let options = CastOptions { safe: false, ..Default::default() };
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast_with_options(c, f.data_type(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| PgWireError::ApiError(Box::new(e)))
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let principal = principal(&self.db, client)?;
        let (db, sql) = (Arc::clone(&self.db), query.to_owned());
        let results = run_on_engine(&self.engine, async move { db.execute_as(&principal, &sql).await }).await?;
        let mut responses = Vec::new();
        for result in results.map_err(statement_error)? {
            responses.push(response(client, result, &Format::UnifiedText).await?);
        }
        Ok(responses)
    }
}

/// A prepared statement: its text and what Describe says of it.
#[derive(Debug, Clone)]
pub struct Prepared {
    sql: String,
    /// The parameter types: the client's where it gave them, else inferred, else text.
    parameters: Vec<Type>,
    columns: Option<SchemaRef>,
}

/// Parses and describes statements of the extended protocol.
pub struct Describer {
    db: Arc<Database>,
    engine: Handle,
}

#[async_trait]
impl QueryParser for Describer {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let principal = principal(&self.db, client)?;
        let (db, text) = (Arc::clone(&self.db), sql.to_owned());
        let described = run_on_engine(&self.engine, async move { db.describe(&principal, &text).await })
            .await?
            .map_err(statement_error)?;
        let Some(d) = described else { return Ok(None) };
        let parameters = (0..d.parameters.len().max(types.len()))
            .map(|i| {
                let declared = types.get(i).cloned().flatten().filter(|t| *t != Type::UNKNOWN);
                let inferred = d.parameters.get(i).cloned().flatten().and_then(|t| into_pg_type(&t).ok());
                declared.or(inferred).unwrap_or(Type::TEXT)
            })
            .collect();
        Ok(Some(Prepared { sql: sql.to_owned(), parameters, columns: d.columns.as_ref().map(wire_schema) }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.parameters.clone())
    }

    fn get_result_schema(&self, stmt: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.columns {
            Some(schema) => arrow_schema_to_pg_fields(schema, format.unwrap_or(&Format::UnifiedText), None),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Describer;

    fn query_parser(&self) -> Arc<Describer> {
        Arc::new(Describer { db: Arc::clone(&self.db), engine: self.engine.clone() })
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let params = (0..portal.parameters.len())
            .map(|i| decode_parameter(portal, i, prepared.parameters.get(i).unwrap_or(&Type::TEXT)))
            .collect::<PgWireResult<Vec<_>>>()?;
        let principal = principal(&self.db, client)?;
        let (db, sql) = (Arc::clone(&self.db), prepared.sql.clone());
        let result =
            run_on_engine(&self.engine, async move { db.execute_with_params(&principal, &sql, &params).await }).await?;
        match result.map_err(statement_error)? {
            Some(result) => response(client, result, &portal.result_column_format).await,
            None => Ok(Response::EmptyQuery),
        }
    }
}

/// Parameter `i` of a portal (text or binary) as a value for the engine, by its type.
fn decode_parameter(portal: &Portal<Prepared>, i: usize, ty: &Type) -> PgWireResult<ParamValue> {
    let bad = |what: &str| {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "22P02".into(),
            format!("parameter ${}: {what}", i + 1),
        )))
    };
    macro_rules! get {
        ($t:ty) => {
            portal.parameter::<$t>(i, ty).map_err(|e| bad(&format!("invalid {} value: {e}", ty.name())))?
        };
    }
    let value = match *ty {
        Type::BOOL => get!(bool).map(ParamValue::Bool),
        Type::INT2 => get!(i16).map(|v| ParamValue::Int(v.into())),
        Type::INT4 => get!(i32).map(|v| ParamValue::Int(v.into())),
        Type::INT8 => get!(i64).map(ParamValue::Int),
        Type::FLOAT4 => get!(f32).map(|v| ParamValue::Float(v.into())),
        Type::FLOAT8 => get!(f64).map(ParamValue::Float),
        Type::NUMERIC => get!(rust_decimal::Decimal).map(|d| ParamValue::Numeric(d.to_string())),
        Type::BYTEA => get!(Vec<u8>).map(ParamValue::Bytes),
        Type::DATE => get!(chrono::NaiveDate).map(|d| ParamValue::Text(d.to_string())),
        Type::TIMESTAMP => {
            get!(chrono::NaiveDateTime).map(|t| ParamValue::Text(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()))
        }
        Type::TIMESTAMPTZ => get!(chrono::DateTime<chrono::FixedOffset>).map(|t| ParamValue::Text(t.to_rfc3339())),
        Type::JSON | Type::JSONB => get!(serde_json::Value).map(|v| ParamValue::Text(v.to_string())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => get!(String).map(ParamValue::Text),
        // Other types sent as text go in as text literals, cast by their context.
        _ if !portal.parameter_format.is_binary(i) => match portal.parameters.get(i).cloned().flatten() {
            Some(raw) => Some(ParamValue::Text(String::from_utf8(raw.to_vec()).map_err(|_| bad("not UTF-8 text"))?)),
            None => None,
        },
        _ => return Err(bad(&format!("type {} is not supported in binary format; send it as text", ty.name()))),
    };
    Ok(value.unwrap_or(ParamValue::Null))
}
