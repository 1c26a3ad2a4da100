//! Request paths read as uvicorn and a lax multi-model backend read them: decoded once, normalized, split into a model prefix and a route.

/// What a normalized path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    Messages,
    Responses,
    Invocations,
    Tokenize,
    Health,
}

impl Route {
    /// Whether the route is read with `GET` (else `POST`).
    pub(super) fn is_read(self) -> bool {
        matches!(self, Self::Models | Self::Health)
    }
}

/// A routed request: the route, and the served model its path prefix named, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target<'a> {
    pub(super) route: Route,
    pub(super) path_model: Option<&'a str>,
}

/// Routes a raw request path (as received, before decoding; a query string is cut off first,
/// as uvicorn splits the target at the first `?` before decoding). `None`: no route, a 404.
///
/// The path is decoded once ([`uvicorn_decode`]), then dot segments are resolved and empty
/// segments dropped (so `//` merges and a trailing `/` is ignored). A bare route serves as is;
/// otherwise `/<model>/v1/...` or `/<namespace>/<model>/v1/...` with `<model>` one of `served`
/// (compared exactly; the namespace is ignored) selects that model for the `v1/...` route.
/// `v1/...` routes match case-insensitively; `/health`, `/invocations`, `/tokenize` exactly and
/// only bare.
pub(super) fn target<'a>(raw_path: &str, served: &'a [&'a str]) -> Option<Target<'a>> {
    let path = raw_path.split_once('?').map_or(raw_path, |(path, _)| path);
    let decoded = uvicorn_decode(path);
    let segments = normalized_segments(&decoded);
    if let Some(route) = bare_route(&segments) {
        return Some(Target {
            route,
            path_model: None,
        });
    }
    for prefix in [1, 2] {
        let Some(rest) = segments.get(prefix..) else {
            continue;
        };
        if !rest.first().is_some_and(|s| s.eq_ignore_ascii_case("v1")) {
            continue;
        }
        let Some(model) = served.iter().copied().find(|m| *m == segments[prefix - 1]) else {
            continue;
        };
        if let Some(route) = v1_route(rest) {
            return Some(Target {
                route,
                path_model: Some(model),
            });
        }
    }
    None
}

/// Percent-decodes once, exactly as uvicorn computes `scope["path"]` with Python's
/// `urllib.parse.unquote`: `%` and two hex digits (either case) become that byte, any other `%`
/// stays as is, `+` is literal, and the bytes are read as UTF-8 with each invalid sequence
/// replaced by U+FFFD (so an overlong `%c0%af` is two U+FFFD, never `/`).
pub(super) fn uvicorn_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).and_then(|b| hex_value(*b)),
                bytes.get(i + 2).and_then(|b| hex_value(*b)),
            )
        {
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Rust and Python both replace each maximal invalid subsequence with one U+FFFD.
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The path's segments with `.` and empty segments dropped and `..` removing the one before
/// (never climbing above the root), as the laxest backends normalize.
fn normalized_segments(decoded: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    segments
}

fn bare_route(segments: &[&str]) -> Option<Route> {
    match segments {
        ["health"] => Some(Route::Health),
        ["invocations"] => Some(Route::Invocations),
        ["tokenize"] => Some(Route::Tokenize),
        _ => v1_route(segments),
    }
}

/// `v1/...` routes, any letter case.
fn v1_route(segments: &[&str]) -> Option<Route> {
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lower.as_slice() {
        ["v1", "chat", "completions"] => Some(Route::ChatCompletions),
        ["v1", "completions"] => Some(Route::Completions),
        ["v1", "embeddings"] => Some(Route::Embeddings),
        ["v1", "models"] => Some(Route::Models),
        ["v1", "messages"] => Some(Route::Messages),
        ["v1", "responses"] => Some(Route::Responses),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVED: &[&str] = &["simulator", "qwen3"];

    fn routed(path: &str) -> Option<(Route, Option<&'static str>)> {
        target(path, SERVED).map(|t| (t.route, t.path_model))
    }

    #[test]
    fn decoding_is_pythons_unquote() {
        let cases = [
            ("/a%2Fb", "/a/b"),
            ("/a%2fb", "/a/b"),
            ("/%76%31/x", "/v1/x"),
            ("/a%5Cb", "/a\\b"),
            ("/a+b", "/a+b"),
            ("/a%20b", "/a b"),
            ("/100%", "/100%"),
            ("/%zz/%4", "/%zz/%4"),
            ("/%252F", "/%2F"),
            ("/%c0%af", "/\u{fffd}\u{fffd}"),
            ("/%e2%82", "/\u{fffd}"),
            ("/%C3%A9t%C3%A9", "/été"),
            ("/a;b=c", "/a;b=c"),
        ];
        for (raw, decoded) in cases {
            assert_eq!(uvicorn_decode(raw), decoded, "decoding {raw}");
        }
    }

    #[test]
    fn bare_routes_serve_without_a_path_model() {
        assert_eq!(
            routed("/v1/chat/completions"),
            Some((Route::ChatCompletions, None))
        );
        assert_eq!(routed("/v1/completions"), Some((Route::Completions, None)));
        assert_eq!(routed("/v1/embeddings"), Some((Route::Embeddings, None)));
        assert_eq!(routed("/v1/models"), Some((Route::Models, None)));
        assert_eq!(routed("/v1/messages"), Some((Route::Messages, None)));
        assert_eq!(routed("/v1/responses"), Some((Route::Responses, None)));
        assert_eq!(routed("/invocations"), Some((Route::Invocations, None)));
        assert_eq!(routed("/tokenize"), Some((Route::Tokenize, None)));
        assert_eq!(routed("/health"), Some((Route::Health, None)));
        assert_eq!(
            routed("/v1/chat/completions?stream=1"),
            Some((Route::ChatCompletions, None))
        );
    }

    #[test]
    fn a_model_or_namespace_and_model_prefix_selects_the_model() {
        let chat = Route::ChatCompletions;
        let cases = [
            ("/qwen3/v1/chat/completions", Some((chat, Some("qwen3")))),
            (
                "/llm/qwen3/v1/chat/completions",
                Some((chat, Some("qwen3"))),
            ),
            (
                "/anything/simulator/v1/chat/completions",
                Some((chat, Some("simulator"))),
            ),
            (
                "/llm/qwen3/V1/chat/completions",
                Some((chat, Some("qwen3"))),
            ),
            ("/qwen3/V1/CHAT/Completions", Some((chat, Some("qwen3")))),
            ("/Qwen3/v1/chat/completions", None),
            ("/unknown/v1/chat/completions", None),
            ("/a/b/qwen3/v1/chat/completions", None),
            ("/qwen3/v1/no/such/route", None),
            ("/qwen3/health", None),
            ("/qwen3/tokenize", None),
            ("/HEALTH", None),
        ];
        for (path, expected) in cases {
            assert_eq!(routed(path), expected, "routing {path}");
        }
    }

    #[test]
    fn encoded_dotted_and_doubled_paths_route_after_one_decoding() {
        let chat = Route::ChatCompletions;
        let cases = [
            ("/qwen3%2Fv1/chat/completions", Some((chat, Some("qwen3")))),
            (
                "/qwen3%2fv1%2fchat%2fcompletions",
                Some((chat, Some("qwen3"))),
            ),
            (
                "/qwen3/%76%31/chat/completions",
                Some((chat, Some("qwen3"))),
            ),
            (
                "/llm%2Fqwen3/v1/chat/completions",
                Some((chat, Some("qwen3"))),
            ),
            ("/qwen3/./v1/chat/completions", Some((chat, Some("qwen3")))),
            (
                "/qwen3/v1/chat/../chat/completions",
                Some((chat, Some("qwen3"))),
            ),
            (
                "/simulator/../qwen3/v1/chat/completions",
                Some((chat, Some("qwen3"))),
            ),
            (
                "/qwen3/v1/../../simulator/v1/chat/completions",
                Some((chat, Some("simulator"))),
            ),
            ("/qwen3/%2E%2E/v1/chat/completions", Some((chat, None))),
            ("/../../v1/chat/completions", Some((chat, None))),
            (
                "//qwen3//v1///chat//completions/",
                Some((chat, Some("qwen3"))),
            ),
            ("/qwen3%252Fv1/chat/completions", None),
            ("/qwen3%5Cv1/chat/completions", None),
            ("/qwen3;x/v1/chat/completions", None),
            ("/v1/chat/completions;x", None),
            ("/qwen3/v1/chat/completions%3Fx", None),
            ("/qwen3+/v1/chat/completions", None),
            ("/qwen3/v1%c0%afchat/completions", None),
            ("/qwen3%c0%afv1/chat/completions", None),
        ];
        for (path, expected) in cases {
            assert_eq!(routed(path), expected, "routing {path}");
        }
    }

    #[test]
    fn only_served_models_are_selected_by_path() {
        assert_eq!(target("/qwen3/v1/models", &["simulator"]), None);
        assert_eq!(
            target("/qwen3/v1/models", &["qwen3"]).map(|t| t.path_model),
            Some(Some("qwen3"))
        );
    }
}
