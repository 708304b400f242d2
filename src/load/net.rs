//! The load client's TCP sockets: connect with Nagle off, and read with the kernel's receive timestamp
//! so that the client can tell how long data waited for it ([`ReadLag`]).
//!
//! Invariants:
//! - Every read that returns data records one read-lag sample: the time from the kernel's receipt of the
//!   newest bytes in the read (`SO_TIMESTAMPNS`, Linux) to the read itself. Where the kernel gives no
//!   timestamp (another OS, or the option refused), no sample is recorded: a missing measurement stays
//!   missing, it is never 0.
//! - Readiness follows tokio's own TCP stream: a short read (fewer bytes than asked) means the socket
//!   buffer is drained, so readiness is cleared without a second, empty `recvmsg`.
//!
//! Written here rather than with tokio's `TcpStream`: its reads cannot return the kernel's timestamp.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;

use super::health::Histogram;

/// One connected socket, readable and writable by hyper.
pub struct Socket {
    fd: AsyncFd<std::net::TcpStream>,
    read_lag: Arc<Histogram>,
}

/// Connects to the first of `addrs` that accepts, with Nagle off (small SSE chunks and request heads
/// must leave at once) and kernel receive timestamps on.
pub async fn connect(addrs: &[SocketAddr], read_lag: Arc<Histogram>) -> io::Result<Socket> {
    let stream = tokio::net::TcpStream::connect(addrs).await?;
    stream.set_nodelay(true)?;
    // `into_std` keeps the socket non-blocking; it is registered again below, with its fd.
    let stream = stream.into_std()?;
    enable_rx_timestamps(&stream);
    // SAFETY: the stream owns its fd, which stays open for as long as the `AsyncFd` holds the stream.
    let fd = unsafe { AsyncFd::register(stream) }?;
    Ok(Socket { fd, read_lag })
}

#[cfg(target_os = "linux")]
fn enable_rx_timestamps(stream: &std::net::TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int of the size passed. A refusal only means no
    // read-lag samples (see the module's invariants), so the result is deliberately not an error.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn enable_rx_timestamps(_stream: &std::net::TcpStream) {}

/// Nanoseconds since the epoch on the clock the kernel's receive timestamps use (`CLOCK_REALTIME`).
fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// One `recvmsg` into `buf`: the byte count and, where the kernel attached one, the receive time of the
/// newest bytes (ns since the epoch).
fn recv(fd: i32, buf: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<i128>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timestamp message, aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes writable memory of the sizes given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, kernel_timestamp(&msg)))
}

#[cfg(target_os = "linux")]
fn kernel_timestamp(msg: &libc::msghdr) -> Option<i128> {
    // SAFETY: the control buffer was filled by `recvmsg`; the CMSG macros stay inside it, and the
    // payload of SCM_TIMESTAMPNS is a timespec (read unaligned).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn kernel_timestamp(_msg: &libc::msghdr) -> Option<i128> {
    None
}

impl hyper::rt::Read for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut cursor: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes initialised bytes into the buffer, and `advance` is told
            // exactly how many it wrote.
            let buf = unsafe { cursor.as_mut() };
            let len = buf.len();
            match guard.try_io(|fd| recv(fd.as_raw_fd(), buf)) {
                Ok(Ok((n, stamp))) => {
                    if n > 0 {
                        if let Some(at) = stamp {
                            let lag_ns = (realtime_ns() - at).max(0);
                            this.read_lag.record_us((lag_ns / 1000) as u64);
                        }
                        if n < len {
                            // A short read drained the socket buffer (as tokio's own TCP stream
                            // assumes): no need to learn that from an empty read.
                            guard.clear_ready();
                        }
                    }
                    // SAFETY: see above.
                    unsafe { cursor.advance(n) };
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: readiness was cleared, wait for the next event.
                Err(_would_block) => continue,
            }
        }
    }
}

impl hyper::rt::Write for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| io::Write::write_vectored(&mut fd.get_ref(), bufs)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.fd.get_ref().shutdown(std::net::Shutdown::Write))
    }
}
