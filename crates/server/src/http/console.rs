//! The web console (docs/operations.md): three static files under `crates/server/console/`,
//! compiled into the binary (no separate web server, no build step, nothing fetched at run time),
//! served at `/console/`. They need no login to load; everything they show comes from the API
//! with the user's token.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

use super::{ApiError, ErrorCode};

const INDEX: &str = include_str!("../../console/index.html");
const APP: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/style.css");

/// The console's pages load only its own files and talk only to this server.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

pub async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

pub async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => serve("text/javascript; charset=utf-8", APP),
        "style.css" => serve("text/css; charset=utf-8", STYLE),
        "index.html" => serve("text/html; charset=utf-8", INDEX),
        _ => ApiError::new(ErrorCode::NotFound, "no such console file").into_response(),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new server version serves new files: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
