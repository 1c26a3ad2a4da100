//! Check's signed statement of whom a request is charged to: the only identity the token meter trusts.
//!
//! The token meter charges tokens to an identity. Whoever can reach the gRPC port can open an
//! ext_proc stream and claim any identity, so the meter must not take the identity from what the
//! caller says (dynamic metadata, `x-maas-*` headers). Instead Check, on every allow, stamps an
//! [`IdentityAssertion`] signed with HMAC-SHA256 under a key the replicas share
//! (`MAAS_AUTHZ_IDENTITY_SIGNING_KEYS`), in the request header [`HEADER_IDENTITY_ASSERTION`].
//! Envoy passes the request, header included, to the meter, which verifies it and removes it
//! before the model server sees the request. Nothing else can produce a valid assertion.
//!
//! Wire form: `v1.<key id>.<base64url(JSON claims)>.<base64url(HMAC-SHA256(v1.<key id>.<claims>))>`.
//! An assertion is valid for [`MAX_AGE`] after it was issued (the meter reads it as the request
//! starts, right after Check), allowing [`MAX_CLOCK_SKEW`] between replicas.
//!
//! Rotation without downtime: the first key signs, every listed key verifies. Add the new key
//! second on every replica, then move it first, then drop the old one.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The request header that carries the assertion from Check to the meter.
pub const HEADER_IDENTITY_ASSERTION: &str = "x-maas-identity-assertion";
/// How long after its issue an assertion is accepted.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// How far in the future an assertion's issue time may be (clocks of two replicas).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Shortest secret accepted: 256 bits, HMAC-SHA256's strength.
pub const MIN_SECRET_BYTES: usize = 32;

const VERSION: &str = "v1";

/// What Check allowed: who is charged and for which model. Contains no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityAssertion {
    /// The key owner's username.
    #[serde(rename = "u")]
    pub user: String,
    /// Upstream's `<subNs>/<subName>@<modelNs>/<modelName>`; empty when no model was named.
    #[serde(rename = "s")]
    pub subscription_key: String,
    /// The model Check authorized, `<namespace>/<name>` of its MaaSModelRef; empty on a
    /// configured model-free path.
    #[serde(rename = "m")]
    pub model: String,
    /// The API key's id.
    #[serde(rename = "k")]
    pub key_id: String,
    /// Issue time, seconds since the Unix epoch.
    #[serde(rename = "t")]
    pub issued_at: i64,
}

/// Why an assertion is refused; `as_str` is the metric label and `x-ext-auth-reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AssertionError {
    #[error("the request carries no identity assertion from Check")]
    Missing,
    #[error("the identity assertion is malformed")]
    Malformed,
    #[error("the identity assertion is signed with an unknown key")]
    UnknownKey,
    #[error("the identity assertion's signature does not match")]
    BadSignature,
    #[error("the identity assertion has expired or is not yet valid")]
    Expired,
}

impl AssertionError {
    pub const ALL: [AssertionError; 5] = [
        AssertionError::Missing,
        AssertionError::Malformed,
        AssertionError::UnknownKey,
        AssertionError::BadSignature,
        AssertionError::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AssertionError::Missing => "identity_missing",
            AssertionError::Malformed => "identity_malformed",
            AssertionError::UnknownKey => "identity_unknown_key",
            AssertionError::BadSignature => "identity_bad_signature",
            AssertionError::Expired => "identity_expired",
        }
    }
}

/// A `MAAS_AUTHZ_IDENTITY_SIGNING_KEYS` value that cannot be used. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    #[error("no key given: expected comma-separated <key id>=<secret> entries")]
    Empty,
    #[error("entry {position} is not <key id>=<secret>")]
    NotAPair { position: usize },
    #[error(
        "entry {position}: the key id must be 1 to 32 letters, digits, '-' or '_' (got {id:?})"
    )]
    BadId { position: usize, id: String },
    #[error(
        "entry {position} (key id {id:?}): the secret must be at least {MIN_SECRET_BYTES} bytes"
    )]
    ShortSecret { position: usize, id: String },
    #[error("key id {id:?} is listed twice")]
    DuplicateId { id: String },
    #[error("could not generate a random key: {0}")]
    Random(String),
}

