//! The static token file: a YAML list of `{token, username, groups}` for local runs and demos.

use std::path::Path;

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

impl StaticTokens {
    pub(crate) fn load(path: &Path) -> Result<Self, StaticTokensError> {
        let text = std::fs::read_to_string(path).map_err(StaticTokensError::Read)?;
        Self::parse(&text)
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
