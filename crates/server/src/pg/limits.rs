//! The largest message a PostgreSQL client may send, checked on the bytes as they arrive, before
//! the protocol decoder buffers the message: every message starts with its length, so a message
//! over the limit is refused at its header and never held in memory. Before the client has
//! logged in the limit is small ([`PRE_LOGIN_MAX_MESSAGE_BYTES`], as PostgreSQL's startup
//! packet limit); after, it is `[server] pg_max_message_bytes`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest message before login (startup packet, SCRAM messages): 10,000 bytes, as
/// PostgreSQL's own limit on the startup packet.
pub const PRE_LOGIN_MAX_MESSAGE_BYTES: usize = 10_000;

/// The codes of the untyped requests after which another untyped message follows.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Where the reader is in the stream of messages.
#[derive(Debug)]
enum Frame {
    /// Reading a header: 8 bytes (length, code) for an untyped message (the startup packet),
    /// 5 (type, length) for the others.
    Header { buf: [u8; 8], have: usize, untyped: bool },
    /// Inside a message body: this many bytes remain.
    Body { remaining: usize },
}

/// Tracks message boundaries and refuses a header announcing more than the current limit.
#[derive(Debug)]
pub struct MessageLimit {
    frame: Frame,
    limit: Arc<AtomicUsize>,
}

impl MessageLimit {
    pub fn new(limit: Arc<AtomicUsize>) -> Self {
        Self { frame: Frame::Header { buf: [0; 8], have: 0, untyped: true }, limit }
    }

    /// Follows `bytes`, the next bytes of the stream; an error names a message over the limit.
    pub fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.frame {
                Frame::Body { remaining } => {
                    let n = (*remaining).min(bytes.len());
                    *remaining -= n;
                    bytes = &bytes[n..];
                    if *remaining == 0 {
                        self.frame = Frame::Header { buf: [0; 8], have: 0, untyped: false };
                    }
                }
                Frame::Header { buf, have, untyped } => {
                    let size = if *untyped { 8 } else { 5 };
                    let n = (size - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < size {
                        continue;
                    }
                    let at = if *untyped { 0 } else { 1 };
                    let length = i32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
                    let limit = self.limit.load(Ordering::Relaxed);
                    if length < 4 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "invalid message length"));
                    }
                    let length = length as usize;
                    if length > limit {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("message of {length} bytes exceeds the limit of {limit} bytes"),
                        ));
                    }
                    let next_untyped = *untyped
                        && matches!(
                            u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")),
                            SSL_REQUEST | GSSENC_REQUEST
                        );
                    // The part of the message after the header bytes already read.
                    let remaining = length - (size - at);
                    self.frame = if remaining == 0 {
                        Frame::Header { buf: [0; 8], have: 0, untyped: next_untyped }
                    } else {
                        Frame::Body { remaining }
                    };
                    if next_untyped && remaining > 0 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed negotiation request"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A connection's stream with its reads checked by a [`MessageLimit`].
pub struct LimitedIo<S> {
    inner: S,
    limit: MessageLimit,
}

impl<S> LimitedIo<S> {
    pub fn new(inner: S, limit: MessageLimit) -> Self {
        Self { inner, limit }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => Poll::Ready(this.limit.observe(&buf.filled()[before..])),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