/// The keys that sign (the first) and verify (all) assertions. `Debug` shows only key ids.
#[derive(Clone)]
pub struct SigningKeys {
    keys: Vec<SigningKey>,
    /// True for a key made up at start-up: replicas cannot share it.
    ephemeral: bool,
}

#[derive(Clone)]
struct SigningKey {
    id: String,
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .field("ephemeral", &self.ephemeral)
            .finish()
    }
}

impl SigningKeys {
    /// Parses `id=secret[,id=secret...]`; the first entry signs.
    pub fn parse(spec: &str) -> Result<Self, SigningKeyError> {
        let mut keys: Vec<SigningKey> = Vec::new();
        for (index, entry) in spec.split(',').enumerate() {
            let position = index + 1;
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (id, secret) = entry
                .split_once('=')
                .ok_or(SigningKeyError::NotAPair { position })?;
            let id = id.trim();
            let valid_id = (1..=32).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                return Err(SigningKeyError::BadId {
                    position,
                    id: id.chars().take(40).collect(),
                });
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(SigningKeyError::ShortSecret {
                    position,
                    id: id.to_owned(),
                });
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(SigningKeyError::DuplicateId { id: id.to_owned() });
            }
            keys.push(SigningKey {
                id: id.to_owned(),
                secret: Zeroizing::new(secret.as_bytes().to_vec()),
            });
        }
        if keys.is_empty() {
            return Err(SigningKeyError::Empty);
        }
        Ok(Self {
            keys,
            ephemeral: false,
        })
    }

    /// A random key for this process only: fine for one replica, refused by any other.
    pub fn ephemeral() -> Result<Self, SigningKeyError> {
        let mut secret = Zeroizing::new(vec![0u8; MIN_SECRET_BYTES]);
        getrandom::fill(&mut secret).map_err(|e| SigningKeyError::Random(e.to_string()))?;
        Ok(Self {
            keys: vec![SigningKey {
                id: "ephemeral".to_owned(),
                secret,
            }],
            ephemeral: true,
        })
    }

    /// Whether these keys were made up at start-up (`MAAS_AUTHZ_IDENTITY_SIGNING_KEYS` unset).
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The id of the key that signs.
    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// The assertion's wire form, signed with the first key.
    pub fn sign(&self, assertion: &IdentityAssertion) -> String {
        let key = &self.keys[0];
        let claims = serde_json::to_vec(assertion).unwrap_or_default();
        let mut token = format!("{VERSION}.{}.", key.id);
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let tag = mac(&key.secret, token.as_bytes()).finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// Checks the signature (in constant time) and the age at `now_unix` (seconds).
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<IdentityAssertion, AssertionError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(AssertionError::Malformed)?;
        let mut parts = signed.split('.');
        let (Some(version), Some(id), Some(claims), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AssertionError::Malformed);
        };
        if version != VERSION {
            return Err(AssertionError::Malformed);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(AssertionError::UnknownKey)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| AssertionError::Malformed)?;
        mac(&key.secret, signed.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| AssertionError::BadSignature)?;
        let claims = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| AssertionError::Malformed)?;
        let assertion: IdentityAssertion =
            serde_json::from_slice(&claims).map_err(|_| AssertionError::Malformed)?;
        let age = now_unix.saturating_sub(assertion.issued_at);
        if age > MAX_AGE.as_secs() as i64 || -age > MAX_CLOCK_SKEW.as_secs() as i64 {
            return Err(AssertionError::Expired);
        }
        Ok(assertion)
    }
}

