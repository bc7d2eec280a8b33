//! `/metrics` in the Prometheus text format (prometheus-client): requests by endpoint and code,
//! latency histograms by endpoint (both counted by one layer around the whole router), and, read
//! at scrape time, queue depths, live workers, tasks by status, web sessions and the store's size
//! on disk. Scraping needs the server's credentials (Basic or a token, as the API) or a web
//! session, like every page.

use super::WebState;
use crate::server::params::parse_path;
use crate::server::store::Kind;
use crate::server::App;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

/// Distinct endpoint labels kept; past it a new one counts as `other`, so random paths sent by
/// anyone cannot grow the label set without bound.
const MAX_ENDPOINTS: usize = 400;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    endpoints: Mutex<HashSet<String>>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 18))
}

impl Metrics {
    pub fn new(app: Arc<App>, sessions: Arc<super::session::Sessions>) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "clearml_server_requests",
            "HTTP requests answered, by endpoint (API service.action or web route) and status code",
            requests.clone(),
        );
        registry.register(
            "clearml_server_request_duration_seconds",
            "Time to answer a request (until the response head), by endpoint",
            latency.clone(),
        );
        registry.register_collector(Box::new(StoreCollector {
            app: Arc::downgrade(&app),
            sessions: Arc::downgrade(&sessions),
        }));
        Metrics {
            registry,
            requests,
            latency,
            endpoints: Mutex::new(HashSet::new()),
        }
    }

    fn label(&self, endpoint: String) -> String {
        let mut seen = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&endpoint) {
            return endpoint;
        }
        if seen.len() >= MAX_ENDPOINTS {
            return "other".into();
        }
        seen.insert(endpoint.clone());
        endpoint
    }

    pub fn observe(&self, endpoint: String, code: u16, seconds: f64) {
        let endpoint = self.label(endpoint);
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.clone(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The layer: times every request and counts it under its endpoint and status code.
pub async fn track(State(web): State<Arc<WebState>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| format!("web {}", p.as_str()));
    let api = parse_path(req.uri().path()).map(|e| e.name());
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    let endpoint = match (route, api) {
        (Some(r), _) => r,
        // An unknown endpoint answers 404: its name is the caller's invention.
        (None, Some(_)) if code == 404 => "unknown".into(),
        (None, Some(name)) => name,
        (None, None) => "invalid_path".into(),
    };
    web.metrics
        .observe(endpoint, code, started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`.
pub async fn scrape(State(web): State<Arc<WebState>>, req: Request) -> Response {
    let headers = req.headers();
    let now = crate::host::now_ms();
    let by_session =
        super::session::cookie_sid(headers).is_some_and(|sid| web.sessions.is_live(&sid, now));
    let by_api = crate::server::auth::authenticate(&web.app.server, headers, now / 1000).is_ok();
    if !by_session && !by_api {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"clearml-agent server\"",
            )],
            "/metrics needs the server's credentials (HTTP Basic with the access key and secret)\n",
        )
            .into_response();
    }
    let Ok(text) = web.metrics.encode() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// Reads the store at scrape time.
#[derive(Debug)]
struct StoreCollector {
    app: Weak<App>,
    sessions: Weak<super::session::Sessions>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn emit<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &M,
) -> Result<(), std::fmt::Error> {
    let me = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(me)
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(app) = self.app.upgrade() else {
            return Ok(());
        };
        let now = crate::host::now_ms();
        let (depths, statuses, workers) = app.store.read(|docs| {
            let depths: BTreeMap<String, i64> = docs
                .map(Kind::Queue)
                .values()
                .map(|q| {
                    (
                        crate::server::api::str_field(q, "name").to_string(),
                        q.get("entries")
                            .and_then(serde_json::Value::as_array)
                            .map_or(0, |e| e.len() as i64),
                    )
                })
                .collect();
            let mut statuses: BTreeMap<String, i64> = BTreeMap::new();
            for t in docs.map(Kind::Task).values() {
                *statuses
                    .entry(crate::server::api::str_field(t, "status").to_string())
                    .or_default() += 1;
            }
            let workers = docs
                .map(Kind::Worker)
                .values()
                .filter(|w| {
                    w.get("expires_ms")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0)
                        > now
                })
                .count() as i64;
            (depths, statuses, workers)
        });
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        for (queue, n) in depths {
            queue_depth.get_or_create(&QueueLabels { queue }).set(n);
        }
        emit(
            &mut encoder,
            "clearml_server_queue_depth",
            "Entries waiting in each queue",
            &queue_depth,
        )?;
        let tasks = Family::<StatusLabels, Gauge>::default();
        for (status, n) in statuses {
            tasks.get_or_create(&StatusLabels { status }).set(n);
        }
        emit(
            &mut encoder,
            "clearml_server_tasks",
            "Tasks by status",
            &tasks,
        )?;
        let live = Gauge::<i64>::default();
        live.set(workers);
        emit(
            &mut encoder,
            "clearml_server_workers",
            "Registered workers whose registration has not expired",
            &live,
        )?;
        let size = Gauge::<i64>::default();
        let db = app.files_root.parent().map(|d| d.join("db"));
        size.set(db.map_or(0, |d| dir_size(&d)) as i64);
        emit(
            &mut encoder,
            "clearml_server_store_size_bytes",
            "Size of the server's sled store on disk",
            &size,
        )?;
        let files = Gauge::<i64>::default();
        files.set(dir_size(&app.files_root) as i64);
        emit(
            &mut encoder,
            "clearml_server_files_size_bytes",
            "Size of the files server's stored files",
            &files,
        )?;
        let sessions = Gauge::<i64>::default();
        sessions.set(self.sessions.upgrade().map_or(0, |s| s.count(now)) as i64);
        emit(
            &mut encoder,
            "clearml_server_web_sessions",
            "Live web sessions",
            &sessions,
        )?;
        Ok(())
    }
}
