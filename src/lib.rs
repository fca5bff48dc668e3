//! # libmario
//!
//! A Rust reimplementation of the MarioTCP 0.9.9 server core: N worker
//! threads that accept and each run their own `mio` event loop, and
//! packets framed as an 8-byte `HEAD` plus body, dispatched to handlers by
//! packet id.
//!
//! The same core serves two kinds of application:
//!
//! * **C applications** written for MarioTCP 0.9.9 compile unchanged against
//!   `include/mario/mario.h` and link `libmario.a` (see [`ffi`] and
//!   docs/C-API.md).
//! * **Rust programs** use [`Server::bind`] or [`Server::builder`] with
//!   closures, a typed state per connection, and no `unsafe`:
//!
//! ```no_run
//! use mario::{HandlerResult, Server, Verdict};
//!
//! // Each connection remembers its user once it has logged in.
//! #[derive(Default)]
//! struct Session {
//!     uid: Option<u16>,
//! }
//!
//! let server = Server::bind("[::]:8082") // IPv6 and IPv4
//!     .workers(2)
//!     .stx(0x8eb6_9af7)
//!     .default_state::<Session>()
//!     .on_packet(0x6101, |conn, session, pkt| -> HandlerResult {
//!         // LOGIN: a uint16 uid; any other body is an error, which closes
//!         // the connection and is logged with the packet id and the peer.
//!         let uid: [u8; 2] = pkt.body().try_into()?;
//!         session.uid = Some(u16::from_ne_bytes(uid));
//!         conn.send_packet(pkt.id(), &[]); // an empty packet of the same id
//!         Ok(Verdict::Continue)
//!     })
//!     .on_close(|conn, session, reason| {
//!         log::info!("{} (user {:?}) closed: {reason:#06x}", conn.peer(), session.uid)
//!     })
//!     .build()?;
//! let stop = server.stop_handle(); // stop.stop() from any thread
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(60));
//!     stop.stop();
//! });
//! server.run()?; // serves until stopped; binding errors name the address
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! `examples/login_server.rs` (maritcp's LOGIN server) and
//! `examples/chat.rs` (a chat room on line framing, stopped by Ctrl-C) are
//! complete programs: `cargo run --example chat`.
//!
//! # Logging
//!
//! The library reports through the [`log`](https://docs.rs/log) crate
//! (bad input, overload, refused connections, panics in handlers). A Rust
//! program routes those messages like any other `log` records: install the
//! logger of its choice before building a server, e.g.
//! `env_logger::init()`, or `tracing_subscriber::fmt().init()` with
//! `tracing-log`'s bridge, and set the level with `log::set_max_level` (or
//! the logger's own filter). Without a logger the messages are dropped.
//! C applications get [`logq::install_logger`] instead (called by
//! `init_server`): the library's own lines, `[<ISO 8601 UTC time>]
//! [<LEVEL>] <message>`, go through the log thread to standard output
//! (errors to standard error), a log file (`mario_set_log_file`) or a
//! callback (`mario_set_log_callback`); see docs/C-API.md, "Logging".
//!
//! # Module map
//!
//! From the bottom up; a module uses only modules of lower layers (each
//! file's first lines say what it may use, and `tests/layering.rs` fails
//! the build when a module reaches above itself). docs/ARCHITECTURE.md
//! tells the same story with the data path and the threads.
//!
//! | layer | module | holds |
//! |---|---|---|
//! | 0 leaves | `sys` | the socket system calls, on raw descriptors |
//! | | [`proto`] | the `HEAD` frame: parse, check, scan, carry a partial packet |
//! | | `wheel` | a hashed timing wheel with one-second ticks |
//! | | `sync` | std atomics, or loom's under `--cfg loom` |
//! | | [`logq`] | log rings, the log thread, the `log` crate sink |
//! | | `stats` | each worker's counters ([`Counters`], [`Stats`]) |
//! | 1 records | `records` | the C `WORKER`, `WORKER_ARRAY`, `SERVER` records |
//! | | `listen` | the listening socket: address, IPv6, backlog, reuseport, systemd's |
//! | | `metrics` | the Prometheus text of the statistics, the `/metrics` endpoint |
//! | 2 connections | `conn` | [`Conn`], [`ConnId`], a worker's connection table, the input path |
//! | 3 contract | `service` | [`Config`], [`Verdict`], the `Service` callbacks |
//! | | `mailbox` | what other threads hand a worker; the wake-up protocol |
//! | 4 placement | `accept` | the shared listener, accepting, placement across workers |
//! | | `pool` | the threads that run blocking handlers |
//! | 5 reactor | `worker` | the event loop; output, closing, callbacks |
//! | 6 server | `server` | start-up, stop, the `ConnId` registry ([`send_to`], [`close_id`]) |
//! | 7 front ends | `api` | the Rust API: [`Server`], [`ServerBuilder`], [`Packet`] |
//! | | [`ffi`] | the C ABI of MarioTCP 0.9.9 |
//! | 8 harnesses | `harness` | fuzz and benchmark harnesses (feature `harness` only) |

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod accept;
mod api;
mod conn;
pub mod ffi;
#[cfg(feature = "harness")]
#[doc(hidden)]
pub mod harness;
mod listen;
pub mod logq;
mod mailbox;
mod metrics;
mod pool;
pub mod proto;
mod records;
mod server;
mod service;
mod stats;
mod sync;
mod sys;
mod wheel;
mod worker;

pub use api::{BoxError, HandlerResult, Packet, PoolConn, Server, ServerBuilder, StopHandle, VERSION};
pub use conn::{Conn, ConnId};
/// A network in CIDR form ([`Config::proxy_sources`]), from the `ipnet`
/// crate.
pub use ipnet::IpNet;
pub use listen::ListenError;
pub use proto::{
    AKG_CLOSED, AKG_CONNECTED, AKG_ERROR, AKG_TIMEOUT, DEFAULT_STX, Framing, Head, MAX_PKG_LEN, SIZE_OF_HEAD,
};
pub use server::{close_id, send_to};
pub use service::{Config, DEFAULT_OUTPUT_LIMIT, DEFAULT_STALL_THRESHOLD, MAX_POOL_THREADS, Verdict};
pub use stats::{Counters, Stats};
