//! The server's figures for Prometheus, in the database's registry so that one scrape of
//! `GET /metrics` returns them with the engine's (docs/operations.md): HTTP requests by route
//! and status, their durations, and open PostgreSQL connections. Recorded with atomics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use topicfusion_engine::Database;

pub struct ServerMetrics {
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    pub pg_connections: IntGauge,
}

impl ServerMetrics {
    /// The server's instruments, registered in `db`'s registry. A second server on the same
    /// database (tests) keeps its own, unexported.
    pub fn register(db: &Database) -> Arc<Self> {
        let http_requests = IntCounterVec::new(
            Opts::new(
                "topicfusion_http_requests_total",
                "HTTP requests answered, by route (the endpoint's path pattern) and status code.",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "topicfusion_http_request_duration_seconds",
                "Time from an HTTP request's arrival to its response's head (a long poll's wait included), by route.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0]),
            &["route"],
        )
        .expect("valid metric");
        let pg_connections = IntGauge::new("topicfusion_pg_connections", "PostgreSQL protocol connections open now.")
            .expect("valid metric");
        let registry = db.metrics_registry();
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_seconds.clone()),
            Box::new(pg_connections.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::debug!(error = %e, "server metrics already registered for this database");
            }
        }
        Arc::new(Self { http_requests, http_seconds, pg_connections })
    }

    /// A connection counted until the guard drops.
    pub fn pg_connection(self: &Arc<Self>) -> PgConnectionGuard {
        self.pg_connections.inc();
        PgConnectionGuard(Arc::clone(self))
    }
}

/// Counts one open PostgreSQL connection.
pub struct PgConnectionGuard(Arc<ServerMetrics>);

impl Drop for PgConnectionGuard {
    fn drop(&mut self) {
        self.0.pg_connections.dec();
    }
}

/// Middleware on every route: counts the request under its route pattern (never the raw path,
/// which would make a series per topic name or file).
pub async fn record_http(State(metrics): State<Arc<ServerMetrics>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http_seconds.with_label_values(&[route.as_str()]).observe(started.elapsed().as_secs_f64());
    metrics.http_requests.with_label_values(&[route.as_str(), response.status().as_str()]).inc();
    response
}
