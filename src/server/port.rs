//! Loopback ports: pick a free one, tell whether one is taken, hand out distinct ones to servers that run
//! at the same time, and recognise a server that could not bind its port.
//!
//! "In use" means we could not listen on it: a bind to 127.0.0.1 fails on Linux both for a listener on
//! 127.0.0.1 and for one on the wildcard address, which is how engines usually listen. A successful
//! connection also counts, for listeners on other loopback aliases. Sockets in TIME_WAIT do not count:
//! the standard library binds with SO_REUSEADDR, as the engines do.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
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

/// Hands out ports to the servers of one run: never the same port to two servers of the run while both
/// hold it, and only ports that are free at the moment. Another program (or another runner, e.g. a
/// second Slurm job on the same node) can still take a port between the pick and the server's bind:
/// that shows up as [`says_address_in_use`] in the server's output, and the caller retries.
#[derive(Debug, Default)]
pub struct PortAllocator {
    held: Mutex<HashSet<u16>>,
}

impl PortAllocator {
    pub fn new() -> PortAllocator {
        PortAllocator::default()
    }

    /// A free port no server of this run holds.
    pub fn take(&self) -> io::Result<u16> {
        for _ in 0..64 {
            let port = pick_free_port()?;
            if let Ok(mut held) = self.held.lock()
                && held.insert(port)
            {
                return Ok(port);
            }
        }
        Err(io::Error::other(
            "no free port that this run does not already use",
        ))
    }

    /// Marks `port` as held (a fixed port from the file).
    pub fn hold(&self, port: u16) {
        if let Ok(mut held) = self.held.lock() {
            held.insert(port);
        }
    }

    /// The server that held `port` is gone.
    pub fn release(&self, port: u16) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&port);
        }
    }
}

/// Whether a server's last output lines say it could not bind its port: Python's `[Errno 98] Address
/// already in use` (vLLM, SGLang), llama.cpp's and most C servers' `bind: Address already in use`,
/// Rust's `Address in use (os error 98)`, Node's `EADDRINUSE`.
pub fn says_address_in_use(log_tail: &[String]) -> bool {
    log_tail.iter().any(|line| {
        let l = line.to_ascii_lowercase();
        l.contains("address already in use")
            || l.contains("address in use")
            || l.contains("eaddrinuse")
            || l.contains("errno 98")
    })
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
    fn the_allocator_never_gives_one_port_twice_while_held() {
        let ports = PortAllocator::new();
        let taken: Vec<u16> = (0..20).map(|_| ports.take().unwrap()).collect();
        let distinct: HashSet<u16> = taken.iter().copied().collect();
        assert_eq!(distinct.len(), taken.len(), "{taken:?}");
        ports.release(taken[0]);
        assert!(!ports.held.lock().unwrap().contains(&taken[0]));
    }

    #[test]
    fn address_in_use_is_recognised_in_the_usual_wordings() {
        let says = |line: &str| says_address_in_use(&[String::from("starting"), line.to_string()]);
        assert!(says(
            "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use"
        ));
        assert!(says(
            "error: couldn't bind HTTP server socket: bind: Address already in use"
        ));
        assert!(says("Error: Address in use (os error 98)"));
        assert!(says(
            "Error: listen EADDRINUSE: address already in use :::3000"
        ));
        assert!(!says("INFO: Uvicorn running on http://127.0.0.1:8000"));
    }

    #[test]
    fn picked_port_is_free() {
        let port = pick_free_port().unwrap();
        assert_ne!(port, 0);
        assert!(!port_in_use(port));
    }
}
