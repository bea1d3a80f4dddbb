//! `galley registry serve`: the folder layout over HTTP (axum), plus the two writes a team
//! needs: publish and yank, each behind a bearer token that owns namespaces. Reads carry an
//! ETag (the content's SHA-256) and answer `If-None-Match` with 304. Uploads are capped; the
//! folder registry's per-package lock keeps concurrent publishes from corrupting an index.
//!
//! Facing the network: a client gets `header_timeout` to send its request headers and
//! `request_timeout` for the whole request (a slow upload included), at most
//! `max_connections` are served at once (the rest wait in the kernel's accept queue), and
//! tokens are compared in constant time, with the same answer for an unknown token as for one
//! that does not own the namespace.

use crate::error::RegistryError;
use crate::index::{PackageName, Release};
use crate::store::FileRegistry;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The registry folder.
    pub root: PathBuf,
    /// Bearer token -> namespaces it may publish to and yank in.
    pub tokens: BTreeMap<String, Vec<String>>,
    /// The largest upload accepted, in bytes.
    pub max_upload: usize,
    pub limits: ServerLimits,
}

/// What one client may hold of the server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Time to send a request's headers (a client that never finishes them is dropped).
    pub header_timeout: Duration,
    /// Time for a whole request, body included (408 after it).
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            // A 64 MiB upload at 1 MB/s.
            request_timeout: Duration::from_secs(120),
            max_connections: 256,
        }
    }
}

impl ServerConfig {
    /// Reads a tokens file: one `TOKEN NAMESPACE[,NAMESPACE...]` per line.
    pub fn load_tokens(
        path: &std::path::Path,
    ) -> Result<BTreeMap<String, Vec<String>>, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::error::io(path, e))?;
        let mut out = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (token, ns) =
                line.split_once(char::is_whitespace)
                    .ok_or_else(|| RegistryError::BadFile {
                        path: path.into(),
                        reason: format!("line {}: expected `TOKEN NAMESPACE[,NAMESPACE]`", i + 1),
                    })?;
            out.insert(
                token.to_string(),
                ns.trim().split(',').map(|s| s.trim().to_string()).collect(),
            );
        }
        Ok(out)
    }
}

struct AppState {
    cfg: ServerConfig,
    registry: FileRegistry,
}

type Shared = Arc<AppState>;

/// Serves until the listener fails. Bind to loopback unless a proxy with TLS is in front.
pub async fn serve(listener: tokio::net::TcpListener, cfg: ServerConfig) -> std::io::Result<()> {
    let (max, limits) = (cfg.max_upload, cfg.limits.clone());
    let state = Arc::new(AppState {
        registry: FileRegistry::open(cfg.root.clone()),
        cfg,
    });
    let app = Router::new()
        .route("/index/{ns}/{file}", get(index))
        .route("/blobs/sha256/{file}", get(blob))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/yank", post(yank))
        .route("/api/v1/search", get(search))
        .layer(DefaultBodyLimit::max(max))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .with_state(state);
    // axum::serve has no header timeout or connection limit, so connections are served here.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!("registry server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("registry server: connection ended: {e}");
            }
        });
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

fn etagged(headers: &HeaderMap, bytes: Vec<u8>, content_type: &'static str) -> Response {
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        StatusCode::OK,
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, content_type.to_string()),
        ],
        bytes,
    )
        .into_response()
}

