//! Minting keys: the rules every new key obeys, whoever asks (REST API or operator CLI).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::key::ApiKey;
use crate::store::{KeyRecord, KeyRecordId, KeyStore, NewKey, StoreError};

/// Upstream's limit on key names, in characters.
pub const MAX_NAME_CHARS: usize = 128;

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
    #[error("expiration must be positive")]
    NonPositiveLifetime,
    #[error("requested expiration ({requested}) exceeds maximum allowed ({maximum})")]
    LifetimeTooLong { requested: String, maximum: String },
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

/// Checks a requested lifetime against the maximum.
pub fn validate_lifetime(lifetime: Duration, maximum: Duration) -> Result<(), MintError> {
    if lifetime.is_zero() {
        return Err(MintError::NonPositiveLifetime);
    }
    if lifetime > maximum {
        return Err(MintError::LifetimeTooLong {
            requested: crate::duration::format_go_duration(lifetime),
            maximum: crate::duration::format_go_duration(maximum),
        });
    }
    Ok(())
}

/// Mints one key: generates it, stores only its hash, returns the plaintext once.
pub async fn mint_key<S: KeyStore>(
    store: &S,
    request: MintRequest,
    now: DateTime<Utc>,
) -> Result<MintedKey, MintError> {
    if request.username.trim().is_empty() {
        return Err(MintError::MissingUsername);
    }
    let name = validate_key_name(&request.name)?;
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
    };
    let record = store.insert_key(&new_key).await?;
    Ok(MintedKey { key, record })
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
        assert!(validate_lifetime(day, 90 * day).is_ok());
        assert!(matches!(
            validate_lifetime(Duration::ZERO, day),
            Err(MintError::NonPositiveLifetime)
        ));
        let error = validate_lifetime(91 * day, 90 * day).unwrap_err();
        assert_eq!(
            error.to_string(),
            "requested expiration (2184h0m0s) exceeds maximum allowed (2160h0m0s)"
        );
    }
}
