//! Request paths read the way model servers read them: canonical or refused, then the model and API they name.
//!
//! Check authorizes the model a path names, and the model server later picks the model from the
//! same path. If the two read the path differently, a key granted one model reaches another:
//! uvicorn percent-decodes (`/llm/qwen3%2Fv1/...`), some frameworks resolve dot segments
//! (`/llm/simulator/../qwen3/v1/...`), merge slashes, strip `;` parameters or trailing dots,
//! treat `\` as `/` or match routes case-insensitively (`/V1/`). Rather than guess which reading
//! a backend uses, only paths that every reading agrees on are accepted: a [`CanonicalPath`] has
//! nothing a decoder, normaliser or router could change. Anything else is refused before any key
//! work (400, `non_canonical_path`); a well-behaved client never sends such a path.
//!
//! The token meter reads the endpoint (`/v1/chat/completions`, ...) from the same type, so Check
//! and the meter cannot disagree about what a path calls.

/// Why a path is not canonical. [`NonCanonicalPath::message`] is shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonCanonicalPath {
    NotAbsolute,
    EmptySegment,
    DotSegment,
    TrailingDot,
    Parameter,
    Backslash,
    BadCharacter,
    BadPercentEncoding,
    EncodedCharacter,
    VersionCase,
}

impl NonCanonicalPath {
    /// What is wrong, for the client's error message.
    pub fn message(self) -> &'static str {
        match self {
            NonCanonicalPath::NotAbsolute => "the path must start with '/'",
            NonCanonicalPath::EmptySegment => "the path has an empty segment ('//')",
            NonCanonicalPath::DotSegment => "the path has a dot segment ('.' or '..')",
            NonCanonicalPath::TrailingDot => "a path segment ends with '.'",
            NonCanonicalPath::Parameter => "the path has a ';' parameter",
            NonCanonicalPath::Backslash => "the path has a backslash",
            NonCanonicalPath::BadCharacter => {
                "the path has a space, control, non-ASCII or other character that must not appear in a URL path"
            }
            NonCanonicalPath::BadPercentEncoding => "the path has an invalid percent-encoding",
            NonCanonicalPath::EncodedCharacter => {
                "the path percent-encodes a character that must be sent as is ('/', '\\', '%', ';', a letter, digit, '-', '.', '_', '~', or a non-printable byte)"
            }
            NonCanonicalPath::VersionCase => "the API version segment must be 'v1', in lowercase",
        }
    }
}

impl std::fmt::Display for NonCanonicalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for NonCanonicalPath {}

/// A path (query string removed) that reads the same to every decoder and router; see the module
/// documentation for what that excludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    path: &'a str,
}

/// The model a path names: `/<namespace>/<name>/v1/...` or `/<name>/v1/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathModel<'a> {
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

/// The API version segment every model path carries before the endpoint.
const VERSION: &str = "v1";

