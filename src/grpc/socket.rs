//! Accepted gRPC connections that let HTTP/2 batch many small answers into one `write`.
//!
//! h2 (under tonic and hyper) copies a DATA frame into its write buffer only when the payload
//! is shorter than a threshold: 256 bytes on a socket that reports vectored writes, 1,024 on
//! one that does not. A longer payload is "chained" instead, and nothing more can be buffered
//! until that frame has been written, so every such answer costs a `writev` of its own. An
//! allow answer to Check (five identity headers plus the dynamic metadata) is 500–900 bytes,
//! just over the first threshold. Under Envoy's load of many concurrent Checks on one
//! connection that doubled the write system calls per Check (measured: 1.9 against 0.9 for a
//! do-nothing server whose answers are shorter), and with them the kernel's TCP work on both
//! ends. Reporting "no vectored writes" raises the threshold, so answers are copied (a cheap
//! memcpy) and go out together, whatever their number, in one `write` per flush.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// A TCP connection that tells its writer it has no vectored writes (see the module comment).
#[derive(Debug)]
pub struct CopyingTcpStream(TcpStream);

impl CopyingTcpStream {
    pub fn new(stream: TcpStream) -> Self {
        Self(stream)
    }
}

/// `incoming`'s connections, each wrapped in a [`CopyingTcpStream`]; serve it with tonic's
/// `serve_with_incoming_shutdown` like the `TcpIncoming` itself.
pub fn copying(
    incoming: TcpIncoming,
) -> impl Stream<Item = Result<CopyingTcpStream, io::Error>> + Send + 'static {
    incoming.map(|accepted| accepted.map(CopyingTcpStream::new))
}

impl Connected for CopyingTcpStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl AsyncRead for CopyingTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for CopyingTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    // The point of this type: `poll_write_vectored` keeps its default (the first non-empty
    // slice), which no writer calls once this says false.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_copying_stream_says_it_has_no_vectored_writes_and_carries_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = copying(TcpIncoming::from(listener));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server = incoming.next().await.unwrap().unwrap();

        server.write_all(b"answer").await.unwrap();
        client.write_all(b"question").await.unwrap();
        let (mut to_client, mut to_server) = ([0u8; 6], [0u8; 8]);
        client.read_exact(&mut to_client).await.unwrap();
        server.read_exact(&mut to_server).await.unwrap();

        assert!(
            client.is_write_vectored(),
            "the plain socket does vectored writes"
        );
        assert!(!server.is_write_vectored());
        assert_eq!(&to_client, b"answer");
        assert_eq!(&to_server, b"question");
        let info = server.connect_info();
        assert_eq!(info.local_addr, Some(addr));
        assert_eq!(info.remote_addr, Some(client.local_addr().unwrap()));
    }
}
