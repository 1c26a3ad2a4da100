//! The few fields of Envoy's `CheckRequest` that Check reads, decoded straight from the wire.
//!
//! Envoy sends every request header, both peers' addresses, the route's metadata and more; Check
//! reads the path, three headers and (when configured) the body. Decoding the whole message
//! with prost builds a `HashMap` of every header and a `String` per field, and was the largest
//! single cost of a cache-hit Check (about a quarter of the server's instructions per request,
//! more than the decision itself). [`CheckAttributes::decode`] walks the protobuf wire format
//! instead, keeps only what Check reads and skips the rest without allocating.
//!
//! It gives exactly what [`CheckAttributes::from`] picks out of a prost-decoded `CheckRequest`
//! (a property test holds the two together), with one deliberate difference: bytes it skips are
//! only checked for framing, so a field Check never reads cannot fail the request (prost would
//! also refuse, for example, invalid UTF-8 in a header that is not ours).

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use prost::bytes::Bytes;

/// The `meter` context extension's value for a route without the token meter.
const METER_OFF: &str = "off";

/// The request header naming the model, set by a body-to-header filter ahead of ext_authz.
pub const HEADER_MODEL_NAME: &str = "x-gateway-model-name";

/// The headers Check reads, by lowercase name, in the order of [`CheckAttributes`]' slots.
const HEADERS: [&str; 3] = ["authorization", "x-api-key", HEADER_MODEL_NAME];
const AUTHORIZATION: usize = 0;
const X_API_KEY: usize = 1;
const MODEL_NAME: usize = 2;

use crate::gateway_headers::is_client_forbidden_header as is_forged_identity_header;

/// Nested groups (a wire type Envoy never sends) are skipped to this depth, as prost limits it.
const MAX_GROUP_DEPTH: u32 = 100;

/// What Check reads of an Envoy `CheckRequest`. Its `Debug` never shows the credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CheckAttributes {
    path: String,
    headers: [Option<String>; 3],
    body: Bytes,
    /// `context_extensions["model"]`: the route's model, set by the operator in Envoy.
    route_model: Option<String>,
    /// `context_extensions["meter"] == "off"`: the route runs no token meter.
    route_unmetered: bool,
    /// `attributes.source.address.socket_address.address`, sharing the message's memory.
    source_address: Bytes,
    /// Whether the request carries one of [`crate::gateway_headers::CLIENT_FORBIDDEN_HEADERS`].
    forged_identity_header: bool,
}