impl<'a> CanonicalPath<'a> {
    /// Checks a request path as Envoy reports it (`:path`, query string included).
    pub fn parse(raw: &'a str) -> Result<Self, NonCanonicalPath> {
        let path = raw.split_once('?').map_or(raw, |(path, _query)| path);
        let Some(rest) = path.strip_prefix('/') else {
            return Err(NonCanonicalPath::NotAbsolute);
        };
        check_characters(path)?;
        // One trailing slash is harmless (`/v1/models/`); any other empty segment is `//`.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Ok(Self { path });
        }
        for segment in rest.split('/') {
            check_segment(segment)?;
        }
        Ok(Self { path })
    }

    /// The path without its query string.
    pub fn as_str(&self) -> &'a str {
        self.path
    }

    /// The model the path names, if it has one of the two model forms; `None` for `/v1/...`,
    /// `/maas-api/...` and anything else.
    pub fn model(&self) -> Option<PathModel<'a>> {
        let mut segments = self.segments();
        let first = segments.next()?;
        if first == VERSION || first == "maas-api" {
            return None;
        }
        let second = segments.next()?;
        if second == VERSION {
            return Some(PathModel {
                namespace: None,
                name: first,
            });
        }
        (segments.next()? == VERSION).then_some(PathModel {
            namespace: Some(first),
            name: second,
        })
    }

    /// The API the path calls: from its first `v1` segment on (`/v1/chat/completions` for
    /// `/llm/qwen3/v1/chat/completions`), or the whole path when it has no `v1` segment (a route
    /// whose model the gateway knows may call `/invocations`).
    pub fn api(&self) -> &'a str {
        let mut offset: usize = 0;
        for segment in self.path.split('/') {
            if segment == VERSION {
                return &self.path[offset.saturating_sub(1)..];
            }
            offset += segment.len() + 1;
        }
        self.path
    }

    /// `GET /v1/models` and `/v1/models/{id}` under a model: discovery, never counted or metered.
    pub fn is_model_listing(&self) -> bool {
        let api = self.api();
        let api = api.strip_suffix('/').unwrap_or(api);
        api == "/v1/models" || api.starts_with("/v1/models/")
    }

    /// Whether this path is `prefix` or lies under it, segment-aligned (`/tools` matches
    /// `/tools` and `/tools/x`, not `/toolsx`).
    pub fn is_under(&self, prefix: &str) -> bool {
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        match self.path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
            None => false,
        }
    }

    fn segments(&self) -> impl Iterator<Item = &'a str> {
        self.path.split('/').filter(|s| !s.is_empty())
    }
}

/// Paths on which a valid key is enough: the operator's explicit list of routes that reach no
/// model (`MAAS_AUTHZ_MODEL_FREE_PATHS`; empty by default). Anything else that names no model is
/// refused, so a route the operator forgot cannot become a way around the model check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFreePaths {
    prefixes: Vec<String>,
}

/// A model-free path entry that cannot be used; the message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelFreePathError {
    #[error("{entry:?} is not a canonical path: {reason}")]
    NotCanonical {
        entry: String,
        reason: NonCanonicalPath,
    },
    #[error("{entry:?} would make every path model-free")]
    Everything { entry: String },
    #[error("{entry:?} names a model (/<model>/v1/...): model routes are always checked")]
    NamesAModel { entry: String },
}

impl ModelFreePaths {
    /// Comma-separated canonical paths; each matches itself and everything under it.
    pub fn parse(list: &str) -> Result<Self, ModelFreePathError> {
        let mut prefixes = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let path =
                CanonicalPath::parse(entry).map_err(|reason| ModelFreePathError::NotCanonical {
                    entry: entry.to_owned(),
                    reason,
                })?;
            if entry.contains('?') {
                return Err(ModelFreePathError::NotCanonical {
                    entry: entry.to_owned(),
                    reason: NonCanonicalPath::BadCharacter,
                });
            }
            if path.as_str().trim_end_matches('/').is_empty() {
                return Err(ModelFreePathError::Everything {
                    entry: entry.to_owned(),
                });
            }
            if path.model().is_some() {
                return Err(ModelFreePathError::NamesAModel {
                    entry: entry.to_owned(),
                });
            }
            prefixes.push(path.as_str().trim_end_matches('/').to_owned());
        }
        Ok(Self { prefixes })
    }

    /// Whether `path` is one of the listed paths or under one.
    pub fn contains(&self, path: &CanonicalPath<'_>) -> bool {
        self.prefixes.iter().any(|prefix| path.is_under(prefix))
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }
}

