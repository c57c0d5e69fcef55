//! `SUBSCRIBE` over the PostgreSQL protocol (docs/live-queries.md): a simple query holding one
//! `SUBSCRIBE` statement streams result rows (`op`, `position`, then the selected columns) as
//! commits happen, each commit's rows flushed at once; `COPY (SUBSCRIBE ...) TO STDOUT [WITH
//! (...)]` streams the same rows as COPY data, which psql prints as they arrive. Either runs
//! until the client cancels it (a cancel request: psql's Ctrl-C) or the subscription ends
//! (then an error says why and where to resume).

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use futures::{Sink, SinkExt};
use pgwire::api::ClientInfo;
use pgwire::api::portal::Format;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::CopyOutResponse;
use pgwire::messages::data::RowDescription;
use topicfusion_engine::{
    CopyFormat, CopyOptions, CopyStatement, Database, LiveEnd, LiveRow, Principal, Statement, Subscription, parse_sql,
};

use super::copy::CopyEncoder;
use super::encode::{DataRows, wire_fields};

/// How a simple query streams a subscription.
pub enum LiveForm {
    /// `SUBSCRIBE ...`: a row result that never completes.
    Rows(String),
    /// `COPY (SUBSCRIBE ...) TO STDOUT [options]`: COPY data that never completes.
    Copy(String, CopyOptions),
}

/// Whether a simple query is one `SUBSCRIBE` (or a `COPY` of one) to stream.
pub fn live_form(text: &str) -> Option<LiveForm> {
    let trimmed = text.trim().trim_end_matches(';').trim_end();
    if starts_with_word(trimmed, "subscribe") {
        let mut parsed = parse_sql(trimmed).ok()?;
        let last = parsed.pop()?;
        let one = parsed.is_empty() && matches!(last.statement, Statement::Subscribe(_));
        return one.then(|| LiveForm::Rows(trimmed.to_owned()));
    }
    // COPY ( SUBSCRIBE ... ) TO STDOUT ...: the options are parsed by the dialect's COPY, on the
    // same text with the subscription replaced.
    if !starts_with_word(trimmed, "copy") {
        return None;
    }
    let rest = trimmed["copy".len()..].trim_start();
    let inner = rest.strip_prefix('(')?;
    let close = matching_paren(inner)?;
    let (query, tail) = (inner[..close].trim(), &inner[close + 1..]);
    if !starts_with_word(query, "subscribe") {
        return None;
    }
    let Statement::Copy(CopyStatement::To(copy)) = parse_sql(&format!("COPY (SELECT 1) {tail}")).ok()?.pop()?.statement
    else {
        return None;
    };
    Some(LiveForm::Copy(query.to_owned(), copy.options))
}

/// Whether `text` starts with the ASCII word `word`, in any case (compared as bytes: the text may
/// hold any UTF-8 after it).
fn starts_with_word(text: &str, word: &str) -> bool {
    text.as_bytes().get(..word.len()).is_some_and(|b| b.eq_ignore_ascii_case(word.as_bytes()))
}

/// The index of the `)` closing an already opened `(` in `text` (parentheses inside quoted
/// strings and identifiers do not count).
fn matching_paren(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => return Some(i),
            (None, ')') => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Streams a subscription to the client until it ends (an error) or the query is cancelled
/// (the caller drops this future).
pub async fn stream<C>(client: &mut C, db: &Arc<Database>, principal: &Principal, form: LiveForm) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let sql = match &form {
        LiveForm::Rows(sql) | LiveForm::Copy(sql, _) => sql.clone(),
    };
    let (db, who) = (Arc::clone(db), principal.clone());
    let subscribed = tokio::spawn(async move { db.subscribe(&who, &sql, None, None).await })
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let mut subscription = subscribed.map_err(|e| super::query::statement_error(&e))?;
    let schema = subscription.schema();
    let mut gone = std::pin::pin!(client_gone(client.session_extensions().get::<super::PeerSocket>()));
    match form {
        LiveForm::Rows(_) => {
            let fields = Arc::new(wire_fields(&schema, &Format::UnifiedText)?);
            let description = RowDescription::new(fields.iter().map(Into::into).collect());
            client.send(PgWireBackendMessage::RowDescription(description)).await?;
            loop {
                let rows = tokio::select! {
                    rows = next_rows(&mut subscription) => rows?,
                    () = &mut gone => return Err(client_went_away()),
                };
                for row in DataRows::new(Arc::clone(&fields), vec![batch(&subscription, &schema, &rows)?]) {
                    client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                }
                client.flush().await?;
            }
        }
        LiveForm::Copy(_, options) => {
            let format = options.format.unwrap_or(CopyFormat::Text);
            let mut encoder = CopyEncoder::new(Arc::clone(&schema), format, &options)?;
            let formats = vec![encoder.format_code() as i16; encoder.columns()];
            let response = CopyOutResponse::new(encoder.format_code(), encoder.columns() as i16, formats);
            client.send(PgWireBackendMessage::CopyOutResponse(response)).await?;
            if let Some(start) = encoder.leftover_start() {
                client.send(PgWireBackendMessage::CopyData(start)).await?;
            }
            loop {
                // An end is an ErrorResponse in the middle of the COPY, as PostgreSQL ends a
                // failing COPY TO (no CopyDone).
                let rows = tokio::select! {
                    rows = next_rows(&mut subscription) => rows?,
                    () = &mut gone => return Err(client_went_away()),
                };
                for data in encoder.rows(&batch(&subscription, &schema, &rows)?)? {
                    client.feed(PgWireBackendMessage::CopyData(data)).await?;
                }
                client.flush().await?;
            }
        }
    }
}

/// Returns once the client closed (or reset) its connection: a read of a duplicate of the
/// socket's descriptor that peeks at the end of the stream. A streaming client sends nothing (a
/// cancel comes on a connection of its own), so while it is there this waits; if it does send
/// bytes (they stay unread for the connection) it is not watched further. Without a descriptor
/// (none could be duplicated) it never returns.
async fn client_gone(peer: Option<Arc<super::PeerSocket>>) {
    let watched = peer.and_then(|p| {
        // SAFETY: the descriptor is the socket of the connection whose statement is running
        // (this future lives within it), which stays open until the connection's loop ends;
        // it is only duplicated here, and the duplicate is owned.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(p.0) };
        let socket = std::net::TcpStream::from(fd.try_clone_to_owned().ok()?);
        // Non-blocking already (the flag is shared by both descriptors); set for tokio's sake.
        socket.set_nonblocking(true).ok()?;
        tokio::net::TcpStream::from_std(socket).ok()
    });
    if let Some(socket) = watched {
        match socket.peek(&mut [0u8; 1]).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

fn client_went_away() -> PgWireError {
    PgWireError::IoError(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the client closed its connection"))
}

/// The next rows (the snapshot's end has none); the end as an error with the SQLSTATE of its
/// kind (a cancel request is 57014, query_canceled).
async fn next_rows(subscription: &mut Subscription) -> PgWireResult<Vec<LiveRow>> {
    subscription.next_rows().await.map_err(|e| match &e {
        DataFusionError::External(inner) if let Some(end) = inner.downcast_ref::<LiveEnd>() => {
            let (code, message) = (end.kind().sqlstate().into(), end.to_string());
            PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code, message)))
        }
        _ => PgWireError::ApiError(Box::new(e)),
    })
}

fn batch(subscription: &Subscription, schema: &SchemaRef, rows: &[LiveRow]) -> PgWireResult<RecordBatch> {
    subscription.batch(schema, rows).map_err(|e| PgWireError::ApiError(Box::new(e)))
}
