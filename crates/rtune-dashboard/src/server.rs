//! `rtune dashboard`: an HTTP server (axum) for one or more experiment directories.
//!
//! One watcher task per experiment reads what its files gained (by byte offset, see
//! [`crate::tail`]) every `interval` and broadcasts the change; each browser holds one
//! server-sent-events stream per experiment, which starts with the whole snapshot and then
//! carries the changes. The snapshot is taken and the stream subscribed under the same lock the
//! watcher holds while it refreshes and broadcasts, so nothing is lost or sent twice.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::DashboardError;
use crate::experiment::Experiment;
use crate::importance::{ForestOptions, importance};
use crate::model;
use crate::page::{self, PageData};
use crate::tail::Tail;

/// How `rtune dashboard` serves.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub dirs: Vec<PathBuf>,
    pub bind: IpAddr,
    /// 0: a free port.
    pub port: u16,
    /// How often the files are looked at for new lines.
    pub interval: Duration,
    /// Require this token (`?token=`) on every request. `rtune dashboard` makes one when bound
    /// beyond the loopback interface.
    pub token: Option<String>,
}

struct Watched {
    experiment: Mutex<Experiment>,
    updates: broadcast::Sender<Arc<str>>,
}

struct Hub {
    experiments: Vec<Watched>,
    token: Option<String>,
}

