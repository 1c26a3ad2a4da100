//! Push invalidation: a dedicated connection (outside the query pool) that LISTENs for key
//! changes published by the `maas_authz_key_change_notify` trigger and reports them.
//!
//! PostgreSQL does not replay notifications to a listener that was disconnected, so every
//! (re)connection is reported as [`KeyChange::Resync`]: whoever caches keys must drop them all.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::AsyncMessage;

use super::connect::{PgConnectError, PgEndpoint};
use super::sql;
use crate::key::KeyHash;

/// What a listener learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// The key with this hash changed (revoked, expired, deleted, inserted).
    Key(KeyHash),
    /// The listener (re)connected and may have missed changes: forget everything cached.
    Resync,
}

/// How the listener connects.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// The database, TLS included, as the pool reaches it.
    pub endpoint: PgEndpoint,
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts (backoff starts at 100 ms and doubles).
    pub max_backoff: Duration,
}

/// Listens until `shutdown` completes, reconnecting with backoff after any failure.
pub async fn listen_for_key_changes(
    settings: ListenerSettings,
    on_change: impl Fn(KeyChange) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut endpoint = settings.endpoint;
    endpoint
        .config_mut()
        .connect_timeout(settings.connect_timeout)
        .application_name("maas-authz-key-listener");
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            outcome = listen_once(&endpoint, &on_change) => {
                match outcome {
                    Ok(()) => tracing::warn!("key-change listener connection closed; reconnecting"),
                    Err(error) => tracing::warn!(%error, retry_in = ?backoff, "key-change listener failed; reconnecting"),
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// Why one listening connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Connect(#[from] PgConnectError),
    #[error("{}", super::connect::error_chain(.0))]
    Connection(#[from] tokio_postgres::Error),
}

/// One connection's life: connect, LISTEN, report `Resync`, then every notification.
async fn listen_once(
    endpoint: &PgEndpoint,
    on_change: &(impl Fn(KeyChange) + Send + Sync),
) -> Result<(), ListenError> {
    let (client, mut connection) = endpoint.connect().await?;
    // The connection must be polled for the LISTEN to run; notifications arrive through it.
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if sender.send(Ok(notification.payload().to_owned())).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = sender.send(Err(error));
                    break;
                }
            }
        }
    });
    sql::listen_for_key_changes(&client).await?;
    tracing::info!(
        "key-change listener connected; dropping cached keys in case changes were missed"
    );
    on_change(KeyChange::Resync);
    let outcome = loop {
        match notifications.recv().await {
            Some(Ok(payload)) => match KeyHash::from_hex(&payload) {
                Ok(hash) => on_change(KeyChange::Key(hash)),
                Err(_) => {
                    tracing::warn!("ignoring a key-change notification that is not a key hash")
                }
            },
            Some(Err(error)) => break Err(error.into()),
            None => break Ok(()),
        }
    };
    driver.abort();
    outcome
}
