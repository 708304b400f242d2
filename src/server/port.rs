//! Loopback ports: pick a free one, tell whether one is taken.
//!
//! "In use" means we could not listen on it: a bind to 127.0.0.1 fails on Linux both for a listener on
//! 127.0.0.1 and for one on the wildcard address, which is how engines usually listen. A successful
//! connection also counts, for listeners on other loopback aliases. Sockets in TIME_WAIT do not count:
//! the standard library binds with SO_REUSEADDR, as the engines do.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A port that was free a moment ago (the kernel's choice). Another program may take it before the
/// server binds it; `start` checks again and fails with a clear message if so.
pub fn pick_free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether something listens on `port` (or we may not bind it).
pub fn port_in_use(port: u16) -> bool {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
        return true;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// [`port_in_use`] on the blocking pool (the connect attempt may take up to 200 ms).
pub async fn port_in_use_async(port: u16) -> bool {
    tokio::task::spawn_blocking(move || port_in_use(port))
        .await
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_port_is_in_use_and_free_after_close() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(port_in_use(port));
        drop(listener);
        assert!(!port_in_use(port));
    }

    #[test]
    fn picked_port_is_free() {
        let port = pick_free_port().unwrap();
        assert_ne!(port, 0);
        assert!(!port_in_use(port));
    }
}
