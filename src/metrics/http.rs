//! The `/metrics` endpoint: a small HTTP/1.1 server on a thread of its own
//! (never a worker), over its own `mio::Poll`.
//!
//! It answers `GET /metrics` (and `HEAD`) with the text its body function
//! gives, 404 for any other path, 405 for any other method, 400 for what
//! is not HTTP; one request per connection (`Connection: close`).
//! Requests are parsed by `httparse` (a small, well-kept parser used by
//! hyper) rather than by hand. Each connection has [`CLIENT_TIMEOUT`] in
//! all, from accept to close, so a slow or silent client costs a socket
//! for that long and never holds up the others; at most [`MAX_CLIENTS`]
//! are served at once (more are closed at once). With no client, the
//! thread blocks in `epoll_wait` with no timeout: an idle endpoint costs
//! no CPU.
//!
//! Uses: nothing of the crate.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// How long one connection may take, from accept to close.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed as soon as accepted.
pub(crate) const MAX_CLIENTS: usize = 64;
/// The longest request head read; a longer one gets 431.
const MAX_REQUEST: usize = 8 * 1024;
/// Headers a request may have; more gets 431.
const MAX_HEADERS: usize = 32;

const WAKE: Token = Token(usize::MAX);
const LISTEN: Token = Token(usize::MAX - 1);

/// What makes the text served, called on the endpoint's thread for each
/// request.
pub(crate) type Body = Box<dyn Fn() -> String + Send>;

