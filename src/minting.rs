//! Minting keys: the rules every new key obeys, whoever asks (REST API or operator CLI), and
//! the cap on a user's active keys that self-service minting obeys (the CLI is break-glass).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::key::ApiKey;
use crate::store::{
    KeyAdminStore, KeyRecord, KeyRecordId, KeyStore, LimitedInsert, NewKey, StoreError,
};

/// Upstream's limit on key names, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Our limit on key descriptions, in characters (upstream sets none; the column is TEXT).
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Upstream's limits on key labels.
pub const MAX_LABELS: usize = 50;
pub const MAX_LABEL_KEY_CHARS: usize = 128;
pub const MAX_LABEL_VALUE_CHARS: usize = 1024;
/// Access tokens live at least this long, as upstream required (also the floor of
/// `MAAS_AUTHZ_TOKEN_MAX_EXPIRATION`).
pub const TOKEN_MIN_LIFETIME: Duration = Duration::from_secs(600);
/// Label keys under this prefix are set by the service itself (e.g. on access tokens) and
/// cannot be given by callers.
pub const RESERVED_LABEL_PREFIX: &str = "maas-authz.io/";

/// Labels on a key: sorted, so they print and compare deterministically.
pub type Labels = BTreeMap<String, String>;

/// A validated request to mint one key.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub username: String,
    pub groups: Vec<String>,
    pub name: String,
    pub description: Option<String>,
    pub subscription: String,
    pub lifetime: Duration,
    pub ephemeral: bool,
}

/// A freshly minted key: the plaintext exists only here, to be shown once.
#[derive(Debug)]
pub struct MintedKey {
    pub key: ApiKey,
    pub record: KeyRecord,
}

/// Why a mint was refused; the messages are the ones users see.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("key name cannot be whitespace only")]
    BlankName,
    #[error("key name must be at most {MAX_NAME_CHARS} characters")]
    NameTooLong,
    #[error("key name must not contain control characters")]
    NameHasControlCharacters,
    #[error("username is required")]
    MissingUsername,
    #[error("group name {0:?} is not allowed: group names must match ^[a-zA-Z0-9:._-]+$")]
    BadGroupName(String),
    #[error("description must be at most {MAX_DESCRIPTION_CHARS} characters")]
    DescriptionTooLong,
    #[error("description must not contain control characters other than tab and newline")]
    DescriptionHasControlCharacters,
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error("expiration must be positive")]
    NonPositiveLifetime,
    #[error("requested expiration ({requested}) exceeds maximum allowed ({maximum})")]
    LifetimeTooLong { requested: String, maximum: String },
    /// The user holds `limit` (or more) active keys already; nothing was stored.
    #[error("{}", too_many_active_keys_message(*active, *limit))]
    TooManyActiveKeys { active: u64, limit: u32 },
    #[error("cannot read the operating system's random number generator: {0}")]
    Randomness(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MintError {
    /// Whether the caller sent something wrong (as opposed to a failure on our side).
    pub fn is_invalid_request(&self) -> bool {
        !matches!(self, MintError::Randomness(_) | MintError::Store(_))
    }
}

/// What a user over the active-key cap is told: how many they hold, and how to get a slot.
pub fn too_many_active_keys_message(active: u64, limit: u32) -> String {
    let keys = |n: u64| {
        if n == 1 {
            "1 active API key".to_owned()
        } else {
            format!("{n} active API keys")
        }
    };
    let over = active.saturating_sub(u64::from(limit));
    if over == 0 {
        format!(
            "you have {}, the most allowed; revoke one (DELETE /v1/api-keys/{{id}}) or wait for \
             one to expire",
            keys(active)
        )
    } else {
        // The cap was lowered below what the user already holds.
        format!(
            "you have {} and at most {limit} are allowed; revoke {} (DELETE /v1/api-keys/{{id}}) \
             or wait for them to expire",
            keys(active),
            over + 1
        )
    }
}

/// Why a set of labels was refused; the messages are the ones users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("too many labels: at most {MAX_LABELS} are allowed")]
    TooMany,
    #[error("label key {0:?} is too long: at most {MAX_LABEL_KEY_CHARS} characters")]
    KeyTooLong(String),
    #[error(
        "label key {0:?} is invalid: use an optional DNS subdomain prefix and '/', then a name of \
         at most 63 characters made of alphanumerics, '-', '_' and '.', starting and ending with \
         an alphanumeric"
    )]
    BadKey(String),
    #[error("label key {0:?} uses the reserved prefix {RESERVED_LABEL_PREFIX}")]
    ReservedKey(String),
    #[error("label {0:?} has an empty value")]
    EmptyValue(String),
    #[error("label {0:?} has a value longer than {MAX_LABEL_VALUE_CHARS} characters")]
    ValueTooLong(String),
    #[error("label {0:?} has a value with control characters")]
    ValueHasControlCharacters(String),
}