/// A `CheckRequest` whose bytes are not valid protobuf (truncated, a bad varint or length, a
/// wrong wire type or invalid UTF-8 in a field Check reads). tonic answers it with `INTERNAL`,
/// as it does for any message it cannot decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to decode CheckRequest: {0}")]
pub struct WireError(&'static str);

impl CheckAttributes {
    /// Decodes the fields Check reads from an encoded `CheckRequest`; the body (if any) shares
    /// `message`'s memory.
    pub fn decode(message: Bytes) -> Result<Self, WireError> {
        let mut found = Found::default();
        // CheckRequest: only `attributes` (1) matters.
        each_submessage(Reader::new(&message), 1, &mut found, decode_attributes)?;
        // `raw_body` wins over `body` whenever it is non-empty, whatever the order on the wire.
        let body = match (&found.raw_body, &found.text_body) {
            (Some(raw), _) if !raw.is_empty() => message.slice(raw.clone()),
            (_, Some(text)) => message.slice(text.clone()),
            _ => Bytes::new(),
        };
        let source_address = found
            .source_socket
            .clone()
            .flatten()
            .map_or_else(Bytes::new, |range| message.slice(range));
        Ok(Self {
            forged_identity_header: found.forged_identity_header,
            headers: found.headers(),
            path: found.path.unwrap_or_default(),
            body,
            route_model: found.route_model,
            route_unmetered: found.route_unmetered,
            source_address,
        })
    }

    /// Whether the client sent an identity header only the gateway may set
    /// ([`crate::gateway_headers::CLIENT_FORBIDDEN_HEADERS`]).
    pub fn forged_identity_header(&self) -> bool {
        self.forged_identity_header
    }

    /// Whether the operator marked the route as running no token meter (`meter: "off"`).
    pub fn route_unmetered(&self) -> bool {
        self.route_unmetered
    }

    /// The model the operator set on the route (ext_authz `context_extensions` key `model`).
    pub fn route_model(&self) -> Option<&str> {
        self.route_model.as_deref()
    }

    /// The request path with any query string, as Envoy reports it ("" when absent).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `authorization` header (Envoy joins repeated headers with ",").
    pub fn authorization(&self) -> Option<&str> {
        self.headers[AUTHORIZATION].as_deref()
    }

    pub fn x_api_key(&self) -> Option<&str> {
        self.headers[X_API_KEY].as_deref()
    }

    /// The `x-gateway-model-name` header.
    pub fn model_header(&self) -> Option<&str> {
        self.headers[MODEL_NAME].as_deref()
    }

    /// The request body, when Envoy sent one (`raw_body`, else `body`).
    pub fn body(&self) -> Option<&[u8]> {
        (!self.body.is_empty()).then_some(&self.body[..])
    }

    /// The downstream peer's address (`attributes.source.address.socket_address.address`, an IP
    /// literal), when Envoy sent one; `None` for a pipe or an internal address.
    pub fn source_address(&self) -> Option<&str> {
        // Checked to be UTF-8 when decoded; an empty value means none.
        std::str::from_utf8(&self.source_address)
            .ok()
            .filter(|address| !address.is_empty())
    }
}

/// The same selection from a message prost has decoded: the reference [`decode`] is held to,
/// and a way in for callers that already hold a `CheckRequest`.
///
/// [`decode`]: CheckAttributes::decode
impl From<&CheckRequest> for CheckAttributes {
    fn from(request: &CheckRequest) -> Self {
        let route_model = request.attributes.as_ref().and_then(|a| {
            a.context_extensions
                .get(crate::authorizer::CONTEXT_EXTENSION_MODEL)
                .cloned()
        });
        let route_unmetered = request.attributes.as_ref().is_some_and(|a| {
            a.context_extensions
                .get(crate::authorizer::CONTEXT_EXTENSION_METER)
                .is_some_and(|value| value == METER_OFF)
        });
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let source_address = request
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .and_then(|peer| peer.address.as_ref())
            .and_then(|address| match &address.address {
                Some(address::Address::SocketAddress(socket)) => {
                    Some(Bytes::copy_from_slice(socket.address.as_bytes()))
                }
                _ => None,
            })
            .unwrap_or_default();
        let Some(http) = http else {
            return Self {
                route_model,
                route_unmetered,
                source_address,
                ..Self::default()
            };
        };
        let body = if !http.raw_body.is_empty() {
            Bytes::copy_from_slice(&http.raw_body)
        } else {
            Bytes::copy_from_slice(http.body.as_bytes())
        };
        let forged_identity_header = http
            .headers
            .keys()
            .any(|name| is_forged_identity_header(name.as_bytes()))
            || http.header_map.as_ref().is_some_and(|map| {
                map.headers
                    .iter()
                    .any(|header| is_forged_identity_header(header.key.as_bytes()))
            });
        Self {
            forged_identity_header,
            path: http.path.clone(),
            headers: HEADERS.map(|name| request_header(http, name).map(str::to_owned)),
            body,
            route_model,
            route_unmetered,
            source_address,
        }
    }
}

impl std::fmt::Debug for CheckAttributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        f.debug_struct("CheckAttributes")
            .field("path", &self.path)
            .field("authorization", &shown(&self.headers[AUTHORIZATION]))
            .field("x_api_key", &shown(&self.headers[X_API_KEY]))
            .field("model_header", &self.headers[MODEL_NAME])
            .field("body_bytes", &self.body.len())
            .field("route_model", &self.route_model)
            .field("route_unmetered", &self.route_unmetered)
            .field("source_address", &self.source_address())
            .field("forged_identity_header", &self.forged_identity_header)
            .finish()
    }
}

/// A header by lowercase name: from `headers`, else the first match in `header_map` (Envoy's
/// `encode_raw_headers`), whose value counts as absent when it is not UTF-8.
fn request_header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(value) = http.headers.get(name) {
        return Some(value);
    }
    let raw = http.header_map.as_ref()?;
    raw.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| {
            if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            }
        })
}

