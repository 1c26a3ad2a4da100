//! The static token file: a YAML list of `{token, username, groups}` for local runs and demos,
//! read on every lookup so that an edit applies to the very next request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_norway::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::key::KEY_PREFIX;
use crate::minting::validate_group_name;

/// Why the static token file cannot be used. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum StaticTokensError {
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("not valid YAML: {0}")]
    Yaml(#[source] serde_norway::Error),
    #[error("the file must hold a YAML list of {{token, username, groups}} entries")]
    NotAList,
    #[error("entry {entry}: {problem}")]
    Entry { entry: usize, problem: String },
}

/// One identity of the file; the token is kept only as its SHA-256 digest.
struct StaticIdentity {
    digest: [u8; 32],
    username: String,
    groups: Vec<String>,
}

/// The loaded static tokens, matched in constant time.
pub(crate) struct StaticTokens {
    identities: Vec<StaticIdentity>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Usernames are not secret, but the digests stay out of logs all the same.
        f.debug_struct("StaticTokens")
            .field("entries", &self.identities.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The file as last read: its content's digest (`None` when it could not be read) and its
/// tokens (`None` when it could not be read or parsed).
struct FileSnapshot {
    content: Option<[u8; 32]>,
    tokens: Option<StaticTokens>,
}

/// The static token file, read again on every lookup. Admin rights must follow the file as it is
/// now (a demotion takes effect at once), and the file is small, so a read per REST request is
/// cheap; the YAML is parsed again only when the content's digest changes. A file that becomes
/// unreadable or invalid fails closed: no static token is accepted until it is fixed, since
/// keeping the last good version could keep a demoted admin's rights.
pub(crate) struct StaticTokenFile {
    path: PathBuf,
    current: ArcSwap<FileSnapshot>,
}

impl std::fmt::Debug for StaticTokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokenFile")
            .field("path", &self.path)
            .field(
                "entries",
                &self.current.load().tokens.as_ref().map(StaticTokens::len),
            )
            .finish()
    }
}

impl StaticTokenFile {
    /// Reads and parses the file; at start-up an unusable file is an error, not an empty set.
    pub(crate) fn open(path: &Path) -> Result<Self, StaticTokensError> {
        let bytes = std::fs::read(path).map_err(StaticTokensError::Read)?;
        let tokens = StaticTokens::parse_bytes(&bytes)?;
        Ok(Self {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(FileSnapshot {
                content: Some(Sha256::digest(&bytes).into()),
                tokens: Some(tokens),
            }),
        })
    }

    /// The number of entries as last read (0 while the file is unusable).
    pub(crate) fn len(&self) -> usize {
        self.current
            .load()
            .tokens
            .as_ref()
            .map_or(0, StaticTokens::len)
    }

    /// The username and groups of the entry whose token equals `token`, in the file as it is now.
    pub(crate) async fn find(&self, token: &str) -> Option<(String, Vec<String>)> {
        let snapshot = self.refresh().await;
        let (username, groups) = snapshot.tokens.as_ref()?.find(token)?;
        Some((username.to_owned(), groups.to_vec()))
    }

    /// The snapshot of the file's current content, parsing it again if it changed.
    async fn refresh(&self) -> Arc<FileSnapshot> {
        let current = self.current.load_full();
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())));
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(error) => {
                if current.content.is_none() && current.tokens.is_none() {
                    return current;
                }
                tracing::warn!(
                    path = %self.path.display(),
                    %error,
                    "cannot read MAAS_AUTHZ_STATIC_TOKENS_FILE: no static token is accepted until it can be read"
                );
                let unreadable = Arc::new(FileSnapshot {
                    content: None,
                    tokens: None,
                });
                self.current.store(unreadable.clone());
                return unreadable;
            }
        };
        let content: [u8; 32] = Sha256::digest(&bytes).into();
        if current.content == Some(content) {
            return current;
        }
        let snapshot = Arc::new(match StaticTokens::parse_bytes(&bytes) {
            Ok(tokens) => {
                tracing::info!(
                    path = %self.path.display(),
                    entries = tokens.len(),
                    "static tokens reloaded"
                );
                FileSnapshot {
                    content: Some(content),
                    tokens: Some(tokens),
                }
            }
            Err(error) => {
                tracing::warn!(
                    path = %self.path.display(),
                    %error,
                    "MAAS_AUTHZ_STATIC_TOKENS_FILE is invalid: no static token is accepted until it is fixed"
                );
                FileSnapshot {
                    content: Some(content),
                    tokens: None,
                }
            }
        });
        // Concurrent requests may both parse a new version; the result is the same either way.
        self.current.store(snapshot.clone());
        snapshot
    }
}