/// Checks labels as upstream does: at most [`MAX_LABELS`], Kubernetes label-key syntax capped
/// at [`MAX_LABEL_KEY_CHARS`], non-empty values of at most [`MAX_LABEL_VALUE_CHARS`] without
/// control characters. Used for labels on new keys and for search filters alike.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    for (key, value) in labels {
        if key.chars().count() > MAX_LABEL_KEY_CHARS {
            return Err(LabelError::KeyTooLong(key.clone()));
        }
        if !is_kubernetes_label_key(key) {
            return Err(LabelError::BadKey(key.clone()));
        }
        if value.is_empty() {
            return Err(LabelError::EmptyValue(key.clone()));
        }
        if value.chars().count() > MAX_LABEL_VALUE_CHARS {
            return Err(LabelError::ValueTooLong(key.clone()));
        }
        if value.chars().any(char::is_control) {
            return Err(LabelError::ValueHasControlCharacters(key.clone()));
        }
    }
    Ok(())
}

/// Refuses label keys under [`RESERVED_LABEL_PREFIX`], which only the service may set.
pub fn reject_reserved_labels(labels: &Labels) -> Result<(), LabelError> {
    match labels
        .keys()
        .find(|key| key.starts_with(RESERVED_LABEL_PREFIX))
    {
        Some(key) => Err(LabelError::ReservedKey(key.clone())),
        None => Ok(()),
    }
}

/// `[prefix/]name`: prefix a DNS-1123 subdomain (≤ 253), name ≤ 63 alphanumerics, `-`, `_`, `.`
/// starting and ending with an alphanumeric.
fn is_kubernetes_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|prefix| {
        !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

/// Checks a description; empty means none.
pub fn validate_description(description: &str) -> Result<(), MintError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(MintError::DescriptionTooLong);
    }
    if description
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(MintError::DescriptionHasControlCharacters);
    }
    Ok(())
}

/// Checks a key name as upstream does and returns it trimmed.
pub fn validate_key_name(name: &str) -> Result<String, MintError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(MintError::BlankName);
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(MintError::NameTooLong);
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return Err(MintError::NameHasControlCharacters);
    }
    Ok(trimmed.to_owned())
}

/// Upstream's group pattern: the gateway builds the group header by concatenation, so only
/// characters that need no escaping are storable.
pub fn validate_group_name(group: &str) -> Result<(), MintError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-');
    if group.is_empty() || !group.chars().all(allowed) {
        return Err(MintError::BadGroupName(group.to_owned()));
    }
    Ok(())
}

/// The longest lifetime a kind of credential may have, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeLimit {
    /// Regular keys: `MAAS_AUTHZ_API_KEY_MAX_EXPIRATION_DAYS`, shown as "N days".
    Days(u32),
    /// Ephemeral keys and access tokens, shown as a Go duration.
    Exactly(Duration),
}

impl LifetimeLimit {
    pub fn duration(self) -> Duration {
        match self {
            LifetimeLimit::Days(days) => Duration::from_secs(u64::from(days) * 86_400),
            LifetimeLimit::Exactly(duration) => duration,
        }
    }

    fn describe(self) -> String {
        match self {
            LifetimeLimit::Days(1) => "1 day".to_owned(),
            LifetimeLimit::Days(days) => format!("{days} days"),
            LifetimeLimit::Exactly(duration) => crate::duration::format_go_duration(duration),
        }
    }
}