/// Every byte of the path is allowed raw, or is a percent-encoding of a character that no
/// reading of the path could turn into structure.
fn check_characters(path: &str) -> Result<(), NonCanonicalPath> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'%' => {
                let (Some(&high), Some(&low)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(NonCanonicalPath::BadPercentEncoding);
                };
                let (Some(high), Some(low)) = (hex_value(high), hex_value(low)) else {
                    return Err(NonCanonicalPath::BadPercentEncoding);
                };
                if !may_be_encoded(high << 4 | low) {
                    return Err(NonCanonicalPath::EncodedCharacter);
                }
                i += 3;
                continue;
            }
            b';' => return Err(NonCanonicalPath::Parameter),
            b'\\' => return Err(NonCanonicalPath::Backslash),
            _ if is_unreserved(byte) || b"/!$&'()*+,=:@".contains(&byte) => {}
            _ => return Err(NonCanonicalPath::BadCharacter),
        }
        i += 1;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), NonCanonicalPath> {
    if segment.is_empty() {
        return Err(NonCanonicalPath::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(NonCanonicalPath::DotSegment);
    }
    if segment.ends_with('.') {
        return Err(NonCanonicalPath::TrailingDot);
    }
    if segment != VERSION && segment.eq_ignore_ascii_case(VERSION) {
        return Err(NonCanonicalPath::VersionCase);
    }
    Ok(())
}

/// RFC 3986's unreserved characters: never percent-encoded in a normalised URI.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Reserved characters with no meaning inside a path segment once decoded. Everything else
/// encoded is refused: unreserved characters (a decoder makes them structure: `%2e%2e`, `%76`),
/// `/` and `\` (segment separators to some servers), `%` (double decoding), `;` (parameters),
/// controls, space and non-ASCII bytes (overlong UTF-8 forms such as `%c0%af`).
fn may_be_encoded(byte: u8) -> bool {
    b":?#[]@!$&'()*+,=".contains(&byte)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(path: &str) -> Option<(Option<&str>, &str)> {
        CanonicalPath::parse(path)
            .expect("canonical")
            .model()
            .map(|m| (m.namespace, m.name))
    }

    #[test]
    fn canonical_paths_name_their_model_in_both_forms() {
        assert_eq!(
            model("/llm/simulator/v1/chat/completions"),
            Some((Some("llm"), "simulator"))
        );
        assert_eq!(
            model("/simulator/v1/chat/completions?x=1"),
            Some((None, "simulator"))
        );
        assert_eq!(model("/llm/qwen3/v1"), Some((Some("llm"), "qwen3")));
        assert_eq!(model("/v1/models"), None);
        assert_eq!(model("/maas-api/v1/api-keys"), None);
        assert_eq!(model("/"), None);
        assert_eq!(model("/simulator"), None);
        assert_eq!(model("/simulator/invocations"), None);
        assert_eq!(model("/a/b/c/v1"), None);
    }

    #[test]
    fn every_trick_that_a_decoder_or_router_could_read_differently_is_refused() {
        use NonCanonicalPath::*;
        let cases = [
            ("llm/qwen3/v1/chat/completions", NotAbsolute),
            ("", NotAbsolute),
            ("/llm/qwen3/%76%31/chat/completions", EncodedCharacter),
            ("/llm/qwen3%2Fv1/chat/completions", EncodedCharacter),
            ("/llm/qwen3%2fv1/chat/completions", EncodedCharacter),
            ("/llm/qwen3/v1%2Fchat/completions", EncodedCharacter),
            ("/llm/./qwen3/v1/chat/completions", DotSegment),
            ("/llm/simulator/../qwen3/v1/chat/completions", DotSegment),
            ("/llm/%2e%2e/qwen3/v1/chat/completions", EncodedCharacter),
            ("/llm/%2E/qwen3/v1/chat/completions", EncodedCharacter),
            ("/llm/qwen3/V1/chat/completions", VersionCase),
            ("/simulator/v1/chat/%63ompletions", EncodedCharacter),
            ("//llm/qwen3/v1/chat/completions", EmptySegment),
            ("/llm//qwen3/v1/chat/completions", EmptySegment),
            ("/llm/qwen3;x=1/v1/chat/completions", Parameter),
            ("/llm/qwen3/v1;/chat/completions", Parameter),
            ("/llm/qwen3%3B/v1/chat/completions", EncodedCharacter),
            ("/llm\\qwen3/v1/chat/completions", Backslash),
            ("/llm%5cqwen3/v1/chat/completions", EncodedCharacter),
            ("/llm/qwen3%c0%af/v1/chat/completions", EncodedCharacter),
            ("/llm/qwen3%25%32%66v1/chat", EncodedCharacter),
            ("/llm/qwen3%00/v1", EncodedCharacter),
            ("/llm/qwen3%20/v1", EncodedCharacter),
            ("/llm/qwen3%/v1", BadPercentEncoding),
            ("/llm/qwen3%zz/v1", BadPercentEncoding),
            ("/llm/qwen3%2", BadPercentEncoding),
            ("/llm/qwen3./v1/chat/completions", TrailingDot),
            ("/llm/qwen3/v1/chat/completions.", TrailingDot),
            ("/llm/qwen 3/v1", BadCharacter),
            ("/llm/qwén3/v1", BadCharacter),
            ("/llm/qwen3/v1/chat\t", BadCharacter),
            ("/llm/qwen3/v1/chat#frag", BadCharacter),
            ("/llm/qwen3/v1/chat\"", BadCharacter),
        ];
        for (path, expected) in cases {
            assert_eq!(CanonicalPath::parse(path), Err(expected), "{path:?}");
        }
    }

    #[test]
    fn harmless_forms_are_canonical() {
        for path in [
            "/",
            "/v1/models/",
            "/llm/qwen3/v1/chat/completions?stream=%2e%2e&x=..//",
            "/llm/qwen-3.5_b~x/v1/chat/completions",
            "/llm/qwen3/v1/files/a:b@c+d,e=f!$&'()*",
            "/llm/qwen3/v1/files/a%3Ab%40c%2B",
            "/llm/qwen3/v1/VERSIONS/v2",
        ] {
            assert!(CanonicalPath::parse(path).is_ok(), "{path:?}");
        }
    }

    #[test]
    fn the_api_starts_at_the_version_segment() {
        fn api(p: &str) -> &str {
            CanonicalPath::parse(p).unwrap().api()
        }
        assert_eq!(
            api("/llm/qwen3/v1/chat/completions?x=1"),
            "/v1/chat/completions"
        );
        assert_eq!(api("/qwen3/v1/embeddings"), "/v1/embeddings");
        assert_eq!(api("/v1/messages"), "/v1/messages");
        assert_eq!(api("/qwen3/invocations"), "/qwen3/invocations");
        assert_eq!(api("/qwen3/v1"), "/v1");
        assert_eq!(api("/"), "/");
    }

    #[test]
    fn model_listing_is_recognised_under_any_model() {
        let listing = |p: &str| CanonicalPath::parse(p).unwrap().is_model_listing();
        assert!(listing("/llm/qwen3/v1/models"));
        assert!(listing("/qwen3/v1/models/"));
        assert!(listing("/qwen3/v1/models/qwen3"));
        assert!(listing("/v1/models"));
        assert!(!listing("/qwen3/v1/modelsx"));
        assert!(!listing("/qwen3/v1/chat/completions"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let under = |p: &str, prefix: &str| CanonicalPath::parse(p).unwrap().is_under(prefix);
        assert!(under("/tools", "/tools"));
        assert!(under("/tools/x", "/tools"));
        assert!(under("/tools/x", "/tools/"));
        assert!(!under("/toolsx", "/tools"));
        assert!(!under("/v1/tokenize", "/tools"));
    }

    #[test]
    fn model_free_paths_match_their_subtree_and_refuse_dangerous_entries() {
        let free = ModelFreePaths::parse(" /v1/tokenize, /tools/ ").unwrap();
        let path = |p: &'static str| CanonicalPath::parse(p).unwrap();
        assert!(free.contains(&path("/v1/tokenize")));
        assert!(free.contains(&path("/tools/search?q=1")));
        assert!(!free.contains(&path("/v1/tokenizer")));
        assert!(!free.contains(&path("/v1/chat/completions")));
        assert!(ModelFreePaths::parse("").unwrap().is_empty());

        let error = |list: &str| ModelFreePaths::parse(list).unwrap_err().to_string();
        assert_eq!(error("/"), "\"/\" would make every path model-free");
        assert_eq!(
            error("/qwen3/v1/chat"),
            "\"/qwen3/v1/chat\" names a model (/<model>/v1/...): model routes are always checked"
        );
        assert_eq!(
            error("/a/../b"),
            "\"/a/../b\" is not a canonical path: the path has a dot segment ('.' or '..')"
        );
        assert!(error("tools").contains("must start with '/'"));
    }
}
