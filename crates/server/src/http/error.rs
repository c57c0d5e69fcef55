//! `ApiError`: the one error shape of the HTTP API, `{"error":{"code","message"}}`, and the one
//! match that maps each class of error to its status. Internal errors are logged with their
//! details; the client gets a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use topicfusion_engine::{ErrorKind, ExecuteError, one_line};

/// The longest message an error carries; longer ones are cut (inputs can be megabytes).
pub const MAX_MESSAGE_CHARS: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON, a missing or wrong field, a bad value.
    BadRequest,
    /// SQL that does not parse.
    SyntaxError,
    /// A statement that parsed but failed (unknown table, constraint, bad value).
    StatementFailed,
    /// No credentials, or wrong ones.
    Unauthorized,
    /// The caller's role does not allow it.
    Forbidden,
    /// An unknown topic or route.
    NotFound,
    /// The body is over `max_body_bytes`.
    PayloadTooLarge,
    /// Too many failed logins queued for a user name or address.
    TooManyRequests,
    /// A write sent to a cluster node that is not the leader; the message names the leader
    /// (421 Misdirected Request: the same request succeeds there).
    NotLeader,
    /// A failure of the server itself.
    Internal,
    /// A request forwarded to the cluster's leader that got no answer from it: it may or may
    /// not have run there.
    LeaderUnanswered,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::SyntaxError | ErrorCode::StatementFailed => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotLeader => StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::LeaderUnanswered => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::SyntaxError => "syntax_error",
            ErrorCode::StatementFailed => "statement_failed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Internal => "internal",
            ErrorCode::LeaderUnanswered => "leader_unanswered",
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For `/v1/api/sql`: the 1-based number of the failing statement (earlier ones committed).
    pub statement: Option<usize>,
    /// For `/v1/api/sql`: the results of the statements before the failing one.
    pub completed: Option<Box<serde_json::value::RawValue>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: one_line(&message.into(), MAX_MESSAGE_CHARS), statement: None, completed: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// An internal failure: logged in full, reported as a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error: see the server log")
    }

    /// A statement error of the engine, classified by its kind.
    pub fn from_execute(e: ExecuteError) -> Self {
        let message = e.message();
        let mut err = match e.kind {
            ErrorKind::Syntax => Self::new(ErrorCode::SyntaxError, message),
            ErrorKind::PermissionDenied => Self::new(ErrorCode::Forbidden, message),
            ErrorKind::ReadOnly => Self::new(ErrorCode::NotLeader, message),
            // Logged whole: the cause with DataFusion's context (which rule failed).
            ErrorKind::Internal => Self::internal(&e.source),
            _ => Self::new(ErrorCode::StatementFailed, message),
        };
        if e.statement > 0 {
            err.statement = Some(e.statement);
        }
        err
    }

    /// An engine error outside a SQL statement (consume, ack).
    pub fn from_engine(e: datafusion::error::DataFusionError) -> Self {
        let message = e.to_string();
        match ErrorKind::of(&e) {
            ErrorKind::PermissionDenied => Self::new(ErrorCode::Forbidden, message),
            ErrorKind::ReadOnly => Self::new(ErrorCode::NotLeader, message),
            ErrorKind::Internal => Self::internal(message),
            _ => Self::bad_request(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(n) = self.statement {
            error["statement"] = json!(n);
        }
        let body = match &self.completed {
            Some(results) => json!({ "error": error, "results": results }),
            None => json!({ "error": error }),
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if self.code == ErrorCode::NotLeader && self.completed.is_none() {
            // Nothing of the request was done here: the leader may run all of it.
            response.extensions_mut().insert(crate::http::forward::Forwardable);
        }
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer, Basic realm=\"topicfusion\""),
            );
        }
        response
    }
}