/// What the walk has found so far. A message field that occurs twice is merged (protobuf's
/// rule), which walking every occurrence into the same `Found` gives for free.
#[derive(Default)]
struct Found {
    path: Option<String>,
    /// From the `headers` map: the last entry with the name wins, as in a map.
    map_headers: [Option<String>; 3],
    /// From `header_map`: the first entry with the name wins; `Some(None)` when its raw value
    /// is not UTF-8.
    raw_headers: [Option<Option<String>>; 3],
    /// `raw_body` and `body` as byte ranges of the message; the last occurrence of each wins.
    raw_body: Option<std::ops::Range<usize>>,
    text_body: Option<std::ops::Range<usize>>,
    /// `context_extensions["model"]`; the last entry with the key wins, as in a map.
    route_model: Option<String>,
    /// `context_extensions["meter"] == "off"`; the last entry with the key wins.
    route_unmetered: bool,
    /// `Some` while the source `Address` oneof holds a `socket_address`, with the range of its
    /// `address` once seen; another variant resets it, as prost's oneof merge does.
    source_socket: Option<Option<std::ops::Range<usize>>>,
    forged_identity_header: bool,
}

impl Found {
    fn headers(&mut self) -> [Option<String>; 3] {
        [0, 1, 2].map(|slot| {
            self.map_headers[slot]
                .take()
                .or_else(|| self.raw_headers[slot].take().flatten())
        })
    }
}

/// Hands every occurrence of the submessage `wanted` in `message` to `inner` (so repeated
/// occurrences merge into `found`) and skips every other field.
fn each_submessage<'a>(
    mut message: Reader<'a>,
    wanted: u32,
    found: &mut Found,
    inner: fn(Reader<'a>, &mut Found) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while let Some((field, wire)) = message.key()? {
        if field == wanted {
            inner(message.message(wire)?, found)?;
        } else {
            message.skip(field, wire)?;
        }
    }
    Ok(())
}

/// `AttributeContext`: `source` (1), whose `address` (1) is all that matters of it, `request`
/// (4) and `context_extensions` (10).
fn decode_attributes(mut attributes: Reader<'_>, found: &mut Found) -> Result<(), WireError> {
    while let Some((field, wire)) = attributes.key()? {
        match field {
            1 => each_submessage(attributes.message(wire)?, 1, found, decode_source_address)?,
            4 => decode_request(attributes.message(wire)?, found)?,
            10 => decode_context_extension(attributes.message(wire)?, found)?,
            _ => attributes.skip(field, wire)?,
        }
    }
    Ok(())
}

/// One entry of the `context_extensions` map.
fn decode_context_extension(entry: Reader<'_>, found: &mut Found) -> Result<(), WireError> {
    let (key, value) = map_entry(entry)?;
    if key == crate::authorizer::CONTEXT_EXTENSION_MODEL.as_bytes() {
        let value = std::str::from_utf8(value)
            .map_err(|_| WireError("invalid UTF-8 in a context extension"))?;
        found.route_model = Some(value.to_owned());
    } else if key == crate::authorizer::CONTEXT_EXTENSION_METER.as_bytes() {
        found.route_unmetered = value == METER_OFF.as_bytes();
    }
    Ok(())
}

/// `config.core.v3.Address`, a oneof: `socket_address` (1), whose `address` (2) we keep, or
/// `pipe` (2) / `envoy_internal_address` (3), which replace it.
fn decode_source_address(mut address: Reader<'_>, found: &mut Found) -> Result<(), WireError> {
    while let Some((field, wire)) = address.key()? {
        match field {
            1 => {
                let mut socket = address.message(wire)?;
                let kept = found.source_socket.get_or_insert(None);
                while let Some((field, wire)) = socket.key()? {
                    match field {
                        2 => *kept = Some(socket.string_range(wire)?),
                        _ => socket.skip(field, wire)?,
                    }
                }
            }
            2 | 3 => {
                address.message(wire)?;
                found.source_socket = None;
            }
            _ => address.skip(field, wire)?,
        }
    }
    Ok(())
}

/// `AttributeContext.Request`: only `http` (2) matters.
fn decode_request(request: Reader<'_>, found: &mut Found) -> Result<(), WireError> {
    each_submessage(request, 2, found, decode_http)
}

/// `AttributeContext.HttpRequest`: `headers` (3), `path` (4), `body` (11), `raw_body` (12) and
/// `header_map` (13).
fn decode_http(mut http: Reader<'_>, found: &mut Found) -> Result<(), WireError> {
    while let Some((field, wire)) = http.key()? {
        match field {
            3 => decode_map_entry(http.message(wire)?, found)?,
            4 => found.path = Some(http.string(wire)?.to_owned()),
            11 => found.text_body = Some(http.string_range(wire)?),
            12 => found.raw_body = Some(http.len_range(wire)?),
            13 => decode_header_map(http.message(wire)?, found)?,
            _ => http.skip(field, wire)?,
        }
    }
    Ok(())
}

