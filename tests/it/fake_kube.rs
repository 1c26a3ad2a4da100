//! A small Kubernetes API server for the MaaS CRDs: list and `watch=true` streams with resource
//! versions, bookmarks, `410 Gone` for compacted history, and watches it can drop or break.
//! It speaks the API server's real wire protocol, so kube-rs's reflectors run unmodified.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::channel::mpsc;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

const GROUP_VERSION: &str = "maas.opendatahub.io/v1alpha1";
pub const TOKEN: &str = "fake-service-account-token";

/// The three CRDs this server knows: (plural, kind).
const RESOURCES: [(&str, &str); 3] = [
    ("maasmodelrefs", "MaaSModelRef"),
    ("maassubscriptions", "MaaSSubscription"),
    ("maasauthpolicies", "MaaSAuthPolicy"),
];

fn kind_of(plural: &str) -> Option<&'static str> {
    RESOURCES
        .iter()
        .find(|(candidate, _)| *candidate == plural)
        .map(|(_, kind)| *kind)
}

fn plural_of(kind: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|(_, candidate)| *candidate == kind)
        .map(|(plural, _)| *plural)
        .unwrap_or_else(|| panic!("unknown kind {kind}"))
}

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    plural: &'static str,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Objects {
    resource_version: u64,
    /// (plural, namespace, name) → object.
    items: BTreeMap<(&'static str, String, String), Value>,
    history: Vec<Change>,
    /// A watch from an older resource version than this gets 410 Gone.
    oldest_resumable: u64,
    uids: u64,
}

struct Shared {
    objects: Mutex<Objects>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch cleanly.
    drops: watch::Sender<u64>,
    /// Bumped to abort every open watch mid-stream (a connection error, not a clean end).
    breaks: watch::Sender<u64>,
    /// Bumped to send every open watch `410 Gone` (history compacted).
    expiries: watch::Sender<u64>,
    /// While true, list requests wait.
    lists_held: watch::Sender<bool>,
    /// Answer every request with 500 while set.
    failing: AtomicBool,
    lists: Mutex<HashMap<&'static str, usize>>,
    watches: Mutex<HashMap<&'static str, usize>>,
}

/// The running server.
pub struct FakeKube {
    pub url: String,
    pub token_file: tempfile::NamedTempFile,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKube {
    /// Serves `objects` (full manifests: apiVersion, kind, metadata.name/namespace, spec).
    pub async fn start(objects: &[Value]) -> Self {
        let shared = Arc::new(Shared {
            objects: Mutex::new(Objects::default()),
            changes: broadcast::channel(1024).0,
            drops: watch::channel(0).0,
            breaks: watch::channel(0).0,
            expiries: watch::channel(0).0,
            lists_held: watch::channel(false).0,
            failing: AtomicBool::new(false),
            lists: Mutex::default(),
            watches: Mutex::default(),
        });
        for object in objects {
            record(&shared, object.clone(), false);
        }
        let router = Router::new()
            .route(
                "/apis/maas.opendatahub.io/v1alpha1/{plural}",
                get(cluster_wide),
            )
            .route(
                "/apis/maas.opendatahub.io/v1alpha1/namespaces/{namespace}/{plural}",
                get(namespaced),
            )
            .fallback(|| async { status(StatusCode::NOT_FOUND, "NotFound", "no such path") })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), TOKEN).unwrap();
        Self {
            url,
            token_file,
            shared,
            server,
        }
    }

    /// Creates or replaces an object (as `kubectl apply` would); returns when the change was
    /// handed to the open watches.
    pub fn apply(&self, object: Value) -> Instant {
        record(&self.shared, object, false)
    }

    /// Deletes the object of `kind` `namespace/name`.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Instant {
        let object = json!({
            "apiVersion": GROUP_VERSION,
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
        });
        record(&self.shared, object, true)
    }

    /// Ends every open watch cleanly, as an API server does on a restart or a timeout.
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Aborts every open watch mid-stream, as a broken connection does.
    pub fn break_watches(&self) {
        self.shared.breaks.send_modify(|n| *n += 1);
    }

    /// Compacts the history: every open watch gets `410 Gone`, and so does any watch that
    /// resumes from a resource version seen so far. Clients must list again.
    pub fn expire_history(&self) {
        {
            let mut objects = self.shared.objects.lock().unwrap();
            objects.oldest_resumable = objects.resource_version + 1;
        }
        self.shared.expiries.send_modify(|n| *n += 1);
    }

    /// While held, list requests wait (a slow API server); watches go on.
    pub fn hold_lists(&self, held: bool) {
        self.shared.lists_held.send_replace(held);
    }

    /// Answers every request with 500 while set.
    pub fn fail_requests(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// How many lists of `kind` were served (started).
    pub fn lists(&self, kind: &str) -> usize {
        let lists = self.shared.lists.lock().unwrap();
        lists.get(plural_of(kind)).copied().unwrap_or(0)
    }

    /// How many watches of `kind` were opened.
    pub fn watches(&self, kind: &str) -> usize {
        let watches = self.shared.watches.lock().unwrap();
        watches.get(plural_of(kind)).copied().unwrap_or(0)
    }
}