async fn index(
    State(s): State<Shared>,
    Path((ns, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // Names are validated before they touch the file system: no traversal, no odd characters.
    let Some(name) = file
        .strip_suffix(".jsonl")
        .and_then(|n| PackageName::parse(&format!("{ns}/{n}")).ok())
    else {
        return text(StatusCode::NOT_FOUND, "no such package");
    };
    match tokio::fs::read(s.registry.root().join(name.index_path())).await {
        Ok(bytes) => etagged(&headers, bytes, "application/jsonl"),
        Err(_) => text(StatusCode::NOT_FOUND, format!("no package {name}")),
    }
}

async fn blob(State(s): State<Shared>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(hex) = file.strip_suffix(".wasm").filter(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }) else {
        return text(StatusCode::NOT_FOUND, "no such blob");
    };
    match tokio::fs::read(
        s.registry
            .root()
            .join("blobs/sha256")
            .join(format!("{hex}.wasm")),
    )
    .await
    {
        Ok(bytes) => etagged(&headers, bytes, "application/wasm"),
        Err(_) => text(StatusCode::NOT_FOUND, "no such blob"),
    }
}

/// Whether the request's bearer token owns `ns`: the refusal (401 or 403) when not. Every
/// known token is compared, in constant time over their SHA-256s (so neither the length nor
/// a prefix of a token leaks through timing), and an unknown token gets the very answer a
/// known one gets for a namespace it does not own.
fn authorize(s: &AppState, headers: &HeaderMap, ns: &str) -> Option<Response> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Some(text(StatusCode::UNAUTHORIZED, "a bearer token is required"));
    };
    let presented = Sha256::digest(token.as_bytes());
    let mut owns = subtle::Choice::from(0);
    for (known, spaces) in &s.cfg.tokens {
        let same = Sha256::digest(known.as_bytes()).ct_eq(&presented);
        let allowed = u8::from(spaces.iter().any(|n| n == ns || n == "*"));
        owns |= same & subtle::Choice::from(allowed);
    }
    if bool::from(owns) {
        return None;
    }
    Some(text(
        StatusCode::FORBIDDEN,
        format!("this token may not publish to or yank in namespace `{ns}`"),
    ))
}

fn status_of(e: &RegistryError) -> StatusCode {
    match e {
        RegistryError::AlreadyPublished { .. } => StatusCode::CONFLICT,
        RegistryError::NoPackage(_) => StatusCode::NOT_FOUND,
        RegistryError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn publish(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(line) = headers
        .get("x-galley-release")
        .and_then(|v| v.to_str().ok())
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing x-galley-release header (the signed index line)",
        );
    };
    let release: Release = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad release line: {e}")),
    };
    if let Some(r) = authorize(&s, &headers, &release.name.namespace) {
        return r;
    }
    if release.yanked {
        return text(StatusCode::BAD_REQUEST, "a new release cannot be yanked");
    }
    let state = s.clone();
    let result = tokio::task::spawn_blocking(move || {
        state.registry.publish(&release, &body).map(|_| release)
    })
    .await;
    match result {
        Ok(Ok(r)) => text(
            StatusCode::CREATED,
            format!("published {}@{}", r.name, r.version),
        ),
        Ok(Err(e)) => text(status_of(&e), e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct YankRequest {
    name: String,
    version: semver::Version,
    yanked: bool,
    /// The publisher's signed record (installers ignore an unsigned yank of a signed release).
    #[serde(default)]
    record: Option<crate::index::YankRecord>,
}

async fn yank(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let req: YankRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad yank request: {e}")),
    };
    let name = match PackageName::parse(&req.name) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Some(r) = authorize(&s, &headers, &name.namespace) {
        return r;
    }
    let state = s.clone();
    let result = tokio::task::spawn_blocking(move || {
        state
            .registry
            .set_yanked(&name, &req.version, req.yanked, req.record)
    })
    .await;
    match result {
        Ok(Ok(())) => text(StatusCode::OK, "ok"),
        Ok(Err(e)) => text(status_of(&e), e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

async fn search(State(s): State<Shared>, Query(q): Query<SearchQuery>) -> Response {
    let state = s.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<serde_json::Value>, RegistryError> {
        let mut out = Vec::new();
        for name in state.registry.search(&q.q)? {
            let releases = state.registry.releases(&name)?;
            let versions: Vec<String> = releases.iter().filter(|r| !r.yanked).map(|r| r.version.to_string()).collect();
            let kind = releases.last().map(|r| r.kind.to_string());
            out.push(serde_json::json!({"name": name.to_string(), "kind": kind, "versions": versions}));
        }
        Ok(out)
    })
    .await;
    match found {
        Ok(Ok(v)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&v).unwrap_or_default(),
        )
            .into_response(),
        Ok(Err(e)) => text(status_of(&e), e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