/// Checks a requested lifetime against the maximum.
pub fn validate_lifetime(lifetime: Duration, maximum: LifetimeLimit) -> Result<(), MintError> {
    if lifetime.is_zero() {
        return Err(MintError::NonPositiveLifetime);
    }
    if lifetime > maximum.duration() {
        return Err(MintError::LifetimeTooLong {
            requested: crate::duration::format_go_duration(lifetime),
            maximum: maximum.describe(),
        });
    }
    Ok(())
}

/// Mints one key without labels; see [`mint_key_with_labels`].
pub async fn mint_key<S: KeyStore>(
    store: &S,
    request: MintRequest,
    now: DateTime<Utc>,
) -> Result<MintedKey, MintError> {
    mint_key_with_labels(store, request, Labels::new(), now).await
}

/// Mints one key: checks every field, generates the key, stores only its hash, returns the
/// plaintext once. Not capped: the operator CLI mints this way (break-glass).
pub async fn mint_key_with_labels<S: KeyStore>(
    store: &S,
    request: MintRequest,
    labels: Labels,
    now: DateTime<Utc>,
) -> Result<MintedKey, MintError> {
    let (key, new_key) = prepare_key(request, labels, now)?;
    let record = store.insert_key(&new_key).await?;
    Ok(MintedKey { key, record })
}

/// [`mint_key_with_labels`] for self-service minting: refused with
/// [`MintError::TooManyActiveKeys`] when the user already holds `max_active` active, unexpired
/// keys (ephemeral keys and access tokens included), decided atomically by the store.
pub async fn mint_key_within_limit<S: KeyAdminStore>(
    store: &S,
    request: MintRequest,
    labels: Labels,
    now: DateTime<Utc>,
    max_active: u32,
) -> Result<MintedKey, MintError> {
    let (key, new_key) = prepare_key(request, labels, now)?;
    match store.insert_key_within_limit(&new_key, max_active).await? {
        LimitedInsert::Inserted(record) => Ok(MintedKey {
            key,
            record: *record,
        }),
        LimitedInsert::LimitReached { active } => Err(MintError::TooManyActiveKeys {
            active,
            limit: max_active,
        }),
    }
}

