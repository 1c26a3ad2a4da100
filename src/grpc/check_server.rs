//! The gRPC server for `envoy.service.auth.v3.Authorization`, answering with pre-encoded bytes.
//!
//! envoy-types' generated `AuthorizationServer` hard-wires prost encoding of a `CheckResponse`
//! message, so every allow would be built and encoded anew. This server is the same routing
//! around `tonic::server::Grpc::unary`, with a codec that reads only the `CheckRequest` fields
//! Check needs ([`CheckAttributes::decode`]) and writes an [`EncodedCheckResponse`] as is: the
//! adapter memoises the encoded allow answer per key and model and keeps every denial encoded
//! once (see `ext_authz::ResponseMemo`).

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::{Request, Response, Status};

use crate::grpc::check_request::CheckAttributes;
use crate::grpc::check_response::EncodedCheckResponse;
use crate::grpc::ext_authz::ExtAuthzService;
use crate::store::KeyStore;

/// The gRPC service name Envoy calls (and the name the health service reports).
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Serves Check from an [`ExtAuthzService`]; add it to a tonic `Server` like a generated server.
pub struct CheckServer<S> {
    service: Arc<ExtAuthzService<S>>,
}

impl<S> CheckServer<S> {
    pub fn new(service: ExtAuthzService<S>) -> Self {
        Self {
            service: Arc::new(service),
        }
    }
}

impl<S> Clone for CheckServer<S> {
    fn clone(&self) -> Self {
        Self {
            service: Arc::clone(&self.service),
        }
    }
}

impl<S> std::fmt::Debug for CheckServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckServer").finish_non_exhaustive()
    }
}

impl<S> tonic::server::NamedService for CheckServer<S> {
    const NAME: &'static str = SERVICE_NAME;
}

impl<S, B> Service<http::Request<B>> for CheckServer<S>
where
    S: KeyStore,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            // What the generated servers answer for a method they do not have.
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = CheckMethod(Arc::clone(&self.service));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(CheckCodec);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The unary method: decide, then hand back the encoded answer.
struct CheckMethod<S>(Arc<ExtAuthzService<S>>);

impl<S> tonic::server::UnaryService<CheckAttributes> for CheckMethod<S>
where
    S: KeyStore,
{
    type Response = EncodedCheckResponse;
    type Future = BoxFuture<Response<EncodedCheckResponse>, Status>;

    fn call(&mut self, request: Request<CheckAttributes>) -> Self::Future {
        let service = Arc::clone(&self.0);
        // The decoded request lives on the heap: the future then stays small to move.
        let request = Box::new(request.into_inner());
        Box::pin(async move { service.check(&request).await.map(Response::new) })
    }
}

/// Decodes the [`CheckAttributes`] of a `CheckRequest`; encodes an [`EncodedCheckResponse`] by
/// copying its bytes.
#[derive(Debug, Clone, Copy, Default)]
struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = EncodedCheckResponse;
    type Decode = CheckAttributes;
    type Encoder = CheckCodec;
    type Decoder = CheckCodec;

    fn encoder(&mut self) -> Self::Encoder {
        CheckCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckCodec
    }
}

impl Decoder for CheckCodec {
    type Item = CheckAttributes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // Shares the receive buffer's memory: no copy of the message.
        let message = src.copy_to_bytes(src.remaining());
        // INTERNAL, as tonic answers any message it cannot decode.
        CheckAttributes::decode(message)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

impl Encoder for CheckCodec {
    type Item = EncodedCheckResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item.head);
        dst.put_slice(&item.tail);
        Ok(())
    }
}
