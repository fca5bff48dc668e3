//! The Rust API's statistics: [`Server::stats`], [`Server::prometheus`],
//! [`Server::serve_metrics`].
//!
//! Uses: stats, metrics (the Prometheus text).

use std::io;
use std::net::SocketAddr;

use super::Server;
use crate::metrics;
use crate::stats::Stats;

impl<S> Server<S> {
    /// The server's statistics now: each worker's counters and their sum
    /// (see [`Counters`](crate::Counters) for each number and its unit).
    /// From any thread, at any time: all zeros before [`Server::run`], the
    /// final numbers after it returns. Reading costs the workers nothing
    /// (relaxed loads of counters only their own thread writes); each
    /// number is at most a few events old, and two numbers need not be from
    /// the same instant.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// [`Server::stats`] in the Prometheus text exposition format 0.0.4
    /// (what [`Server::serve_metrics`] serves): families `mario_*`,
    /// counters ending in `_total`, a `worker="N"` label on every sample,
    /// `# HELP` and `# TYPE` lines. docs/C-API.md, "Statistics", lists the
    /// families.
    pub fn prometheus(&self) -> String {
        metrics::prometheus(&self.stats())
    }

    /// Serves [`Server::prometheus`] over HTTP at `addr`, anything
    /// [`ToSocketAddrs`](std::net::ToSocketAddrs) takes (e.g.
    /// `"127.0.0.1:9100"`, `"[::1]:9100"`, `("localhost", 9100)`, a
    /// `SocketAddr`; the first address that binds is used; port 0 picks a
    /// free one) on a
    /// thread of its own, never a worker: `GET /metrics` gets 200 with
    /// `Content-Type: text/plain; version=0.0.4`, other paths 404, other
    /// methods 405; one request per connection, each connection closed
    /// after 5 s at most, however slow the client. An idle endpoint costs
    /// no CPU. It stops when [`Server::run`] returns (or the server is
    /// dropped); it may be started before `run`.
    ///
    /// Returns the address bound. Errors: `addr` is not an address or
    /// cannot be bound (the error names it), or the server has stopped.
    pub fn serve_metrics<A: std::net::ToSocketAddrs + std::fmt::Debug>(
        &self,
        addr: A,
    ) -> io::Result<SocketAddr> {
        self.inner.serve_metrics(addr)
    }
}
