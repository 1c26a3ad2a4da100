//! Push invalidation: a dedicated connection (outside the query pool) that LISTENs for key
//! changes published by the `maas_authz_key_change_notify` trigger and reports them.
//!
//! PostgreSQL does not replay notifications to a listener that was disconnected, so every
//! (re)connection is reported as [`KeyChange::Resync`]: whoever caches keys must drop them all.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::AsyncMessage;

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
    pub database_url: String,
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
    let mut config = match super::postgres::parse_database_url(&settings.database_url) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "key-change listener cannot start");
            return;
        }
    };
    config.connect_timeout(settings.connect_timeout);
    config.application_name("maas-authz-key-listener");
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            outcome = listen_once(&config, &on_change) => {
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

/// One connection's life: connect, LISTEN, report `Resync`, then every notification.
async fn listen_once(
    config: &tokio_postgres::Config,
    on_change: &(impl Fn(KeyChange) + Send + Sync),
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
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
            Some(Err(error)) => break Err(error),
            None => break Ok(()),
        }
    };
    driver.abort();
    outcome
}