/// One entry of the `headers` map.
fn decode_map_entry(entry: Reader<'_>, found: &mut Found) -> Result<(), WireError> {
    let (key, value) = map_entry(entry)?;
    found.forged_identity_header |= is_forged_identity_header(key);
    if let Some(slot) = HEADERS.iter().position(|name| name.as_bytes() == key) {
        let value =
            std::str::from_utf8(value).map_err(|_| WireError("invalid UTF-8 in a header"))?;
        found.map_headers[slot] = Some(value.to_owned());
    }
    Ok(())
}

/// A `map<string, string>` entry's `key` (1) and `value` (2), either possibly absent (empty).
fn map_entry<'a>(mut entry: Reader<'a>) -> Result<(&'a [u8], &'a [u8]), WireError> {
    let (mut key, mut value): (&[u8], &[u8]) = (b"", b"");
    while let Some((field, wire)) = entry.key()? {
        match field {
            1 => key = entry.bytes(wire)?,
            2 => value = entry.bytes(wire)?,
            _ => entry.skip(field, wire)?,
        }
    }
    Ok((key, value))
}

/// `HeaderMap`: repeated `headers` (1), each a `HeaderValue` of `key` (1), `value` (2) and
/// `raw_value` (3).
fn decode_header_map(mut map: Reader<'_>, found: &mut Found) -> Result<(), WireError> {
    while let Some((field, wire)) = map.key()? {
        if field != 1 {
            map.skip(field, wire)?;
            continue;
        }
        let mut header = map.message(wire)?;
        let (mut key, mut value, mut raw): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
        while let Some((field, wire)) = header.key()? {
            match field {
                1 => key = header.bytes(wire)?,
                2 => value = header.bytes(wire)?,
                3 => raw = header.bytes(wire)?,
                _ => header.skip(field, wire)?,
            }
        }
        found.forged_identity_header |= is_forged_identity_header(key);
        let slot = HEADERS
            .iter()
            .position(|name| name.as_bytes().eq_ignore_ascii_case(key));
        if let Some(slot) = slot
            && found.raw_headers[slot].is_none()
        {
            let chosen = if raw.is_empty() {
                let value = std::str::from_utf8(value)
                    .map_err(|_| WireError("invalid UTF-8 in a header"))?;
                Some(value.to_owned())
            } else {
                std::str::from_utf8(raw).ok().map(str::to_owned)
            };
            found.raw_headers[slot] = Some(chosen);
        }
    }
    Ok(())
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// A cursor over one protobuf message: `data[pos..end]`, with positions kept relative to the
/// whole `CheckRequest` so that a field can be sliced out of it without copying.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            end: data.len(),
        }
    }

    /// The next field's number and wire type, or `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, u8)>, WireError> {
        if self.pos == self.end {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = (key & 7) as u8;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(WireError("invalid field number"));
        }
        Ok(Some((field as u32, wire)))
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.data[..self.end].get(self.pos) else {
                return Err(WireError("truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(WireError("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError("varint longer than 10 bytes"))
    }

    /// The byte range of a length-delimited field's contents, which the cursor then passes.
    fn len_range(&mut self, wire: u8) -> Result<std::ops::Range<usize>, WireError> {
        if wire != LEN {
            return Err(WireError("invalid wire type for a length-delimited field"));
        }
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= self.end)
            .ok_or(WireError("length runs past the end of the message"))?;
        self.pos = end;
        Ok(start..end)
    }

    fn message(&mut self, wire: u8) -> Result<Reader<'a>, WireError> {
        let range = self.len_range(wire)?;
        Ok(Reader {
            data: self.data,
            pos: range.start,
            end: range.end,
        })
    }

    fn bytes(&mut self, wire: u8) -> Result<&'a [u8], WireError> {
        let range = self.len_range(wire)?;
        Ok(&self.data[range])
    }

    fn string(&mut self, wire: u8) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes(wire)?).map_err(|_| WireError("invalid UTF-8 in a string"))
    }

    fn string_range(&mut self, wire: u8) -> Result<std::ops::Range<usize>, WireError> {
        let range = self.len_range(wire)?;
        std::str::from_utf8(&self.data[range.clone()])
            .map_err(|_| WireError("invalid UTF-8 in a string"))?;
        Ok(range)
    }

    /// Passes over a field Check does not read, checking only its framing.
    fn skip(&mut self, field: u32, wire: u8) -> Result<(), WireError> {
        self.skip_at_depth(field, wire, 0)
    }

    fn skip_at_depth(&mut self, field: u32, wire: u8, depth: u32) -> Result<(), WireError> {
        match wire {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => self.advance(8)?,
            FIXED32 => self.advance(4)?,
            LEN => {
                self.len_range(LEN)?;
            }
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(WireError("groups nested too deeply"));
                }
                loop {
                    let Some((inner, inner_wire)) = self.key()? else {
                        return Err(WireError("unterminated group"));
                    };
                    if inner_wire == END_GROUP {
                        if inner != field {
                            return Err(WireError("mismatched end of group"));
                        }
                        break;
                    }
                    self.skip_at_depth(inner, inner_wire, depth + 1)?;
                }
            }
            END_GROUP => return Err(WireError("unexpected end of group")),
            _ => return Err(WireError("invalid wire type")),
        }
        Ok(())
    }

    fn advance(&mut self, len: usize) -> Result<(), WireError> {
        if self.end - self.pos < len {
            return Err(WireError("truncated fixed-width field"));
        }
        self.pos += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::{
        Address, EnvoyInternalAddress, HeaderMap, HeaderValue, Pipe, SocketAddress, address,
        socket_address,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Peer, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;

    fn socket_peer(ip: &str) -> Peer {
        Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(41_000)),
                    ..Default::default()
                })),
            }),
            principal: "spiffe://cluster.local/ns/gw".to_owned(),
            ..Default::default()
        }
    }

    fn pipe_peer() -> Peer {
        Peer {
            address: Some(Address {
                address: Some(address::Address::Pipe(Pipe {
                    path: "/var/run/envoy.sock".to_owned(),
                    mode: 0o600,
                })),
            }),
            ..Default::default()
        }
    }

    fn http_request(http: HttpRequest) -> CheckRequest {
        with_source(Some(socket_peer("10.0.0.7")), http)
    }

    fn with_source(source: Option<Peer>, http: HttpRequest) -> CheckRequest {
        attributes(
            source,
            http,
            HashMap::from([("route".to_owned(), "models".to_owned())]),
        )
    }

    fn with_extensions(http: HttpRequest, extensions: HashMap<String, String>) -> CheckRequest {
        attributes(Some(socket_peer("10.0.0.7")), http, extensions)
    }

    fn attributes(
        source: Option<Peer>,
        http: HttpRequest,
        extensions: HashMap<String, String>,
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source,
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                context_extensions: extensions,
                ..Default::default()
            }),
        }
    }

    fn decoded(request: &CheckRequest) -> CheckAttributes {
        CheckAttributes::decode(Bytes::from(request.encode_to_vec())).unwrap()
    }

    fn envoy_like(authorization: &str) -> CheckRequest {
        http_request(HttpRequest {
            id: "42".to_owned(),
            method: "POST".to_owned(),
            path: "/simulator/v1/chat/completions".to_owned(),
            host: "gateway.local".to_owned(),
            headers: HashMap::from([
                (
                    ":path".to_owned(),
                    "/simulator/v1/chat/completions".to_owned(),
                ),
                ("authorization".to_owned(), authorization.to_owned()),
                ("content-type".to_owned(), "application/json".to_owned()),
                ("x-gateway-model-name".to_owned(), "simulator".to_owned()),
            ]),
            size: 120,
            protocol: "HTTP/1.1".to_owned(),
            ..Default::default()
        })
    }

    #[test]
    fn decode_reads_path_headers_and_nothing_else_from_an_envoy_request() {
        let attributes = decoded(&envoy_like("Bearer sk-oai-abc_def"));

        assert_eq!(attributes.path(), "/simulator/v1/chat/completions");
        assert_eq!(attributes.authorization(), Some("Bearer sk-oai-abc_def"));
        assert_eq!(attributes.x_api_key(), None);
        assert_eq!(attributes.model_header(), Some("simulator"));
        assert_eq!(attributes.body(), None);
        assert_eq!(attributes.source_address(), Some("10.0.0.7"));
    }

    #[test]
    fn the_source_address_is_the_source_peers_socket_address_and_nothing_else() {
        let pipe = with_source(Some(pipe_peer()), HttpRequest::default());
        let none = with_source(None, HttpRequest::default());
        let v6 = with_source(Some(socket_peer("2001:db8::7")), HttpRequest::default());

        assert_eq!(decoded(&pipe).source_address(), None);
        assert_eq!(decoded(&none).source_address(), None);
        assert_eq!(decoded(&v6).source_address(), Some("2001:db8::7"));
    }

    #[test]
    fn a_later_pipe_replaces_an_earlier_socket_address_and_a_later_socket_address_wins() {
        let socket = with_source(Some(socket_peer("10.0.0.1")), HttpRequest::default());
        let pipe = with_source(Some(pipe_peer()), HttpRequest::default());
        let other = with_source(Some(socket_peer("10.0.0.2")), HttpRequest::default());
        let concatenated = |parts: &[&CheckRequest]| {
            let wire: Vec<u8> = parts.iter().flat_map(|p| p.encode_to_vec()).collect();
            let reference = CheckRequest::decode(&wire[..]).unwrap();
            (
                CheckAttributes::decode(Bytes::from(wire)).unwrap(),
                reference,
            )
        };

        let (replaced, replaced_reference) = concatenated(&[&socket, &pipe]);
        let (last, last_reference) = concatenated(&[&socket, &pipe, &other]);

        assert_eq!(replaced.source_address(), None);
        assert_eq!(replaced, CheckAttributes::from(&replaced_reference));
        assert_eq!(last.source_address(), Some("10.0.0.2"));
        assert_eq!(last, CheckAttributes::from(&last_reference));
    }

    #[test]
    fn the_route_model_comes_from_the_model_context_extension_only() {
        let http = envoy_like("Bearer k")
            .attributes
            .unwrap()
            .request
            .unwrap()
            .http
            .unwrap();
        let request = with_extensions(
            http,
            HashMap::from([
                ("model".to_owned(), "llm/qwen3".to_owned()),
                ("route".to_owned(), "models".to_owned()),
            ]),
        );

        let attributes = decoded(&request);

        assert_eq!(attributes.route_model(), Some("llm/qwen3"));
        assert_eq!(attributes, CheckAttributes::from(&request));
        assert_eq!(decoded(&envoy_like("Bearer k")).route_model(), None);
    }

    #[test]
    fn only_meter_off_marks_a_route_unmetered() {
        let http = || {
            envoy_like("Bearer k")
                .attributes
                .unwrap()
                .request
                .unwrap()
                .http
                .unwrap()
        };
        let with_meter = |value: &str| {
            with_extensions(
                http(),
                HashMap::from([("meter".to_owned(), value.to_owned())]),
            )
        };
        let (off, on, typo) = (with_meter("off"), with_meter("on"), with_meter("Off "));

        assert!(decoded(&off).route_unmetered());
        assert!(!decoded(&on).route_unmetered());
        assert!(
            !decoded(&typo).route_unmetered(),
            "anything else keeps the assertion"
        );
        assert!(!decoded(&envoy_like("Bearer k")).route_unmetered());
        for request in [&off, &on, &typo] {
            assert_eq!(decoded(request), CheckAttributes::from(request));
        }
    }

    #[test]
    fn an_empty_message_has_no_path_headers_or_body() {
        let attributes = CheckAttributes::decode(Bytes::new()).unwrap();

        assert_eq!(attributes, CheckAttributes::default());
        assert_eq!(attributes.path(), "");
    }

    #[test]
    fn raw_body_wins_over_body_and_an_empty_raw_body_does_not() {
        let both = http_request(HttpRequest {
            body: "{\"model\":\"text\"}".to_owned(),
            raw_body: b"{\"model\":\"raw\"}".to_vec(),
            ..Default::default()
        });
        let text_only = http_request(HttpRequest {
            body: "{\"model\":\"text\"}".to_owned(),
            ..Default::default()
        });

        assert_eq!(decoded(&both).body(), Some(&b"{\"model\":\"raw\"}"[..]));
        assert_eq!(
            decoded(&text_only).body(),
            Some(&b"{\"model\":\"text\"}"[..])
        );
    }

    #[test]
    fn the_headers_map_wins_over_header_map_and_header_map_matches_any_case() {
        let raw = |key: &str, value: &str| HeaderValue {
            key: key.to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let request = http_request(HttpRequest {
            headers: HashMap::from([("x-api-key".to_owned(), "from-map".to_owned())]),
            header_map: Some(HeaderMap {
                headers: vec![
                    raw("X-Api-Key", "from-raw"),
                    raw("Authorization", "Bearer first"),
                    raw("authorization", "Bearer second"),
                ],
            }),
            ..Default::default()
        });

        let attributes = decoded(&request);

        assert_eq!(attributes.x_api_key(), Some("from-map"));
        assert_eq!(attributes.authorization(), Some("Bearer first"));
    }

    #[test]
    fn a_client_sent_identity_header_is_noticed_in_either_header_form() {
        let in_map = http_request(HttpRequest {
            headers: HashMap::from([("x-maas-username".to_owned(), "mallory".to_owned())]),
            ..Default::default()
        });
        let in_raw_map = http_request(HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![HeaderValue {
                    key: "X-MaaS-Group".to_owned(),
                    raw_value: b"[\"admins\"]".to_vec(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        });
        let subscription_only = http_request(HttpRequest {
            headers: HashMap::from([("x-maas-subscription".to_owned(), "free".to_owned())]),
            ..Default::default()
        });

        assert!(decoded(&in_map).forged_identity_header());
        assert!(decoded(&in_raw_map).forged_identity_header());
        assert!(!decoded(&subscription_only).forged_identity_header());
    }

    #[test]
    fn a_raw_header_value_that_is_not_utf8_counts_as_absent() {
        let request = http_request(HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: "authorization".to_owned(),
                        raw_value: vec![0xff, 0xfe],
                        ..Default::default()
                    },
                    HeaderValue {
                        key: "authorization".to_owned(),
                        raw_value: b"Bearer later".to_vec(),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        });

        assert_eq!(decoded(&request).authorization(), None);
        assert_eq!(CheckAttributes::from(&request).authorization(), None);
    }

    #[test]
    fn two_concatenated_messages_merge_as_protobuf_says() {
        let first = envoy_like("Bearer first");
        let second = http_request(HttpRequest {
            path: "/qwen3/v1/completions".to_owned(),
            headers: HashMap::from([("x-api-key".to_owned(), "second".to_owned())]),
            ..Default::default()
        });
        let mut wire = first.encode_to_vec();
        wire.extend(second.encode_to_vec());
        let merged = CheckRequest::decode(&wire[..]).unwrap();

        let attributes = CheckAttributes::decode(Bytes::from(wire)).unwrap();

        assert_eq!(attributes, CheckAttributes::from(&merged));
        assert_eq!(attributes.path(), "/qwen3/v1/completions");
        assert_eq!(attributes.authorization(), Some("Bearer first"));
        assert_eq!(attributes.x_api_key(), Some("second"));
    }

    #[test]
    fn every_truncation_of_a_request_is_refused_without_panicking() {
        let wire = envoy_like("Bearer sk-oai-abc_def").encode_to_vec();

        for cut in 1..wire.len() {
            let outcome = CheckAttributes::decode(Bytes::copy_from_slice(&wire[..cut]));
            assert!(outcome.is_err(), "a {cut}-byte prefix was accepted");
        }
    }

    #[test]
    fn malformed_wire_data_is_refused_with_what_is_wrong() {
        let cases: [(&[u8], &str); 7] = [
            (
                &[0x0a, 0x05, 0x22],
                "length runs past the end of the message",
            ),
            // An unknown field 15 whose varint is cut short, then one that overflows.
            (&[0x78, 0x96], "truncated varint"),
            (
                &[
                    0x78, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
                "varint overflows 64 bits",
            ),
            (&[0x00, 0x00], "invalid field number"),
            (&[0x7e], "invalid wire type"),
            // attributes (1) as a varint instead of a message.
            (
                &[0x08, 0x01],
                "invalid wire type for a length-delimited field",
            ),
            (&[0x7b, 0x10, 0x01], "unterminated group"),
        ];

        for (wire, expected) in cases {
            let error = CheckAttributes::decode(Bytes::from_static(wire)).unwrap_err();
            assert_eq!(error, WireError(expected), "for {wire:02x?}");
            assert!(
                error
                    .to_string()
                    .starts_with("failed to decode CheckRequest: ")
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused_in_a_field_check_reads_and_ignored_elsewhere() {
        // attributes { request { http { headers { key, value } } } }, built by hand because
        // prost will not encode a String that is not UTF-8.
        let http_with_header = |key: &[u8], value: &[u8]| {
            let mut entry = vec![0x0a, key.len() as u8];
            entry.extend(key);
            entry.extend([0x12, value.len() as u8]);
            entry.extend(value);
            let mut http = vec![0x1a, entry.len() as u8];
            http.extend(entry);
            let mut request = vec![0x12, http.len() as u8];
            request.extend(http);
            let mut attributes = vec![0x22, request.len() as u8];
            attributes.extend(request);
            let mut check = vec![0x0a, attributes.len() as u8];
            check.extend(attributes);
            Bytes::from(check)
        };

        let ours = CheckAttributes::decode(http_with_header(b"authorization", &[0xff]));
        let theirs = CheckAttributes::decode(http_with_header(b"user-agent", &[0xff]));

        assert_eq!(ours, Err(WireError("invalid UTF-8 in a header")));
        assert_eq!(theirs, Ok(CheckAttributes::default()));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut wire = vec![
            0x78, 0x96, 0x01, // field 15, varint 150
            0x79, 1, 2, 3, 4, 5, 6, 7, 8, // field 15, fixed64
            0x7d, 1, 2, 3, 4, // field 15, fixed32
            0x7b, 0x08, 0x01, 0x7c, // field 15, a group holding a varint
        ];
        wire.extend(envoy_like("Bearer k").encode_to_vec());

        let attributes = CheckAttributes::decode(Bytes::from(wire)).unwrap();

        assert_eq!(attributes.authorization(), Some("Bearer k"));
    }

    #[test]
    fn debug_never_shows_the_credentials() {
        let attributes = decoded(&envoy_like("Bearer sk-oai-secretid_secretsecret"));

        let shown = format!("{attributes:?}");

        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("authorization".to_owned()),
            Just("x-api-key".to_owned()),
            Just("x-gateway-model-name".to_owned()),
            Just("Authorization".to_owned()),
            Just("X-API-KEY".to_owned()),
            "[a-z:-]{1,12}",
        ]
    }

    fn raw_header() -> impl Strategy<Value = HeaderValue> {
        (
            header_name(),
            ".{0,12}",
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..12)
            ],
        )
            .prop_map(|(key, value, raw_value)| HeaderValue {
                key,
                value,
                raw_value,
            })
    }

    fn any_source() -> impl Strategy<Value = Option<Peer>> {
        let socket = |ip: String| {
            address::Address::SocketAddress(SocketAddress {
                address: ip,
                ..Default::default()
            })
        };
        let address = prop_oneof![
            "(10|192)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}".prop_map(socket),
            ".{0,12}".prop_map(socket),
            ".{0,12}".prop_map(|path| address::Address::Pipe(Pipe { path, mode: 0 })),
            ".{0,12}".prop_map(|name| {
                address::Address::EnvoyInternalAddress(EnvoyInternalAddress {
                    endpoint_id: name,
                    ..Default::default()
                })
            }),
        ];
        proptest::option::of(proptest::option::of(address).prop_map(|address| Peer {
            address: Some(Address { address }),
            service: "gateway".to_owned(),
            ..Default::default()
        }))
    }

    fn any_http_request() -> impl Strategy<Value = HttpRequest> {
        (
            ".{0,24}",
            proptest::collection::hash_map(header_name(), ".{0,16}", 0..6),
            proptest::option::of(proptest::collection::vec(raw_header(), 0..5)),
            ".{0,16}",
            proptest::collection::vec(any::<u8>(), 0..16),
            ".{0,8}",
        )
            .prop_map(|(path, headers, raw, body, raw_body, host)| HttpRequest {
                path,
                headers,
                header_map: raw.map(|headers| HeaderMap { headers }),
                body,
                raw_body,
                host,
                method: "POST".to_owned(),
                ..Default::default()
            })
    }

    fn any_extensions() -> impl Strategy<Value = HashMap<String, String>> {
        proptest::collection::hash_map(
            prop_oneof![Just("model".to_owned()), Just("route".to_owned()), ".{0,4}"],
            ".{0,12}",
            0..3,
        )
    }

    proptest! {
        #[test]
        fn decode_reads_exactly_what_prost_reads(
            first in (any_source(), any_http_request(), any_extensions()),
            second in proptest::option::of((any_source(), any_http_request(), any_extensions())),
        ) {
            let mut wire = attributes(first.0, first.1, first.2).encode_to_vec();
            if let Some((source, http, extensions)) = second {
                wire.extend(attributes(source, http, extensions).encode_to_vec());
            }
            let reference = CheckRequest::decode(&wire[..]).unwrap();

            let attributes = CheckAttributes::decode(Bytes::from(wire)).unwrap();

            prop_assert_eq!(attributes, CheckAttributes::from(&reference));
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(wire in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = CheckAttributes::decode(Bytes::from(wire));
        }
    }
}