/// A running endpoint; stopped by [`Endpoint::stop`] or when dropped.
pub(crate) struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` (`"127.0.0.1:9100"`, `"[::1]:9100"`, or a host name
    /// and port) and serves on a new thread. Fails (nothing started) when
    /// the address is bad or cannot be bound; the error names it.
    pub(crate) fn start<A: std::net::ToSocketAddrs + std::fmt::Debug>(
        addr: A,
        body: Body,
    ) -> io::Result<Endpoint> {
        let l = std::net::TcpListener::bind(&addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr:?}: {e}")))?;
        l.set_nonblocking(true)?;
        let bound = l.local_addr()?;
        let mut listener = TcpListener::from_std(l);
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        poll.registry()
            .register(&mut listener, LISTEN, Interest::READABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Serve {
            poll,
            listener,
            clients: Vec::new(),
            free: Vec::new(),
            body,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("mario-metrics".into())
            .spawn(move || server.run())?;
        Ok(Endpoint {
            addr: bound,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen, for port 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: closes the listening socket and every connection,
    /// and waits for the thread (unless called on it).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request head.
    Reading,
    /// Writing `out[pos..]`.
    Writing,
    /// The response is sent and the write side shut: waiting for the
    /// client to close, discarding what it sends (closing with unread
    /// input would reset the connection and could destroy the response).
    Draining,
}

struct Client {
    stream: TcpStream,
    phase: Phase,
    input: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    deadline: Instant,
}

struct Serve {
    poll: Poll,
    listener: TcpListener,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    body: Body,
    stop: Arc<AtomicBool>,
}

/// What one look at a client found.
enum Next {
    /// Waiting for the socket.
    Wait,
    /// Finished (or failed): close it.
    Close,
}

impl Serve {
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let timeout = self
                .clients
                .iter()
                .flatten()
                .map(|c| c.deadline.saturating_duration_since(now) + Duration::from_millis(1))
                .min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("metrics endpoint: poll failed: {e}; stopping");
                return;
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKE => {}
                    LISTEN => self.accept(),
                    Token(i) => self.serve(i),
                }
            }
            let now = Instant::now();
            for i in 0..self.clients.len() {
                if self.clients[i].as_ref().is_some_and(|c| now >= c.deadline) {
                    self.close(i);
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.clients.len() - self.free.len() >= MAX_CLIENTS {
                        continue; // dropped: closed at once
                    }
                    let i = self.free.pop().unwrap_or_else(|| {
                        self.clients.push(None);
                        self.clients.len() - 1
                    });
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        self.free.push(i);
                        continue;
                    }
                    self.clients[i] = Some(Client {
                        stream,
                        phase: Phase::Reading,
                        input: Vec::new(),
                        out: Vec::new(),
                        pos: 0,
                        deadline: Instant::now() + CLIENT_TIMEOUT,
                    });
                    // Readiness already there is reported by the
                    // registration itself.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: the listener reports
                    // the next connection again; the ones pending wait.
                    log::warn!("metrics endpoint: accept: {e}");
                    return;
                }
            }
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(mut c) = self.clients[i].take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(i);
        }
    }

    /// Moves client `i` on as far as its socket allows.
    fn serve(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if let Next::Close = step(c, &self.body) {
            self.close(i);
        }
    }
}

/// Runs client `c` through its phases until it must wait or is done.
fn step(c: &mut Client, body: &Body) -> Next {
    let mut buf = [0u8; 4096];
    loop {
        match c.phase {
            Phase::Reading => {
                match c.stream.read(&mut buf) {
                    Ok(0) => return Next::Close, // gone before a whole request
                    Ok(n) => c.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Next::Close,
                }
                if let Some(out) = respond(&c.input, body) {
                    c.out = out;
                    c.phase = Phase::Writing;
                }
            }
            Phase::Writing => {
                if c.pos == c.out.len() {
                    let _ = c.stream.shutdown(Shutdown::Write);
                    c.phase = Phase::Draining;
                    continue;
                }
                match c.stream.write(&c.out[c.pos..]) {
                    Ok(n) => c.pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Next::Close,
                }
            }
            Phase::Draining => match c.stream.read(&mut buf) {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            },
        }
    }
}

/// The response to the request head read so far in `input`, or `None`
/// while it is incomplete.
fn respond(input: &[u8], body: &Body) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(input) {
        Ok(httparse::Status::Complete(_)) => (req.method.unwrap_or(""), req.path.unwrap_or("")),
        Ok(httparse::Status::Partial) if input.len() <= MAX_REQUEST => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Some(response(
                "431 Request Header Fields Too Large",
                &[],
                b"request too large\n",
                true,
            ));
        }
        Err(_) => return Some(response("400 Bad Request", &[], b"bad request\n", true)),
    };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Some(match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = body();
            response(
                "200 OK",
                &[("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                text.as_bytes(),
                method == "GET",
            )
        }
        ("GET" | "HEAD", _) => response(
            "404 Not Found",
            &[],
            b"not found: try /metrics\n",
            method == "GET",
        ),
        _ => response(
            "405 Method Not Allowed",
            &[("Allow", "GET, HEAD")],
            b"method not allowed\n",
            true,
        ),
    })
}

/// An HTTP/1.1 response closing the connection (`with_body`: false for
/// `HEAD`, which gets the headers only).
fn response(status: &str, headers: &[(&str, &str)], body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    if !headers.iter().any(|(k, _)| *k == "Content-Type") {
        out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Option<Vec<u8>>) -> String {
        String::from_utf8(r.expect("a response")).unwrap()
    }

    #[test]
    fn requests_get_the_documented_answers() {
        let body: Body = Box::new(|| "m 1\n".to_string());
        let ok = text(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &body));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("\r\nContent-Length: 4\r\n") && ok.ends_with("\r\n\r\nm 1\n"));
        let head = text(respond(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n", &body));
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(text(respond(b"GET / HTTP/1.1\r\n\r\n", &body)).starts_with("HTTP/1.1 404 "));
        let post = text(respond(b"POST /metrics HTTP/1.1\r\n\r\n", &body));
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text(respond(b"\x16\x03\x01garbage\r\n\r\n", &body)).starts_with("HTTP/1.1 400 "));
        assert_eq!(respond(b"GET /metrics HTTP/1.1\r\nHost:", &body), None);
        let long = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_REQUEST]].concat();
        assert!(text(respond(&long, &body)).starts_with("HTTP/1.1 431 "));
    }
}