/// Stores (or deletes) an object under the next resource version and tells the watches.
fn record(shared: &Shared, mut object: Value, deleted: bool) -> Instant {
    let kind_name = object["kind"]
        .as_str()
        .expect("object has a kind")
        .to_owned();
    let plural = plural_of(&kind_name);
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let namespace = object["metadata"]["namespace"].as_str().unwrap().to_owned();
    let change = {
        let mut objects = shared.objects.lock().unwrap();
        objects.resource_version += 1;
        let resource_version = objects.resource_version;
        let key = (plural, namespace.clone(), name.clone());
        let existed = objects.items.contains_key(&key);
        let uid = match objects.items.get(&key) {
            Some(existing) => existing["metadata"]["uid"].clone(),
            None => {
                objects.uids += 1;
                json!(format!("00000000-0000-4000-8000-{:012}", objects.uids))
            }
        };
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        object["metadata"]["uid"] = uid;
        object["metadata"]["generation"] = json!(1);
        if deleted {
            if let Some(existing) = objects.items.remove(&key) {
                object = existing;
                object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
            }
        } else {
            objects.items.insert(key, object.clone());
        }
        let change = Change {
            resource_version,
            plural,
            namespace,
            kind: match (deleted, existed) {
                (true, _) => "DELETED",
                (false, true) => "MODIFIED",
                (false, false) => "ADDED",
            },
            object,
        };
        objects.history.push(change.clone());
        change
    };
    let at = Instant::now();
    let _ = shared.changes.send(change);
    at
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

async fn cluster_wide(
    State(shared): State<Arc<Shared>>,
    Path(plural): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(shared, None, plural, query, headers).await
}

async fn namespaced(
    State(shared): State<Arc<Shared>>,
    Path((namespace, plural)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(shared, Some(namespace), plural, query, headers).await
}

async fn serve(
    shared: Arc<Shared>,
    namespace: Option<String>,
    plural: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if shared.failing.load(Ordering::SeqCst) {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcd is unhappy",
        );
    }
    let Some(kind) = kind_of(&plural) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let plural = plural_of(kind);
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if watching {
        watch_stream(shared, namespace, plural, kind, &query)
    } else {
        list(shared, namespace, plural, kind).await
    }
}

async fn list(
    shared: Arc<Shared>,
    namespace: Option<String>,
    plural: &'static str,
    kind: &'static str,
) -> Response {
    *shared.lists.lock().unwrap().entry(plural).or_default() += 1;
    let mut held = shared.lists_held.subscribe();
    let _ = held.wait_for(|held| !*held).await;
    let objects = shared.objects.lock().unwrap();
    let items: Vec<Value> = objects
        .items
        .iter()
        .filter(|((p, ns, _), _)| *p == plural && namespace.as_ref().is_none_or(|n| n == ns))
        .map(|(_, object)| object.clone())
        .collect();
    let body = json!({
        "apiVersion": GROUP_VERSION,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": objects.resource_version.to_string()},
        "items": items,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn event_line(event_type: &str, object: &Value) -> String {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    line
}

fn gone(resource_version: u64, oldest: u64) -> String {
    event_line(
        "ERROR",
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {resource_version} ({oldest})"),
            "reason": "Expired",
            "code": 410,
        }),
    )
}

fn watch_stream(
    shared: Arc<Shared>,
    namespace: Option<String>,
    plural: &'static str,
    kind: &'static str,
    query: &HashMap<String, String>,
) -> Response {
    *shared.watches.lock().unwrap().entry(plural).or_default() += 1;
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (sender, receiver) = mpsc::unbounded::<Result<String, std::io::Error>>();
    let matches = move |change: &Change| {
        change.plural == plural && namespace.as_ref().is_none_or(|n| *n == change.namespace)
    };
    // Subscribe before reading the history, so no change falls between the two.
    let mut changes = shared.changes.subscribe();
    let mut drops = shared.drops.subscribe();
    let mut breaks = shared.breaks.subscribe();
    let mut expiries = shared.expiries.subscribe();
    drops.mark_unchanged();
    breaks.mark_unchanged();
    expiries.mark_unchanged();
    let (replay, current, oldest) = {
        let objects = shared.objects.lock().unwrap();
        let replay: Vec<Change> = objects
            .history
            .iter()
            .filter(|change| change.resource_version > from && matches(change))
            .cloned()
            .collect();
        (replay, objects.resource_version, objects.oldest_resumable)
    };
    if from < oldest {
        let _ = sender.unbounded_send(Ok(gone(from, oldest)));
        drop(sender);
        return stream_response(receiver);
    }
    tokio::spawn(async move {
        let mut sent = from;
        for change in replay {
            sent = change.resource_version;
            if sender
                .unbounded_send(Ok(event_line(change.kind, &change.object)))
                .is_err()
            {
                return;
            }
        }
        if bookmarks {
            let bookmark = json!({
                "apiVersion": GROUP_VERSION,
                "kind": kind,
                "metadata": {"resourceVersion": current.max(sent).to_string()},
            });
            let _ = sender.unbounded_send(Ok(event_line("BOOKMARK", &bookmark)));
        }
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(change) if change.resource_version > sent && matches(&change) => {
                        sent = change.resource_version;
                        if sender.unbounded_send(Ok(event_line(change.kind, &change.object))).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = drops.changed() => return,
                _ = breaks.changed() => {
                    let _ = sender.unbounded_send(Err(std::io::Error::other("connection reset")));
                    return;
                }
                _ = expiries.changed() => {
                    let oldest = shared.objects.lock().unwrap().oldest_resumable;
                    let _ = sender.unbounded_send(Ok(gone(sent, oldest)));
                    return;
                }
            }
        }
    });
    stream_response(receiver)
}

fn stream_response(receiver: mpsc::UnboundedReceiver<Result<String, std::io::Error>>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(receiver))
        .unwrap()
}

/// The YAML documents of the example policy files as JSON objects, for seeding the server.
pub fn example_policy_objects() -> Vec<Value> {
    let mut objects = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(crate::support::example_policy_path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    objects
}
