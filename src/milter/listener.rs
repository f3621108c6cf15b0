//! The milter's TCP listener, tuned for the milter protocol's write–write–read
//! pattern.
//!
//! The MTA often sends two small packets in a row and then waits for our reply:
//! Postfix writes the macros of a stage, then the stage's command (the first header,
//! say). Nagle's algorithm on the MTA's side holds the second packet until the first
//! is acknowledged, and a kernel delays that ACK by up to 40 ms when it has nothing
//! to send back — and macros get no reply. Measured with `integration/bench`: about
//! 44 ms per message, a throughput a fraction of Postfix's without a milter.
//!
//! So every accepted connection acknowledges at once (TCP_QUICKACK, re-armed after
//! each read because the kernel clears it), and sends our replies without delay
//! (TCP_NODELAY). A unix socket has neither problem and is passed through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use indymilter::Listener;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A [`TcpListener`] whose connections acknowledge at once.
pub struct QuickAckListener(pub TcpListener);

impl Listener for QuickAckListener {
    type Io = QuickAckStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(stream, _)| {
            // Best effort: a socket that refuses the options still works, slower.
            let _ = stream.set_nodelay(true);
            let stream = QuickAckStream(stream);
            stream.quickack();
            stream
        })
    }
}

/// A milter connection that re-arms TCP_QUICKACK after every read.
pub struct QuickAckStream(TcpStream);

impl QuickAckStream {
    fn quickack(&self) {
        let _ = SockRef::from(&self.0).set_tcp_quickack(true);
    }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.quickack();
        }
        result
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn accepted_connections_ack_at_once_and_do_not_delay_replies() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let mut listener = QuickAckListener(tcp);
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let mut server = listener.accept().await.expect("accept");
        assert!(server.0.nodelay().expect("nodelay"));

        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        assert!(SockRef::from(&server.0).tcp_quickack().expect("quickack"));
        server.write_all(b"pong").await.expect("write");
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
    }
}
