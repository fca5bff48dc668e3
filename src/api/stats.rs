//! The Rust API's statistics: [`Server::stats`].
//!
//! Uses: stats.

use super::Server;
use crate::stats::Stats;

impl Server {
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
}
