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
//!   `include/mario/mario.h` and link `libmario.a` (see [`ffi`] and the
//!   README).
//! * **Rust programs** use [`Server::builder`] with closures, and no
//!   `unsafe`:
//!
//! ```no_run
//! use mario::{Server, Verdict};
//!
//! let server = Server::builder()
//!     .port(8082)
//!     .workers(2)
//!     .stx(0x8eb6_9af7)
//!     .on_packet(0x6101, |conn, pkt| {
//!         // Answer LOGIN with an empty packet of the same id.
//!         conn.send_packet(pkt.id(), &[]);
//!         Verdict::Continue
//!     })
//!     .build()
//!     .expect("server");
//! let stop = server.stop_handle();
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(60));
//!     stop.stop();
//! });
//! server.run().expect("run");
//! ```

#![warn(missing_docs)]

mod accept;
mod conn;
pub mod ffi;
#[doc(hidden)]
pub mod fuzzing;
mod layout;
pub mod logq;
pub mod proto;
mod server;
#[doc(hidden)]
pub mod sim;
mod sys;
mod wheel;
mod worker;

pub use conn::{Conn, ConnId};
pub use proto::{
    AKG_CLOSED, AKG_CONNECTED, AKG_ERROR, AKG_TIMEOUT, DEFAULT_STX, Head, MAX_PKG_LEN, SIZE_OF_HEAD,
};
pub use server::{
    Config, DEFAULT_OUTPUT_LIMIT, Packet, Server, ServerBuilder, StopHandle, Verdict, close_id, send_to,
};
