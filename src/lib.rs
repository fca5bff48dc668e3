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
//! # From C to Rust
//!
//! Every entry point of `mario.h` (MarioTCP 0.9.9 and what libmario added)
//! and its Rust form. The Rust API is per server: no global tables.
//!
//! | C | Rust |
//! |---|---|
//! | `init_server(port, workernum, connnum, read_timeout, write_timeout)` | [`Server::builder`]`()`[`.port`](ServerBuilder::port)[`.workers`](ServerBuilder::workers)[`.conns_per_worker`](ServerBuilder::conns_per_worker)[`.read_timeout`](ServerBuilder::read_timeout)[`.write_timeout`](ServerBuilder::write_timeout)[`.build()`](ServerBuilder::build) |
//! | `mario_init_server_addr(addr, ...)` | [`Server::bind`]`("[::]:8082")`, [`ServerBuilder::bind`] (any [`ToSocketAddrs`](std::net::ToSocketAddrs)), [`ServerBuilder::bind_ip`] (`None`: every address, dual-stack) |
//! | `start_server(s)` | [`Server::run`] (`io::Result<()>`; a listening error names the address: [`ListenError`]) |
//! | `mario_stop_server(s)` | [`Server::stop_handle`], [`StopHandle::stop`] |
//! | `mario_set_output_limit` | [`ServerBuilder::output_limit`] |
//! | `mario_set_backlog`, `mario_set_reuseport` | [`ServerBuilder::backlog`], [`ServerBuilder::reuseport`] |
//! | `mario_set_proxy_protocol`, `mario_add_proxy_source`, `MARIO_PROXY_*` | [`ServerBuilder::proxy_protocol`], [`ServerBuilder::proxy_source`] ([`IpNet`]), [`proto::PROXY_V1`], [`proto::PROXY_V2`], [`proto::PROXY_ANY`] |
//! | `mario_set_framing`, `mario_framing`, `MARIO_FRAMING_*` | [`ServerBuilder::framing`], [`Framing`] |
//! | `regist_akg_func(id, f)`, `AKG_FUNC[id]` | [`ServerBuilder::on_packet`] (returns [`HandlerResult`]) |
//! | `regist_frame_func(f)`, `mario_frame_len(c)` | [`ServerBuilder::on_frame`]; the frame is a `&[u8]`: `frame.len()` |
//! | `regist_connected_func` | [`ServerBuilder::on_connect`] (after [`ServerBuilder::state`]'s `init`) |
//! | `regist_disconnected_func`, `regist_timeout_func`, `regist_closed_func`, `regist_error_func` | [`ServerBuilder::on_close`], with the reason ([`AKG_TIMEOUT`], [`AKG_CLOSED`], [`AKG_ERROR`], or a `Conn::close` id) |
//! | a handler's `return -1` | `Ok(`[`Verdict::Stop`]`)` or `Err(..)` (logged with the packet id and the peer) |
//! | `regist_pool_func`, `mario_set_pool_threads` | [`ServerBuilder::on_packet_blocking`] (gets a [`PoolConn`], no state), [`ServerBuilder::pool_threads`] |
//! | `mario_set_stall_threshold`, `regist_stall_func`, `mario_worker_stalled` | [`ServerBuilder::stall_threshold`], [`ServerBuilder::on_stall`] (worker index, not `WORKER *`), [`Server::worker_stalled`] |
//! | `regist_stx(stx)`, `g_stx`, `DEFAULT_STX` | [`ServerBuilder::stx`], [`DEFAULT_STX`] |
//! | `g_akg_connected_id`, `g_akg_timeout_id`, `g_akg_closed_id`, `g_akg_error_id` | [`AKG_CONNECTED`], [`AKG_TIMEOUT`], [`AKG_CLOSED`], [`AKG_ERROR`] |
//! | `bufferevent_write(c->bufev, data, len)` in a handler | [`Conn::send`], [`Conn::send_packet`] |
//! | `bufferevent_write(bufev, ...)` from another thread, `mario_close_bufev` | [`send_to`], [`close_id`] with a [`ConnId`] ([`Conn::id`]) |
//! | `close_conn(c, id)`, `close_err_conn(c)` | [`Conn::close`]`(id)`, [`Conn::close`]`(`[`AKG_ERROR`]`)` |
//! | `c->user` | the connection's state `S`: [`ServerBuilder::state`], [`ServerBuilder::default_state`] |
//! | `c->cip`, `c->cport`, `mario_conn_peer(c, ..)` | [`Conn::peer`], [`PoolConn::peer`] ([`SocketAddr`](std::net::SocketAddr), IPv6 too, the real client behind a PROXY balancer) |
//! | `c->in_buf`, `c->in_buf_len` | [`Packet::bytes`], [`Packet::body`], [`Packet::head`]; the frame slice of `on_frame` |
//! | `c->bufev`, `c->ind`, `c->owner->ind`, `c->fd`, `c->err_type` | [`Conn::id`], [`Conn::slot`], [`Conn::worker_index`], [`Conn::fd`], [`Conn::close_reason`] |
//! | `mario_get_stats`, `mario_get_worker_stats`, `mario_stats` | [`Server::stats`] ([`Stats::total`], [`Stats::workers`], [`Counters`]) |
//! | `mario_format_prometheus`, `mario_serve_metrics` | [`Server::prometheus`], [`Server::serve_metrics`] |
//! | `s->port` (after start) | [`Server::port`], [`Server::local_addr`], [`Server::wait_listening`] |
//! | `slog_*`, `record_log`, `mario_record_log_line`, `create_log_queue`, `start_log_thread` | the [`log`](https://docs.rs/log) macros, into the logger the program installs (see Logging), or [`logq::install_logger`] for the C library's log thread |
//! | `mario_set_log_level`, `g_mario_log_level`, `MARIO_LOG_*` | `log::set_max_level`, `log::Level` ([`logq::Level`] maps them) |
//! | `mario_set_log_file`, `mario_reopen_log`, `mario_set_log_callback` | the logger's own settings; with [`logq::install_logger`]: [`logq::set_log_file`], [`logq::reopen_log`] |
//! | `signal_handler(sig, f)` | the `ctrlc` crate (feature `termination`) or `signal-hook` calling [`StopHandle::stop`]: see [`StopHandle`] and `examples/chat.rs` |
//! | `nsleep`, `susleep` | [`std::thread::sleep`] |
//! | `mario_version()`, `MARIO_VERSION_*` | [`VERSION`] |
//! | `MAX_PKG_LEN`, `SIZE_OF_HEAD`, `CONN_READ_TIMEOUT`, `CONN_WRITE_TIMEOUT` | [`MAX_PKG_LEN`], [`SIZE_OF_HEAD`]; the builder's defaults (300 s) |
//! | systemd socket activation (`LISTEN_FDS`) | the same, detected by [`Server::run`] |
//!
//! C features without a Rust twin, and why:
//!
//! * `run_daemon()`: forking a process whose threads (a logger's, a
//!   runtime's) already run is unsound, and a service manager (systemd,
//!   docs/DEPLOY.md) does it better; a Rust server stays in the foreground.
//! * `c->out_buf` (the per-worker scratch area): [`Conn::send`] copies the
//!   bytes it is given, so any buffer of the handler's does.
//! * The `SERVER` / `WORKER` records (`s->workers`, `w->qlog`, ...) and the
//!   `WORKER *` of the stall callback: the Rust API names a worker by its
//!   index ([`Conn::worker_index`], [`Server::worker_stalled`]).
//! * Global handler tables (`AKG_FUNC`, `g_stx`): handlers and settings
//!   belong to each [`Server`], so two servers of one process differ.
//! * Handlers taking the raw `CONN *` and writing through
//!   `bufferevent_write` on a pointer: [`Conn`] is reached as `&mut Conn`
//!   on its worker only ([`Conn`] is neither `Send` nor `Sync`); other
//!   threads use its [`ConnId`].
//! * The log-queue macros (`PUT_CONSUMER`, `GET_PRODUCER`, ...) and
//!   `CONN_BUF_LEN`, `MAX_BUF_READ_LEN`, `MAX_CONN_ARRAY_SIZE`: internals of
//!   the original's buffers that no Rust program needs.
//! * A per-connection state in blocking handlers: the state belongs to the
//!   connection's worker thread, while a blocking handler runs on a pool
//!   thread; it gets a [`PoolConn`] (id, address, `send`, `close`) instead.
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
#![deny(rustdoc::broken_intra_doc_links)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod accept;
mod api;
mod conn;
pub mod ffi;
#[cfg(feature = "harness")]
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
