//! The `sk-oai-{key_id}_{secret}` API key: generation, format check and the stored SHA-256 hash.
//!
//! Byte-for-byte compatible with upstream maas-api: base62 (`0-9A-Za-z`, big-integer conversion,
//! no zero padding) of a 96-bit key id and a 256-bit secret, hashed as
//! `lowercase_hex(SHA-256(key_id ‖ 0x00 ‖ secret))`.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "sk-oai-";
/// Separates the key id from the secret (the first occurrence counts).
const SEPARATOR: char = '_';
/// 96 bits of key id.
const KEY_ID_BYTES: usize = 12;
/// 256 bits of secret.
const SECRET_BYTES: usize = 32;
/// ⌈96 / log2(62)⌉: no generated key id is longer.
pub const MAX_KEY_ID_LEN: usize = 17;
/// ⌈256 / log2(62)⌉: no generated secret is longer.
pub const MAX_SECRET_LEN: usize = 43;
/// The longest well-formed key; anything longer is rejected before any other work.
pub const MAX_KEY_LEN: usize = KEY_PREFIX.len() + MAX_KEY_ID_LEN + 1 + MAX_SECRET_LEN;
/// How many key-id characters the display prefix shows (`sk-oai-` + 12 chars + `...`).
const DISPLAY_KEY_ID_CHARS: usize = 12;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed key. Never carries the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    #[error("the key does not start with {KEY_PREFIX}")]
    MissingPrefix,
    #[error("the key has no '_' between key id and secret")]
    MissingSeparator,
    #[error("the key id is empty or longer than {MAX_KEY_ID_LEN} characters")]
    BadKeyIdLength,
    #[error("the secret is empty or longer than {MAX_SECRET_LEN} characters")]
    BadSecretLength,
    #[error("the key contains a character outside 0-9A-Za-z")]
    NotBase62,
}

/// A well-formed API key. Holds the secret, so it never prints it and wipes it on drop.
pub struct ApiKey {
    /// The whole plaintext key; `key_id` and `secret` are ranges into it.
    text: Zeroizing<String>,
    separator_at: usize,
}

impl ApiKey {
    /// Checks the format only: prefix, one separator, both parts non-empty base62 of plausible
    /// length. Cheap and allocation-free on rejection, so junk traffic costs no hashing or I/O.
    pub fn parse(candidate: &str) -> Result<Self, KeyFormatError> {
        let separator_at = check_format(candidate)?;
        Ok(Self {
            text: Zeroizing::new(candidate.to_owned()),
            separator_at,
        })
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key_id = Zeroizing::new([0u8; KEY_ID_BYTES]);
        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        getrandom::fill(key_id.as_mut())?;
        getrandom::fill(secret.as_mut())?;
        let key_id = base62(key_id.as_ref());
        let secret = base62(secret.as_ref());
        let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_LEN));
        text.push_str(KEY_PREFIX);
        text.push_str(&key_id);
        text.push(SEPARATOR);
        text.push_str(&secret);
        Ok(Self {
            separator_at: KEY_PREFIX.len() + key_id.len(),
            text,
        })
    }

    /// The plaintext, for showing once at mint time. Never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The public key id embedded in the key (not secret; not the database id).
    pub fn key_id(&self) -> &str {
        &self.text[KEY_PREFIX.len()..self.separator_at]
    }

    fn secret(&self) -> &str {
        &self.text[self.separator_at + 1..]
    }

    /// The stored hash: SHA-256 over key id, one NUL byte, secret.
    pub fn hash(&self) -> KeyHash {
        let mut hasher = Sha256::new();
        hasher.update(self.key_id().as_bytes());
        hasher.update([0u8]);
        hasher.update(self.secret().as_bytes());
        KeyHash(hasher.finalize().into())
    }

    /// A non-secret display form, e.g. `sk-oai-4fQ2kd9XyZab...`.
    pub fn display_prefix(&self) -> String {
        let key_id = self.key_id();
        let shown = &key_id[..key_id.len().min(DISPLAY_KEY_ID_CHARS)];
        format!("{KEY_PREFIX}{shown}...")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("key_id", &self.key_id())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Validates the shape of a candidate key and returns the separator's byte offset.
fn check_format(candidate: &str) -> Result<usize, KeyFormatError> {
    if candidate.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    if candidate.len() > MAX_KEY_LEN {
        return Err(KeyFormatError::TooLong);
    }
    let rest = candidate
        .strip_prefix(KEY_PREFIX)
        .ok_or(KeyFormatError::MissingPrefix)?;
    let split = rest
        .find(SEPARATOR)
        .ok_or(KeyFormatError::MissingSeparator)?;
    let (key_id, secret) = (&rest[..split], &rest[split + 1..]);
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
        return Err(KeyFormatError::BadKeyIdLength);
    }
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Err(KeyFormatError::BadSecretLength);
    }
    let base62_only = |part: &str| part.bytes().all(|b| b.is_ascii_alphanumeric());
    if !base62_only(key_id) || !base62_only(secret) {
        return Err(KeyFormatError::NotBase62);
    }
    Ok(KEY_PREFIX.len() + split)
}

