//! The one reading of `Authorization: Bearer <token>`, shared by Check and the REST API.
//!
//! The rule (RFC 6750 §2.1, read leniently where that costs nothing):
//! - blanks around the whole header are ignored;
//! - the scheme is `Bearer` in any letter case, followed by at least one space (more are
//!   allowed; a tab or no separator at all is not `Bearer <token>`);
//! - the token is the rest without its surrounding blanks, and must not be empty;
//! - a token with a blank inside it is refused: no credential this service issues or accepts
//!   (API keys, static tokens, JWTs, Kubernetes tokens) contains one, and Envoy joins repeated
//!   headers with `,` so `Bearer a,Bearer b` would be one such token.
//!
//! Every refusal says why (`BearerError`); each caller maps the reasons to its own answer.

/// Why a header value is not `Bearer <token>`. Never shows the token (it may be a secret).
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError<'a> {
    /// The header is empty or only blanks.
    #[error("the Authorization header is blank")]
    Blank,
    /// No `Bearer ` scheme (another scheme, or no space after it).
    #[error("the Authorization header must be 'Bearer <token>'")]
    NotBearer,
    /// `Bearer` with nothing after it.
    #[error("the Authorization header has no token after 'Bearer'")]
    BlankToken,
    /// A token with a blank inside it. It is carried so that a caller that judges tokens itself
    /// (Check, whose key parser refuses it with its own reason) can answer as it always has.
    #[error("the bearer token contains a blank")]
    BlankInToken { token: &'a str },
}

impl std::fmt::Debug for BearerError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            BearerError::Blank => "Blank",
            BearerError::NotBearer => "NotBearer",
            BearerError::BlankToken => "BlankToken",
            BearerError::BlankInToken { .. } => "BlankInToken { token: <redacted> }",
        };
        f.write_str(name)
    }
}

/// The token of `header` read by the module's rule.
#[inline]
pub fn bearer_token(header: &str) -> Result<&str, BearerError<'_>> {
    let header = header.trim();
    if header.is_empty() {
        return Err(BearerError::Blank);
    }
    // No space at all: the whole header is the scheme (`Bearer` alone has a blank token).
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::NotBearer);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(BearerError::BlankToken);
    }
    if has_blank(token) {
        return Err(BearerError::BlankInToken { token });
    }
    Ok(token)
}

/// Whether `token` has a blank (`char::is_whitespace`) inside. This runs on every Check: a
/// branch-free pass over the bytes (every blank is a byte up to `' '` or part of a non-ASCII
/// character) rules out nearly every token before a single character is decoded.
#[inline]
fn has_blank(token: &str) -> bool {
    let suspect = token
        .bytes()
        .fold(false, |seen, byte| seen | (byte <= b' ') | (byte >= 0x80));
    suspect && token.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_header_gives_its_token() {
        assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
    }

    #[test]
    fn the_scheme_is_read_in_any_letter_case() {
        assert_eq!(bearer_token("bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("BEARER abc"), Ok("abc"));
        assert_eq!(bearer_token("bEaReR abc"), Ok("abc"));
    }

    #[test]
    fn blanks_around_the_header_and_between_scheme_and_token_are_ignored() {
        assert_eq!(bearer_token("  Bearer abc  "), Ok("abc"));
        assert_eq!(bearer_token("bearer   abc  "), Ok("abc"));
        assert_eq!(bearer_token("Bearer \t abc"), Ok("abc"));
    }

    #[test]
    fn a_blank_header_is_blank() {
        assert_eq!(bearer_token(""), Err(BearerError::Blank));
        assert_eq!(bearer_token("   "), Err(BearerError::Blank));
    }

    #[test]
    fn another_scheme_or_no_scheme_is_not_bearer() {
        assert_eq!(bearer_token("Basic abc"), Err(BearerError::NotBearer));
        assert_eq!(bearer_token("abc"), Err(BearerError::NotBearer));
        assert_eq!(bearer_token("sk-oai-abc_def"), Err(BearerError::NotBearer));
        assert_eq!(bearer_token("Bearer\tabc"), Err(BearerError::NotBearer));
        assert_eq!(bearer_token("Bearerabc x"), Err(BearerError::NotBearer));
    }

    #[test]
    fn bearer_without_a_token_is_a_blank_token() {
        assert_eq!(bearer_token("Bearer"), Err(BearerError::BlankToken));
        assert_eq!(bearer_token("Bearer "), Err(BearerError::BlankToken));
        assert_eq!(bearer_token("bearer  \t "), Err(BearerError::BlankToken));
    }

    #[test]
    fn a_token_with_a_blank_inside_is_refused_but_carried() {
        assert_eq!(
            bearer_token("Bearer a b"),
            Err(BearerError::BlankInToken { token: "a b" })
        );
        assert_eq!(
            bearer_token("Bearer sk-oai-a_b,Bearer sk-oai-c_d"),
            Err(BearerError::BlankInToken {
                token: "sk-oai-a_b,Bearer sk-oai-c_d"
            })
        );
    }

    #[test]
    fn unicode_blanks_inside_count_and_other_characters_do_not() {
        assert_eq!(
            bearer_token("Bearer a\u{a0}b"),
            Err(BearerError::BlankInToken { token: "a\u{a0}b" })
        );
        assert_eq!(
            bearer_token("Bearer a\u{3000}b"),
            Err(BearerError::BlankInToken {
                token: "a\u{3000}b"
            })
        );
        assert_eq!(bearer_token("Bearer a\u{e9}b"), Ok("a\u{e9}b"));
        assert_eq!(bearer_token("Bearer a\u{0}b"), Ok("a\u{0}b"));
    }

    #[test]
    fn the_debug_form_never_shows_the_token() {
        let error = bearer_token("Bearer secret-part other-part").unwrap_err();
        let shown = format!("{error:?} {error}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