impl StaticTokens {
    fn parse_bytes(bytes: &[u8]) -> Result<Self, StaticTokensError> {
        let text = std::str::from_utf8(bytes).map_err(|_| StaticTokensError::NotUtf8)?;
        Self::parse(text)
    }

    /// Parses entry by entry, by hand rather than with derived serde, because serde's type errors
    /// quote the offending value and that value may be a token.
    pub(crate) fn parse(text: &str) -> Result<Self, StaticTokensError> {
        let value: Value = serde_norway::from_str(text).map_err(StaticTokensError::Yaml)?;
        let entries = match value {
            Value::Sequence(entries) => entries,
            // An empty file reads as null: no tokens, which is a valid (if useless) configuration.
            Value::Null => Vec::new(),
            _ => return Err(StaticTokensError::NotAList),
        };
        let mut identities: Vec<StaticIdentity> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let number = index + 1;
            let problem = |problem: String| StaticTokensError::Entry {
                entry: number,
                problem,
            };
            let identity = parse_entry(entry).map_err(problem)?;
            if let Some(first) = identities
                .iter()
                .position(|other| other.digest == identity.digest)
            {
                return Err(problem(format!(
                    "the token is the same as entry {}'s",
                    first + 1
                )));
            }
            identities.push(identity);
        }
        Ok(Self { identities })
    }

    /// The username and groups of the entry whose token equals `token`.
    pub(crate) fn find(&self, token: &str) -> Option<(&str, &[String])> {
        // Comparing equal-length digests keeps the comparison independent of the token's length;
        // every entry is compared so the time does not tell which entry matched.
        let wanted = digest(token);
        let mut found = None;
        for identity in &self.identities {
            if bool::from(identity.digest.ct_eq(&wanted)) {
                found = Some(identity);
            }
        }
        found.map(|identity| (identity.username.as_str(), identity.groups.as_slice()))
    }

    pub(crate) fn len(&self) -> usize {
        self.identities.len()
    }
}

fn parse_entry(entry: &Value) -> Result<StaticIdentity, String> {
    let Value::Mapping(map) = entry else {
        return Err("must be a mapping with token, username and groups".to_owned());
    };
    for key in map.keys() {
        match key.as_str() {
            Some("token" | "username" | "groups") => {}
            Some(other) => {
                return Err(format!(
                    "unknown field {other:?} (expected token, username, groups)"
                ));
            }
            None => return Err("field names must be strings".to_owned()),
        }
    }
    let token = match map.get("token") {
        None => return Err("missing field `token`".to_owned()),
        Some(Value::String(token)) => token,
        Some(_) => return Err("token must be a string".to_owned()),
    };
    if token.trim().is_empty() || token.trim() != token || token.contains(char::is_whitespace) {
        return Err("token must be non-empty and contain no whitespace".to_owned());
    }
    if token.starts_with(KEY_PREFIX) {
        // Such a token would always be taken for an API key and never reach this file.
        return Err(format!("token must not start with {KEY_PREFIX:?}"));
    }
    let username = match map.get("username") {
        None => return Err("missing field `username`".to_owned()),
        Some(Value::String(username)) => username,
        Some(_) => return Err("username must be a string".to_owned()),
    };
    if username.trim().is_empty() || username.chars().any(char::is_control) {
        return Err(format!(
            "username {username:?} must be non-empty, without control characters"
        ));
    }
    let groups = match map.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(groups)) => {
            let mut out: Vec<String> = Vec::with_capacity(groups.len());
            for (i, group) in groups.iter().enumerate() {
                let Value::String(group) = group else {
                    return Err(format!("groups[{i}] must be a string"));
                };
                if validate_group_name(group).is_err() {
                    return Err(format!("groups[{i}] {group:?} is not a valid group name"));
                }
                if !out.contains(group) {
                    out.push(group.clone());
                }
            }
            out
        }
        Some(_) => return Err("groups must be a list of strings".to_owned()),
    };
    Ok(StaticIdentity {
        digest: digest(token),
        username: username.clone(),
        groups,
    })
}
