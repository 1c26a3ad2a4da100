//! Push invalidation across replicas: a key revoked anywhere is refused by every replica without
//! waiting for cache expiry, also after the listener lost its connection.

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use maas_authz::app::{Application, RunningServer};
use maas_authz::store::KeyStore;
use tonic::transport::Channel;

use crate::support::*;

const CHAT: &str = "/simulator/v1/chat/completions";

async fn replica(db: &TestDb) -> (RunningServer, AuthorizationClient<Channel>) {
    let mut config = serve_config(db);
    // A cache TTL far beyond the test, so only push invalidation can explain a refusal.
    config.cache_ttl = std::time::Duration::from_secs(3_600);
    config.negative_cache_ttl = std::time::Duration::from_secs(3_600);
    let server = Application::build(config).await.expect("replica starts");
    let client = AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    (server, client)
}

async fn allowed(client: &mut AuthorizationClient<Channel>, key: &str) -> bool {
    let response = client
        .check(check_request(CHAT, &[("authorization", &bearer(key))]))
        .await
        .unwrap()
        .into_inner();
    response.status.is_some_and(|s| s.code == 0)
}

/// Polls until the replica refuses `key`; bounded so a broken listener fails the test.
async fn wait_until_refused(client: &mut AuthorizationClient<Channel>, key: &str) -> bool {
    for _ in 0..500 {
        if !allowed(client, key).await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_replica_is_refused_by_another_without_waiting_for_the_cache() {
    let db = TestDb::migrated().await;
    let (replica_a, _) = replica(&db).await;
    let (replica_b, mut client_b) = replica(&db).await;
    wait_for_listener(&db).await;
    let (key, record) = mint(&db.store(), &FREE_USER).await;
    assert!(
        allowed(&mut client_b, &key).await,
        "replica B caches the key as valid"
    );

    // Revoked "on replica A": straight in the shared database, which is what A's REST API does.
    db.store()
        .revoke_key(record.id)
        .await
        .unwrap()
        .expect("revoked");

    assert!(
        wait_until_refused(&mut client_b, &key).await,
        "replica B must refuse the revoked key"
    );
    replica_a.shutdown().await.unwrap();
    replica_b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_lost_its_connection_reconnects_and_drops_what_it_may_have_missed() {
    let db = TestDb::migrated().await;
    let (replica_b, mut client_b) = replica(&db).await;
    wait_for_listener(&db).await;
    let (key, record) = mint(&db.store(), &FREE_USER).await;
    assert!(allowed(&mut client_b, &key).await);
    let admin = db.client().await;

    // Cut the listener's connection, and revoke while it may be down (the notice can be lost).
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'maas-authz-key-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    db.store()
        .revoke_key(record.id)
        .await
        .unwrap()
        .expect("revoked");

    assert!(
        wait_until_refused(&mut client_b, &key).await,
        "resync after reconnect must drop the stale entry"
    );
    wait_for_listener(&db).await;
    replica_b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_minted_after_being_looked_up_as_unknown_is_accepted_at_once() {
    let db = TestDb::migrated().await;
    let (replica_b, mut client_b) = replica(&db).await;
    wait_for_listener(&db).await;
    let key = maas_authz::key::ApiKey::generate().unwrap();
    assert!(
        !allowed(&mut client_b, key.expose()).await,
        "unknown, now in the negative cache"
    );

    // The same key inserted by another replica (as if minted there).
    db.store()
        .insert_key(&maas_authz::store::NewKey {
            id: maas_authz::store::KeyRecordId::new_random(),
            username: "alice".into(),
            name: "late".into(),
            description: None,
            key_hash: key.hash(),
            groups: vec!["system:authenticated".into()],
            subscription: "free".into(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
            ephemeral: false,
            labels: Default::default(),
        })
        .await
        .unwrap();

    let mut accepted = false;
    for _ in 0..500 {
        if allowed(&mut client_b, key.expose()).await {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        accepted,
        "the insert notice must clear the negative cache entry"
    );
    replica_b.shutdown().await.unwrap();
}
