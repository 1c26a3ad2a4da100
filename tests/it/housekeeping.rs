//! In-process housekeeping: expired ephemeral keys are deleted 30 minutes after expiry by
//! whichever replica holds the housekeeping advisory lock, never by two at once.

use std::time::Duration;

use chrono::Utc;
use maas_authz::app::Application;
use maas_authz::config::OptionalDuration;
use maas_authz::key::ApiKey;
use maas_authz::store::postgres::HOUSEKEEPING_LOCK_KEY;
use maas_authz::store::{KeyRecord, KeyRecordId, KeyStore, NewKey};

use crate::support::*;

async fn insert_key(db: &TestDb, ephemeral: bool, expired_for: chrono::Duration) -> KeyRecord {
    db.store()
        .insert_key(&NewKey {
            id: KeyRecordId::new_random(),
            username: "alice".to_owned(),
            name: "housekeeping".to_owned(),
            description: None,
            key_hash: ApiKey::generate().unwrap().hash(),
            groups: vec!["system:authenticated".to_owned()],
            subscription: "free".to_owned(),
            expires_at: Utc::now() - expired_for,
            ephemeral,
            labels: Default::default(),
        })
        .await
        .expect("insert")
}

async fn exists(db: &TestDb, record: &KeyRecord) -> bool {
    db.store().find_by_id(record.id).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_delete_an_ephemeral_key_expired_over_30_minutes_ago_and_keep_the_rest() {
    let db = TestDb::migrated().await;
    let long_expired = insert_key(&db, true, chrono::Duration::minutes(31)).await;
    let recently_expired = insert_key(&db, true, chrono::Duration::minutes(5)).await;
    let regular_expired = insert_key(&db, false, chrono::Duration::days(2)).await;
    let mut config = serve_config(&db);
    config.housekeeping_interval = OptionalDuration(Some(Duration::from_millis(50)));
    let replica_a = Application::build(config.clone()).await.unwrap();
    let replica_b = Application::build(config).await.unwrap();

    let mut deleted = false;
    for _ in 0..500 {
        if !exists(&db, &long_expired).await {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(deleted, "the long-expired ephemeral key is deleted");
    assert!(
        exists(&db, &recently_expired).await,
        "within the 30-minute grace"
    );
    assert!(
        exists(&db, &regular_expired).await,
        "regular keys are never deleted"
    );
    replica_a.shutdown().await.unwrap();
    replica_b.shutdown().await.unwrap();
}

#[tokio::test]
async fn housekeeping_skips_while_another_session_holds_its_lock() {
    let db = TestDb::migrated().await;
    let long_expired = insert_key(&db, true, chrono::Duration::minutes(31)).await;
    let mut other = db.client().await;
    let holder = other.transaction().await.unwrap();
    holder
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&HOUSEKEEPING_LOCK_KEY],
        )
        .await
        .unwrap();
    let store = db.store();

    let while_held = store
        .delete_expired_ephemeral_keys_if_alone(Duration::from_secs(1_800))
        .await
        .unwrap();
    let still_there = exists(&db, &long_expired).await;
    holder.commit().await.unwrap();
    let once_free = store
        .delete_expired_ephemeral_keys_if_alone(Duration::from_secs(1_800))
        .await
        .unwrap();

    assert_eq!(while_held, None, "skipped while the lock is held elsewhere");
    assert!(still_there);
    assert_eq!(once_free, Some(1));
    assert!(!exists(&db, &long_expired).await);
}

#[tokio::test]
async fn housekeeping_does_not_take_the_migrations_lock() {
    let db = TestDb::migrated().await;
    let mut other = db.client().await;
    let holder = other.transaction().await.unwrap();
    // The migrations' lock key (src/store/migrate.rs): held by a replica that is migrating.
    holder
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&0x006d_6161_736d_6967_i64],
        )
        .await
        .unwrap();

    let outcome = db
        .store()
        .delete_expired_ephemeral_keys_if_alone(Duration::from_secs(1_800))
        .await
        .unwrap();

    assert_eq!(outcome, Some(0));
    holder.commit().await.unwrap();
}