/// Big-endian bytes as a base62 number, most significant digit first, without zero padding.
fn base62(bytes: &[u8]) -> Zeroizing<String> {
    let mut number = Zeroizing::new(bytes.to_vec());
    let mut digits = Zeroizing::new(Vec::with_capacity(MAX_SECRET_LEN));
    // Repeated long division by 62 over the big-endian byte string.
    while number.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let accumulator = (remainder << 8) | u32::from(*byte);
            *byte = (accumulator / 62) as u8;
            remainder = accumulator % 62;
        }
        digits.push(BASE62[remainder as usize]);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    let mut text = Zeroizing::new(String::with_capacity(digits.len()));
    text.extend(digits.iter().rev().map(|&d| char::from(d)));
    text
}

/// The lowercase-hex SHA-256 stored in `api_keys.key_hash`. Not secret, but compared in
/// constant time anyway wherever it is compared directly.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Parses the 64-character lowercase hex form read from the database.
    pub fn from_hex(hex_text: &str) -> Result<Self, KeyHashError> {
        if hex_text.len() != 64 || hex_text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(KeyHashError);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut bytes).map_err(|_| KeyHashError)?;
        Ok(Self(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The digest itself (not secret: it is what the database stores).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality, for comparing a computed digest with a stored one.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits identify an entry in logs without printing the whole digest.
        write!(f, "KeyHash({}…)", &hex::encode(&self.0[..4]))
    }
}

/// A stored hash that is not 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key hash is not 64 lowercase hex digits")]
pub struct KeyHashError;

impl Drop for ApiKey {
    fn drop(&mut self) {
        // `Zeroizing` wipes the text; the offset is harmless but cleared for tidiness.
        self.separator_at.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_upstream_shape() {
        for _ in 0..200 {
            let key = ApiKey::generate().unwrap();
            let text = key.expose();
            assert!(text.starts_with("sk-oai-"));
            assert!(
                (14..=MAX_KEY_ID_LEN).contains(&key.key_id().len()),
                "{}",
                key.key_id().len()
            );
            assert!((38..=MAX_SECRET_LEN).contains(&key.secret().len()));
            let reparsed = ApiKey::parse(text).unwrap();
            assert_eq!(reparsed.hash(), key.hash());
        }
    }

    #[test]
    fn two_generated_keys_differ() {
        let (a, b) = (ApiKey::generate().unwrap(), ApiKey::generate().unwrap());
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn hash_is_sha256_of_key_id_nul_secret_in_lowercase_hex() {
        // Independently computed: printf 'abc\0def' | sha256sum
        let key = ApiKey::parse("sk-oai-abc_def").unwrap();
        assert_eq!(
            key.hash().to_hex(),
            "516a5e926ce20c5f4d80f00e1a01abdf14986def6588d6abeed9fce090bc660c"
        );
    }

    #[test]
    fn base62_has_no_zero_padding_and_matches_big_integer_conversion() {
        assert_eq!(base62(&[0, 0, 1]).as_str(), "1");
        assert_eq!(base62(&[0, 62]).as_str(), "10");
        assert_eq!(base62(&[0xff, 0xff]).as_str(), "H31"); // 65535 = 17*3844 + 3*62 + 1
        assert_eq!(base62(&[0]).as_str(), "0");
    }

    #[test]
    fn parse_rejects_each_malformed_shape_with_its_reason() {
        let cases: &[(&str, KeyFormatError)] = &[
            ("", KeyFormatError::Empty),
            ("sk-oai-", KeyFormatError::MissingSeparator),
            ("sk-live-abc_def", KeyFormatError::MissingPrefix),
            ("SK-OAI-abc_def", KeyFormatError::MissingPrefix),
            ("sk-oai-abcdef", KeyFormatError::MissingSeparator),
            ("sk-oai-_def", KeyFormatError::BadKeyIdLength),
            ("sk-oai-abc_", KeyFormatError::BadSecretLength),
            ("sk-oai-abc_de_f", KeyFormatError::NotBase62),
            ("sk-oai-abc_dé", KeyFormatError::NotBase62),
            ("sk-oai-ab c_def", KeyFormatError::NotBase62),
            ("sk-oai-abc_def\n", KeyFormatError::NotBase62),
            (
                "sk-oai-aaaaaaaaaaaaaaaaaa_def",
                KeyFormatError::BadKeyIdLength,
            ),
        ];
        for (candidate, expected) in cases {
            assert_eq!(
                ApiKey::parse(candidate).err(),
                Some(*expected),
                "{candidate:?}"
            );
        }
        let oversized = format!("sk-oai-abc_{}", "a".repeat(10_000));
        assert_eq!(
            ApiKey::parse(&oversized).err(),
            Some(KeyFormatError::TooLong)
        );
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = ApiKey::generate().unwrap();
        let printed = format!("{key:?}");
        assert!(!printed.contains(key.secret()));
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn display_prefix_shows_twelve_key_id_characters() {
        let key = ApiKey::parse("sk-oai-0123456789ABCDEF_secret").unwrap();
        assert_eq!(key.display_prefix(), "sk-oai-0123456789AB...");
    }

    #[test]
    fn key_hash_round_trips_through_hex_and_rejects_uppercase() {
        let hash = ApiKey::parse("sk-oai-abc_def").unwrap().hash();
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Ok(hash));
        assert!(KeyHash::from_hex(&hash.to_hex().to_uppercase()).is_err());
        assert!(KeyHash::from_hex("abc").is_err());
        assert!(hash.ct_eq(&hash));
    }
}