/// Checks every field and generates the key: the row to store and the plaintext to show once.
fn prepare_key(
    request: MintRequest,
    labels: Labels,
    now: DateTime<Utc>,
) -> Result<(ApiKey, NewKey), MintError> {
    if request.username.trim().is_empty() {
        return Err(MintError::MissingUsername);
    }
    let name = validate_key_name(&request.name)?;
    if let Some(description) = &request.description {
        validate_description(description)?;
    }
    validate_labels(&labels)?;
    for group in &request.groups {
        validate_group_name(group)?;
    }
    let key = ApiKey::generate().map_err(|e| MintError::Randomness(e.to_string()))?;
    let lifetime =
        chrono::Duration::from_std(request.lifetime).map_err(|_| MintError::NonPositiveLifetime)?;
    let new_key = NewKey {
        id: KeyRecordId::new_random(),
        username: request.username,
        name,
        description: request.description.filter(|d| !d.is_empty()),
        key_hash: key.hash(),
        groups: request.groups,
        subscription: request.subscription,
        expires_at: now + lifetime,
        ephemeral: request.ephemeral,
        labels,
    };
    Ok((key, new_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_upstream_rules() {
        assert_eq!(validate_key_name("  bot  ").unwrap(), "bot");
        assert!(matches!(
            validate_key_name("   "),
            Err(MintError::BlankName)
        ));
        assert!(matches!(
            validate_key_name(&"é".repeat(129)),
            Err(MintError::NameTooLong)
        ));
        assert!(validate_key_name(&"é".repeat(128)).is_ok());
        assert!(matches!(
            validate_key_name("a\u{7f}b"),
            Err(MintError::NameHasControlCharacters)
        ));
    }

    #[test]
    fn group_names_follow_upstream_pattern() {
        assert!(validate_group_name("system:authenticated").is_ok());
        assert!(validate_group_name("team.a_b-c").is_ok());
        for bad in ["", "a b", "a\"b", "a/b", "é"] {
            assert!(validate_group_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifetimes_must_be_positive_and_within_the_maximum() {
        let day = Duration::from_secs(86_400);
        assert!(validate_lifetime(90 * day, LifetimeLimit::Days(90)).is_ok());
        assert!(matches!(
            validate_lifetime(Duration::ZERO, LifetimeLimit::Days(1)),
            Err(MintError::NonPositiveLifetime)
        ));
        let error = validate_lifetime(91 * day, LifetimeLimit::Days(90)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "requested expiration (2184h0m0s) exceeds maximum allowed (90 days)"
        );
        let hour = LifetimeLimit::Exactly(Duration::from_secs(3_600));
        let error = validate_lifetime(Duration::from_secs(7_200), hour).unwrap_err();
        assert_eq!(
            error.to_string(),
            "requested expiration (2h0m0s) exceeds maximum allowed (1h0m0s)"
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn label_keys_follow_kubernetes_syntax() {
        for good in [
            "team",
            "app.kubernetes.io/name",
            "a",
            "A_b-c.D",
            "example.com/Team_1",
            "maas-authz.io/credential",
        ] {
            assert_eq!(validate_labels(&labels(&[(good, "x")])), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "-team",
            "team-",
            "a b",
            "/name",
            "prefix/",
            "UPPER.com/name",
            "a/b/c",
            "é",
            "x..y/name",
        ] {
            assert_eq!(
                validate_labels(&labels(&[(bad, "x")])),
                Err(LabelError::BadKey(bad.to_owned())),
                "{bad:?}"
            );
        }
        let long_name = "a".repeat(64);
        assert!(validate_labels(&labels(&[(&long_name, "x")])).is_err());
        let too_long = format!("{}/{}", "a".repeat(100), "b".repeat(28));
        assert_eq!(
            validate_labels(&labels(&[(&too_long, "x")])),
            Err(LabelError::KeyTooLong(too_long.clone()))
        );
    }

    #[test]
    fn label_values_and_counts_are_bounded() {
        assert_eq!(
            validate_labels(&labels(&[("k", "")])),
            Err(LabelError::EmptyValue("k".into()))
        );
        assert!(validate_labels(&labels(&[("k", &"v".repeat(1024))])).is_ok());
        assert_eq!(
            validate_labels(&labels(&[("k", &"v".repeat(1025))])),
            Err(LabelError::ValueTooLong("k".into()))
        );
        assert_eq!(
            validate_labels(&labels(&[("k", "a\nb")])),
            Err(LabelError::ValueHasControlCharacters("k".into()))
        );
        let fifty: Labels = (0..50).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(validate_labels(&fifty).is_ok());
        let fifty_one: Labels = (0..51).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(validate_labels(&fifty_one), Err(LabelError::TooMany));
    }

    #[test]
    fn reserved_label_prefix_is_refused_for_callers() {
        assert_eq!(
            reject_reserved_labels(&labels(&[("maas-authz.io/credential", "x")])),
            Err(LabelError::ReservedKey("maas-authz.io/credential".into()))
        );
        assert_eq!(reject_reserved_labels(&labels(&[("team", "x")])), Ok(()));
    }

    #[test]
    fn the_active_key_cap_message_says_how_many_and_what_to_do() {
        assert_eq!(
            too_many_active_keys_message(100, 100),
            "you have 100 active API keys, the most allowed; revoke one (DELETE \
             /v1/api-keys/{id}) or wait for one to expire"
        );
        assert_eq!(
            too_many_active_keys_message(1, 1),
            "you have 1 active API key, the most allowed; revoke one (DELETE /v1/api-keys/{id}) \
             or wait for one to expire"
        );
        assert_eq!(
            too_many_active_keys_message(12, 10),
            "you have 12 active API keys and at most 10 are allowed; revoke 3 (DELETE \
             /v1/api-keys/{id}) or wait for them to expire"
        );
    }

    #[test]
    fn descriptions_are_bounded() {
        assert!(validate_description("line one\nline two\ttab").is_ok());
        assert!(matches!(
            validate_description("bell\u{7}"),
            Err(MintError::DescriptionHasControlCharacters)
        ));
        assert!(matches!(
            validate_description(&"d".repeat(1025)),
            Err(MintError::DescriptionTooLong)
        ));
    }
}
