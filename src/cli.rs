//! The operator CLI (`maas-authz keys …`): bootstrap and break-glass, straight against the database;
//! and `maas-authz check`, which asks a running server instead.

pub mod check;

use std::io::Write;

use anyhow::{Context, bail};
use chrono::Utc;

use crate::config::{
    DatabaseConfig, KeysAction, KeysCommand, KeysCreate, OutputFormat, pg_settings,
};
use crate::keys::EPHEMERAL_CLEANUP_GRACE;
use crate::minting::{MintRequest, mint_key};
use crate::policy::Policy;
use crate::store::postgres::{NoQueryObserver, PgKeyStore};
use crate::store::{KeyAdminStore, KeyRecordId, KeyStore};

/// Every key holder is an authenticated user; keys minted through the API carry this group too.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// Runs one `keys` action, writing results to `out` (standard output in production) and what
/// describes them to `notes` (standard error), so that `out` holds only what a script reads.
pub async fn run_keys(
    command: KeysCommand,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> anyhow::Result<()> {
    let store = PgKeyStore::connect(
        &pg_settings(&command.database),
        std::sync::Arc::new(NoQueryObserver),
    )?;
    match command.action {
        KeysAction::Create(create) => create_key(&store, create, out, notes).await,
        KeysAction::Revoke { id } => {
            let id = KeyRecordId::parse(&id).map_err(|_| {
                anyhow::anyhow!("{id:?} is not a key id (a UUID as printed by `keys create`)")
            })?;
            match store.revoke_key(id).await? {
                Some(record) => {
                    writeln!(
                        out,
                        "revoked {} ({}, user {})",
                        record.id, record.name, record.username
                    )?;
                    Ok(())
                }
                None => bail!("no active key with id {id}"),
            }
        }
        KeysAction::List { user, limit } => {
            let now = Utc::now();
            let keys = store.list_keys_of_user(&user, limit).await?;
            writeln!(
                out,
                "ID\tNAME\tSTATUS\tSUBSCRIPTION\tCREATED\tEXPIRES\tLAST_USED"
            )?;
            for key in keys {
                let when = |t: Option<chrono::DateTime<Utc>>| {
                    t.map_or_else(
                        || "-".to_owned(),
                        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    )
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.name,
                    key.effective_status(now).as_str(),
                    key.subscription,
                    when(Some(key.created_at)),
                    when(key.expires_at),
                    when(key.last_used_at)
                )?;
            }
            Ok(())
        }
    }
}

/// Deletes ephemeral keys past the cleanup grace, as `POST /internal/v1/api-keys/cleanup` does.
pub async fn run_cleanup(database: &DatabaseConfig) -> anyhow::Result<()> {
    let store = PgKeyStore::connect(&pg_settings(database), std::sync::Arc::new(NoQueryObserver))?;
    let deleted = store
        .delete_expired_ephemeral_keys(EPHEMERAL_CLEANUP_GRACE)
        .await
        .context("cannot clean up expired ephemeral keys")?;
    tracing::info!(deleted, "expired ephemeral keys cleaned up");
    Ok(())
}

async fn create_key(
    store: &PgKeyStore,
    create: KeysCreate,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> anyhow::Result<()> {
    let mut groups = create.groups;
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.insert(0, AUTHENTICATED_GROUP.to_owned());
    }
    let subscription = choose_subscription(
        &create.user,
        &groups,
        create.subscription,
        create.policy_path.as_deref(),
    )?;
    let minted = mint_key(
        store,
        MintRequest {
            username: create.user,
            groups,
            name: create.name,
            description: create.description,
            subscription,
            lifetime: create.expires_in,
            ephemeral: false,
        },
        Utc::now(),
    )
    .await
    .context("cannot create the key")?;
    let record = &minted.record;
    let expires_at = record
        .expires_at
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    match create.output {
        OutputFormat::Json => {
            let created = serde_json::json!({
                "id": record.id.to_string(),
                "key": minted.key.expose(),
                "name": record.name,
                "username": record.username,
                "subscription": record.subscription,
                "expiresAt": expires_at,
            });
            writeln!(out, "{created}")?;
        }
        OutputFormat::Text => {
            // The key goes to standard output alone, so `KEY=$(maas-authz keys create …)` works;
            // what describes it goes to standard error.
            writeln!(out, "{}", minted.key.expose())?;
            writeln!(
                notes,
                "created key {} for user {}: subscription {}, {}; the key (on standard output) \
                 is shown once and cannot be recovered",
                record.id,
                record.username,
                record.subscription,
                expires_at.map_or_else(|| "never expires".to_owned(), |t| format!("expires {t}")),
            )?;
        }
    }
    Ok(())
}

/// The explicit subscription (checked against the policy when one is given), else the user's
/// highest-priority accessible subscription in the policy.
fn choose_subscription(
    user: &str,
    groups: &[String],
    requested: Option<String>,
    policy_path: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let policy = policy_path
        .map(|path| {
            Policy::load(path).with_context(|| {
                format!(
                    "MAAS_AUTHZ_POLICY_PATH={}: the policy is invalid",
                    path.display()
                )
            })
        })
        .transpose()?;
    match (requested, policy) {
        (Some(name), Some(policy)) => {
            let subscription = policy
                .find_subscription(&name)
                .with_context(|| format!("subscription {name:?} is not in the policy"))?;
            if !policy.subscription_accessible(subscription, user, groups) {
                bail!("subscription {name:?} is not accessible to user {user:?} with groups {groups:?}");
            }
            Ok(subscription.name.clone())
        }
        (Some(name), None) => Ok(name),
        (None, Some(policy)) => policy
            .highest_priority_subscription(user, groups)
            .map(|s| s.name.clone())
            .with_context(|| format!("no subscription in the policy is accessible to user {user:?} with groups {groups:?}")),
        (None, None) => bail!("give --subscription, or MAAS_AUTHZ_POLICY_PATH so the highest-priority subscription can be chosen"),
    }
}