fn mac(secret: &[u8], message: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(message);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "a-secret-of-at-least-thirty-two-bytes-0001";
    const SECRET_B: &str = "b-secret-of-at-least-thirty-two-bytes-0002";

    fn assertion(issued_at: i64) -> IdentityAssertion {
        IdentityAssertion {
            user: "alice".to_owned(),
            subscription_key: "maas/free@llm/simulator".to_owned(),
            model: "llm/simulator".to_owned(),
            key_id: "3f0c".to_owned(),
            issued_at,
        }
    }

    fn keys(spec: &str) -> SigningKeys {
        SigningKeys::parse(spec).unwrap()
    }

    #[test]
    fn a_signed_assertion_verifies_and_reads_back() {
        let keys = keys(&format!("a={SECRET_A}"));
        let token = keys.sign(&assertion(1_000));
        assert!(token.starts_with("v1.a."));
        assert_eq!(keys.verify(&token, 1_010), Ok(assertion(1_000)));
    }

    #[test]
    fn any_change_to_the_token_breaks_the_signature() {
        let keys = keys(&format!("a={SECRET_A}"));
        let token = keys.sign(&assertion(1_000));
        let mut forged = assertion(1_000);
        forged.user = "bob".to_owned();
        let forged_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let swapped = format!("v1.a.{forged_claims}.{}", parts[3]);
        assert_eq!(
            keys.verify(&swapped, 1_000),
            Err(AssertionError::BadSignature)
        );
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            keys.verify(std::str::from_utf8(&flipped).unwrap(), 1_000)
                .is_err()
        );
    }

    #[test]
    fn another_deployments_key_is_unknown_and_a_same_id_other_secret_does_not_verify() {
        let ours = keys(&format!("a={SECRET_A}"));
        let theirs = keys(&format!("b={SECRET_B}"));
        let impostor = keys(&format!("a={SECRET_B}"));
        assert_eq!(
            ours.verify(&theirs.sign(&assertion(5)), 5),
            Err(AssertionError::UnknownKey)
        );
        assert_eq!(
            ours.verify(&impostor.sign(&assertion(5)), 5),
            Err(AssertionError::BadSignature)
        );
    }

    #[test]
    fn rotation_verifies_both_keys_and_signs_with_the_first() {
        let old = keys(&format!("a={SECRET_A}"));
        let rotating = keys(&format!("b={SECRET_B},a={SECRET_A}"));
        assert_eq!(rotating.signing_key_id(), "b");
        assert!(rotating.verify(&old.sign(&assertion(5)), 5).is_ok());
        assert!(old.verify(&rotating.sign(&assertion(5)), 5).is_err());
    }

    #[test]
    fn old_and_future_assertions_are_expired() {
        let keys = keys(&format!("a={SECRET_A}"));
        let token = keys.sign(&assertion(10_000));
        assert!(keys.verify(&token, 10_000 + 300).is_ok());
        assert_eq!(
            keys.verify(&token, 10_000 + 301),
            Err(AssertionError::Expired)
        );
        assert!(keys.verify(&token, 10_000 - 60).is_ok());
        assert_eq!(
            keys.verify(&token, 10_000 - 61),
            Err(AssertionError::Expired)
        );
    }

    #[test]
    fn junk_is_malformed() {
        let keys = keys(&format!("a={SECRET_A}"));
        for junk in [
            "",
            "v1",
            "v1.a",
            "v1.a.b",
            "v2.a.e30.AAAA",
            "v1.a.!!.AAAA",
            "a.b.c.d.e",
        ] {
            assert!(keys.verify(junk, 0).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn bad_key_lists_are_refused_without_echoing_secrets() {
        let cases = [
            ("", SigningKeyError::Empty),
            (" , ", SigningKeyError::Empty),
            ("nosecret", SigningKeyError::NotAPair { position: 1 }),
            (
                "a=short",
                SigningKeyError::ShortSecret {
                    position: 1,
                    id: "a".to_owned(),
                },
            ),
            (
                &format!("bad id={SECRET_A}"),
                SigningKeyError::BadId {
                    position: 1,
                    id: "bad id".to_owned(),
                },
            ),
            (
                &format!("a={SECRET_A},a={SECRET_B}"),
                SigningKeyError::DuplicateId { id: "a".to_owned() },
            ),
        ];
        for (spec, expected) in cases {
            let error = SigningKeys::parse(spec).unwrap_err();
            assert_eq!(error, expected, "{spec:?}");
            let text = error.to_string();
            assert!(
                !text.contains(SECRET_A) && !text.contains("short"),
                "{text}"
            );
        }
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let keys = keys(&format!("a={SECRET_A}"));
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("\"a\"") && !shown.contains(SECRET_A),
            "{shown}"
        );
    }

    #[test]
    fn an_ephemeral_key_signs_and_verifies_its_own_assertions() {
        let keys = SigningKeys::ephemeral().unwrap();
        assert!(keys.is_ephemeral());
        assert!(keys.verify(&keys.sign(&assertion(7)), 7).is_ok());
    }
}