fn lock(w: &Watched) -> MutexGuard<'_, Experiment> {
    // A panic while refreshing leaves the data as it was; keep serving it.
    w.experiment
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Open the experiments and bind the address; `on_ready` gets the page's URL. Serves until
/// `shutdown` completes.
pub async fn serve(
    options: ServeOptions,
    on_ready: impl FnOnce(&str),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DashboardError> {
    let mut experiments = Vec::new();
    for dir in &options.dirs {
        let experiment = Experiment::open(dir)?;
        let (updates, _) = broadcast::channel(1024);
        experiments.push(Watched {
            experiment: Mutex::new(experiment),
            updates,
        });
    }
    let hub = Arc::new(Hub {
        experiments,
        token: options.token.clone(),
    });
    let address = SocketAddr::new(options.bind, options.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| DashboardError::Bind {
            address: address.to_string(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| DashboardError::Bind {
            address: address.to_string(),
            source,
        })?;
    for index in 0..hub.experiments.len() {
        tokio::spawn(watch(hub.clone(), index, options.interval));
    }
    let url = match &options.token {
        Some(token) => format!("http://{local}/?token={token}"),
        None => format!("http://{local}/"),
    };
    on_ready(&url);
    axum::serve(listener, router(hub))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| DashboardError::Io {
            action: "serve on",
            path: PathBuf::from(local.to_string()),
            source,
        })
}

async fn watch(hub: Arc<Hub>, index: usize, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let hub2 = hub.clone();
        // File reading is blocking: off the async threads.
        let done = tokio::task::spawn_blocking(move || {
            let Some(w) = hub2.experiments.get(index) else {
                return;
            };
            let mut experiment = lock(w);
            match experiment.refresh() {
                Ok(update) if !update.is_empty() => match serde_json::to_string(&update) {
                    Ok(text) => {
                        // No receivers is fine: nobody is looking.
                        let _ = w.updates.send(Arc::from(text));
                    }
                    Err(e) => tracing::error!("cannot encode an update: {e}"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!("{}: {e}", experiment.dir().display()),
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!("the watcher of experiment {index} failed: {e}");
        }
    }
}

fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/experiments", get(experiments))
        .route("/api/events/{exp}", get(events))
        .route("/api/importance/{exp}", get(importance_of))
        .route("/api/trial/{exp}/{trial}", get(trial_info))
        .route("/files/{exp}/{trial}/{file}", get(trial_file))
        .layer(middleware::from_fn_with_state(hub.clone(), check_token))
        .with_state(hub)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn check_token(
    State(hub): State<Arc<Hub>>,
    Query(query): Query<TokenQuery>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &hub.token
        && query.token.as_deref() != Some(expected.as_str())
    {
        return (
            StatusCode::FORBIDDEN,
            "this dashboard needs its token: open the URL `rtune dashboard` printed (…?token=…)\n",
        )
            .into_response();
    }
    next.run(request).await
}

async fn index(State(hub): State<Arc<Hub>>) -> Html<String> {
    let title = hub
        .experiments
        .iter()
        .map(|w| lock(w).header().name)
        .collect::<Vec<_>>()
        .join(", ");
    Html(page::render(
        &title,
        PageData::Live {
            token: hub.token.as_deref(),
        },
    ))
}

async fn experiments(State(hub): State<Arc<Hub>>) -> Response {
    let list: Vec<_> = hub
        .experiments
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let e = lock(w);
            let header = e.header();
            json!({"index": i, "name": header.name, "dir": header.dir, "started_at": header.started_at})
        })
        .collect();
    axum::Json(list).into_response()
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

async fn events(State(hub): State<Arc<Hub>>, Path(exp): Path<usize>) -> Response {
    if exp >= hub.experiments.len() {
        return not_found(format!("no experiment {exp}"));
    }
    let hub2 = hub.clone();
    let first = tokio::task::spawn_blocking(move || {
        let w = &hub2.experiments[exp];
        let experiment = lock(w);
        let receiver = w.updates.subscribe();
        (serde_json::to_string(&experiment.snapshot()), receiver)
    })
    .await;
    let (snapshot, receiver) = match first {
        Ok((Ok(text), receiver)) => (text, receiver),
        Ok((Err(e), _)) => return server_error(e.to_string()),
        Err(e) => return server_error(e.to_string()),
    };
    let head = tokio_stream::once(Ok::<Event, std::convert::Infallible>(
        Event::default().event("snapshot").data(snapshot),
    ));
    let rest = BroadcastStream::new(receiver).map(|item| {
        Ok::<Event, std::convert::Infallible>(match item {
            Ok(text) => Event::default().event("update").data(&*text),
            // This browser fell behind: it must start over from a snapshot.
            Err(_) => Event::default().event("lagged").data("{}"),
        })
    });
    Sse::new(head.chain(rest))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn server_error(message: String) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
}

async fn importance_of(State(hub): State<Arc<Hub>>, Path(exp): Path<usize>) -> Response {
    if exp >= hub.experiments.len() {
        return not_found(format!("no experiment {exp}"));
    }
    let result = tokio::task::spawn_blocking(move || {
        let experiment = lock(&hub.experiments[exp]);
        let values = experiment.final_values();
        importance(
            &values,
            &experiment.header().parameters,
            ForestOptions::default(),
        )
    })
    .await;
    match result {
        Ok(importance) => axum::Json(json!({ "importance": importance })).into_response(),
        Err(e) => server_error(e.to_string()),
    }
}

async fn trial_info(
    State(hub): State<Arc<Hub>>,
    Path((exp, trial)): Path<(usize, u32)>,
) -> Response {
    let Some(w) = hub.experiments.get(exp) else {
        return not_found(format!("no experiment {exp}"));
    };
    let dir = lock(w).dir().join(model::trial_dir_name(trial));
    let result = tokio::task::spawn_blocking(move || {
        let files: Vec<_> = model::TRIAL_FILES
            .iter()
            .filter_map(|name| {
                let meta = std::fs::metadata(dir.join(name)).ok()?;
                Some(json!({"name": name, "size": meta.len()}))
            })
            .collect();
        let stderr_tail = Tail::last_bytes(&dir.join("stderr.log"), 4096).unwrap_or_default();
        let error = Tail::last_bytes(&dir.join("error.txt"), 8192).unwrap_or_default();
        json!({"dir": dir.display().to_string(), "files": files, "stderr_tail": stderr_tail, "error": error})
    })
    .await;
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => server_error(e.to_string()),
    }
}

async fn trial_file(
    State(hub): State<Arc<Hub>>,
    Path((exp, trial, file)): Path<(usize, u32, String)>,
) -> Response {
    let Some(w) = hub.experiments.get(exp) else {
        return not_found(format!("no experiment {exp}"));
    };
    // Only the trial files the page links to: no path from the request reaches the disk.
    let Some(name) = model::TRIAL_FILES.iter().find(|n| **n == file) else {
        return not_found(format!("{file} is not a trial file the dashboard shows"));
    };
    let path = lock(w).dir().join(model::trial_dir_name(trial)).join(name);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut response = bytes.into_response();
            let kind = if name.ends_with(".json") {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            response
        }
        Err(e) => not_found(format!("{}: {e}", path.display())),
    }
}

/// A random token for a dashboard reachable beyond this machine (from the OS's random source).
pub fn new_token() -> Result<String, DashboardError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(DashboardError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
