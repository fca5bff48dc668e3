//! The C ABI of MarioTCP 0.9.9 (`include/mario/mario.h`, docs/C-API.md):
//! thin `extern "C"` shims that check their arguments and call the safe
//! core. The other front end over the reactor's `Service` contract (the
//! first is the Rust API, `api`).
//!
//! Every function that takes a pointer is an `unsafe extern "C" fn` whose
//! `# Safety` section says what the pointer must be; C callers cannot see
//! `unsafe`, Rust callers must uphold the same contract. No panic crosses
//! into C: every entry point runs inside `guard`, which aborts the
//! process on a panic (the C library is also built with `panic = "abort"`).
//!
//! The header's types, constants, structs and macros are hand-written in
//! `cbindgen.toml`; cbindgen adds the prototypes of this module.
//!
//! docs/C-API.md is the contract, section by section (each item here names
//! its section); c-examples/ holds whole applications: `mario.c` (the
//! original's sample server), `chat.c` (line framing, writes across
//! workers), `pushsrv.c` (a cluster behind HAProxy).
//!
//! # Example
//!
//! A server answering packet `0x6101` with an empty packet of the same id,
//! in C (`gcc -Iinclude app.c libmario.a -lpthread -ldl -lm`):
//!
//! ```c
//! #include "mario/mario.h"
//!
//! #define LOGIN 0x6101
//!
//! /* LOGIN: answer with an empty packet of the same id (on c's worker). */
//! static sint32 on_login(CONN *c) {
//!     HEAD h = { g_stx, SIZE_OF_HEAD, LOGIN };
//!     bufferevent_write(c->bufev, &h, sizeof h);
//!     return 0; /* 0: go on; non-zero: close the connection as an error */
//! }
//!
//! int main(void) {
//!     SERVER *s = init_server(8082, 2, 1024, 300, 300);
//!     if (s == NULL)
//!         return 1; /* the reason is on stderr */
//!     regist_stx(0x8eb69af7);
//!     regist_akg_func(LOGIN, on_login);
//!     start_server(s); /* blocks until mario_stop_server(s) */
//!     return 0;
//! }
//! ```
//!
//! Rust may call the same functions (under each one's `# Safety`), e.g.
//! the statistics of a server that has not started:
//!
//! ```
//! use mario::ffi::{init_server, mario_get_stats, mario_stats};
//!
//! let s = init_server(0, 2, 16, 0, 0); // port 0: a free one at start_server
//! assert!(!s.is_null());
//! let mut st = mario_stats::default();
//! let size = std::mem::size_of::<mario_stats>();
//! // SAFETY: `s` comes from init_server, `st` is writable for `size` bytes.
//! let wrote = unsafe { mario_get_stats(s, &mut st, size) };
//! assert_eq!(wrote as usize, size);
//! assert_eq!((st.workers, st.accepted), (2, 0));
//! assert_eq!(
//!     // SAFETY: mario_version returns a static NUL-terminated string.
//!     unsafe { std::ffi::CStr::from_ptr(mario::ffi::mario_version()) }.to_str(),
//!     Ok(env!("CARGO_PKG_VERSION"))
//! );
//! ```
//!
//! The docs of the functions and statics are also the comments of the
//! generated header, so they name things as C sees them.
//!
//! Uses: server, worker, service, conn, records, logq, proto, stats, metrics.

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]

mod stats;

pub use stats::{
    mario_format_prometheus, mario_get_stats, mario_get_worker_stats, mario_serve_metrics, mario_stats,
};

use std::ffi::{c_char, c_int, c_void};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use crate::conn::{Conn, ConnId};
use crate::logq::{self, Level, LogQueue};
use crate::proto::{
    AKG_CLOSED, AKG_CONNECTED, AKG_ERROR, AKG_TIMEOUT, DEFAULT_LENGTH_MAX, DEFAULT_LINE_MAX, DEFAULT_STX,
    Framing, Head, MAX_PKG_LEN, PROXY_ANY,
};
use crate::records::{CServer, CWorker};
use crate::server::{self, ServerShared};
use crate::service::{Config, MAX_POOL_THREADS, PoolCall, Service, Verdict};
use crate::worker;
use std::os::unix::ffi::OsStrExt;

/// `uint16` of the header (`mario_type.h`): `unsigned short`.
/// docs/C-API.md, "Types".
pub type uint16 = u16;
/// `uint32` of the header: `unsigned int`.
/// docs/C-API.md, "Types".
pub type uint32 = u32;
/// `sint32` of the header: `int`.
/// docs/C-API.md, "Types".
pub type sint32 = i32;
/// `CONN`: the connection record a callback gets, [`Conn`] (its fields:
/// docs/C-API.md, "Structures"). The library owns it and reuses it for a
/// later client of the slot: valid during the callback only; keep
/// `c->bufev` to reach the connection later.
pub type CONN = Conn;
/// `WORKER`: one worker's C record (`c->owner`, `&s->workers->array[i]`):
/// `thread_id`, `ind`, `qlog`, `server` (docs/C-API.md, "Structures").
/// Owned by its server, which lives for the process.
pub type WORKER = CWorker;
/// `SERVER`: a server's C record, from [`init_server`]: `server_fd`,
/// `port`, `workers`, `qlog`, `ret`, `conn_count` (docs/C-API.md,
/// "Structures"). Never freed: it lives for the process.
pub type SERVER = CServer;
/// `LOG_QUEUE`: a log queue, [`LogQueue`] (from [`create_log_queue`], or
/// a record's `qlog`); lives for the process.
/// docs/C-API.md, "Structures".
pub type LOG_QUEUE = LogQueue;
/// `FUNC_PTR`: a packet or event handler. The library calls it on the
/// connection's worker thread with a live `CONN *` (valid until the call
/// returns; the record itself lives as long as its server). For a packet
/// or a frame, 0 goes on and non-zero closes the connection as an error;
/// the return of connected and close callbacks is ignored. Example: the
/// [module](self#example)'s `on_login`.
pub type FUNC_PTR = Option<unsafe extern "C" fn(c: *mut CONN) -> sint32>;
/// `sighandler_t`: a signal handler, `void (*)(int)`, for
/// [`signal_handler`] (NULL: the default action).
/// docs/C-API.md, "Types".
pub type sighandler_t = Option<unsafe extern "C" fn(c_int)>;
/// `mario_log_callback`: receives the library's own messages (see
/// `mario_set_log_callback`).
/// docs/C-API.md, "Logging"; [`set_log_callback`](crate::logq::set_log_callback)
/// has a Rust example.
pub type mario_log_callback = Option<logq::LogCallback>;

/// libevent's `struct bufferevent`, only ever used by pointer: a
/// connection's `c->bufev` is a libmario handle (its [`ConnId`], tagged
/// odd), never dereferenced, for [`mario_bufferevent_write`] and
/// [`mario_close_bufev`] from any thread.
/// Example: the [module](crate::ffi#example)'s `bufferevent_write(c->bufev, ...)`.
#[repr(C)]
pub struct bufferevent {
    _private: [u8; 0],
}

/// Runs `f`, aborting the process if it panics: a panic must never unwind
/// into C.
fn guard<R>(name: &str, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            eprintln!("libmario: panic in {name}; aborting");
            std::process::abort();
        }
    }
}

/// `0xfffc`: the id of the connected callback. docs/C-API.md,
/// "Constants".
#[unsafe(no_mangle)]
pub static g_akg_connected_id: uint16 = AKG_CONNECTED;
/// `0xfffd`, close reason: read or write timeout. docs/C-API.md,
/// "Constants".
#[unsafe(no_mangle)]
pub static g_akg_timeout_id: uint16 = AKG_TIMEOUT;
/// `0xfffe`, close reason: closed by the peer, bad input or server stop.
/// docs/C-API.md, "Constants".
#[unsafe(no_mangle)]
pub static g_akg_closed_id: uint16 = AKG_CLOSED;
/// `0xffff`, close reason: a socket error, output over its cap, or a
/// handler returning non-zero. docs/C-API.md, "Constants".
#[unsafe(no_mangle)]
pub static g_akg_error_id: uint16 = AKG_ERROR;

/// The registered packet magic (`DEFAULT_STX` until `regist_stx`). The
/// library reads and writes it atomically; C code should only read it,
/// e.g. for the head of a reply. docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub static mut g_stx: uint32 = DEFAULT_STX;

/// The handler table, indexable by any `uint16`. The library reads and
/// writes its entries atomically; C code registers with the `regist_*`
/// functions (writing an entry directly while a server runs is a data race
/// of the application's). docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub static mut AKG_FUNC: [FUNC_PTR; 65536] = [None; 65536];

/// Entry `id` of [`AKG_FUNC`], as an atomic.
fn akg_slot(id: u16) -> &'static AtomicPtr<c_void> {
    // SAFETY: `AKG_FUNC` has 65536 entries, so any u16 indexes it; an entry
    // is one pointer-sized, pointer-aligned `Option<fn>` (null for `None`),
    // which has the layout of `*mut c_void`; the static lives forever, and
    // the library only ever accesses entries through this atomic view.
    unsafe { AtomicPtr::from_ptr((&raw mut AKG_FUNC).cast::<*mut c_void>().add(id as usize)) }
}

/// The handler registered for `id`.
fn akg(id: u16) -> FUNC_PTR {
    let p = akg_slot(id).load(Ordering::Acquire);
    // SAFETY: the entry holds a `FUNC_PTR` (null or a function pointer
    // stored by `set_akg` or by C), which has the same size and niche as a
    // data pointer on every platform this library builds for.
    unsafe { std::mem::transmute::<*mut c_void, FUNC_PTR>(p) }
}

fn set_akg(id: u16, f: FUNC_PTR) {
    let p = f.map_or(std::ptr::null_mut(), |f| f as *mut c_void);
    akg_slot(id).store(p, Ordering::Release);
}

/// [`g_stx`], as an atomic.
fn stx_cell() -> &'static AtomicU32 {
    // SAFETY: `g_stx` is a `u32` static, aligned for `AtomicU32`, living
    // forever, and the library accesses it only through this view.
    unsafe { AtomicU32::from_ptr(&raw mut g_stx) }
}

/// Calls the C handler `id` on `c`, if one is registered.
fn call(id: u16, c: *mut Conn) -> Option<sint32> {
    // SAFETY: the function was registered by the application with the
    // `FUNC_PTR` signature, whose contract is a live `CONN *` on its
    // worker's thread: `c` is the record the worker passes to a `Service`
    // callback, to which the library holds no reference during the call.
    akg(id).map(|f| unsafe { f(c) })
}

/// The service of C applications: dispatch through `AKG_FUNC`.
struct CService;

/// The handler of every frame of a framing other than `HEAD`
/// (`regist_frame_func`), as a function pointer (null: none).
static FRAME_FUNC: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

impl Service for CService {
    fn holds_conn(&self) -> bool {
        false
    }
    fn frame(&self, c: *mut Conn, _frame: &mut [u8]) -> Verdict {
        let p = FRAME_FUNC.load(Ordering::Acquire);
        // SAFETY: the pointer is null or a `FUNC_PTR` stored by
        // `regist_frame_func`; same layout and niche as a data pointer.
        let f = unsafe { std::mem::transmute::<*mut c_void, FUNC_PTR>(p) };
        // SAFETY: as in `call`: a live `CONN *` on its worker's thread.
        match f.map(|f| unsafe { f(c) }) {
            None => Verdict::NoHandler,
            Some(0) => Verdict::Continue,
            Some(_) => Verdict::Stop,
        }
    }
    fn connected(&self, c: *mut Conn) {
        call(AKG_CONNECTED, c);
    }
    fn packet(&self, c: *mut Conn, head: Head, _pkt: &mut [u8]) -> Verdict {
        match call(head.akg_id, c) {
            None => Verdict::NoHandler,
            Some(0) => Verdict::Continue,
            Some(_) => Verdict::Stop,
        }
    }
    fn closed(&self, c: *mut Conn, reason: u16) {
        call(reason, c);
    }
    fn pooled(&self, akg_id: u16) -> bool {
        POOL_ANY.load(Ordering::Relaxed) && !POOL_FUNC[akg_id as usize].load(Ordering::Acquire).is_null()
    }
    fn pool_packet(&self, call: PoolCall<'_>) -> Verdict {
        let p = POOL_FUNC[call.head.akg_id as usize].load(Ordering::Acquire);
        // SAFETY: the pointer is null or a `FUNC_PTR` stored by
        // `regist_pool_func`; same layout and niche as a data pointer.
        let f = unsafe { std::mem::transmute::<*mut c_void, FUNC_PTR>(p) };
        // SAFETY: the record is the pool thread's during the call (see
        // `pool`), with `in_buf` at the packet: the `FUNC_PTR` contract.
        match f.map(|f| unsafe { f(call.conn) }) {
            None => Verdict::NoHandler,
            Some(0) => Verdict::Continue,
            Some(_) => Verdict::Stop,
        }
    }
    fn stalled(&self, _index: usize, worker: *mut CWorker, akg_id: u16, ms: u32) {
        let p = STALL_FUNC.load(Ordering::Acquire);
        if p.is_null() {
            return;
        }
        // SAFETY: a non-null pointer was stored by `regist_stall_func` from
        // a `mario_stall_func`, which has the layout of a data pointer.
        let f = unsafe { std::mem::transmute::<*mut c_void, mario_stall_func>(p) };
        if let Some(f) = f {
            // SAFETY: the application's callback, with its documented
            // arguments: the worker's record lives as long as its server.
            unsafe { f(worker, akg_id, ms) }
        }
    }
}

/// Pool handlers by packet id (`regist_pool_func`), as function pointers
/// (null: none).
static POOL_FUNC: [AtomicPtr<c_void>; 65536] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 65536];
/// Set once any pool handler is registered: until then a packet costs one
/// load to know it runs on its worker.
static POOL_ANY: AtomicBool = AtomicBool::new(false);
/// The stall callback (`regist_stall_func`), as a function pointer.
static STALL_FUNC: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// `mario_stall_func`: told that a worker is stalled, `(worker, akg_id,
/// ms)`, on the monitor thread (see [`regist_stall_func`]; docs/C-API.md,
/// "Worker health").
pub type mario_stall_func = Option<unsafe extern "C" fn(w: *mut WORKER, akg_id: uint16, ms: uint32)>;

/// The server behind a `SERVER *`.
///
/// # Safety
///
/// `s` is NULL or a pointer returned by [`init_server`].
unsafe fn shared(s: *const SERVER) -> Option<Arc<ServerShared>> {
    if s.is_null() {
        return None;
    }
    // SAFETY: a non-null `SERVER *` comes from `init_server` (the caller's
    // contract), whose records live for the rest of the process.
    let p = unsafe { (*s).mario }.cast::<ServerShared>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from `Arc::as_ptr` of a server whose count
    // `init_server` leaked (never given back), so it is alive; we take one
    // more count for the returned `Arc`.
    unsafe {
        Arc::increment_strong_count(p);
        Some(Arc::from_raw(p))
    }
}

/// The server behind `s`, or `None` after saying on stderr that `who` got
/// something that is not a server.
///
/// # Safety
///
/// As [`shared`].
unsafe fn shared_or_say(s: *const SERVER, who: &str) -> Option<Arc<ServerShared>> {
    // SAFETY: the caller's contract.
    let srv = unsafe { shared(s) };
    if srv.is_none() {
        eprintln!("{who}: not a server from init_server");
    }
    srv
}

/// Creates a server for `port` (0..=65535) with `workernum` worker threads
/// (1..=256) of at most `connnum` connections each (1..=1048576),
/// closing connections idle for `read_timeout` seconds (gracefully) or
/// whose output makes no progress for `write_timeout` seconds (reset); 0
/// or less disables either, and any positive value works. It will listen
/// on `0.0.0.0` (IPv4 only, as MarioTCP 0.9.9; `mario_init_server_addr`
/// chooses the address). Nothing listens until `start_server`. Returns
/// NULL (with a message naming the bad argument on stderr) on bad
/// arguments or failure. The server lives for the rest of the process.
/// Any thread; one call per server (a process may hold several).
/// Example: c-examples/mario.c; docs/C-API.md, "Servers".
#[unsafe(no_mangle)]
pub extern "C" fn init_server(
    port: c_int,
    workernum: uint16,
    connnum: uint32,
    read_timeout: c_int,
    write_timeout: c_int,
) -> *mut SERVER {
    guard("init_server", || {
        new_server(
            "init_server",
            Some(Ipv4Addr::UNSPECIFIED.into()),
            port,
            workernum,
            connnum,
            read_timeout,
            write_timeout,
        )
    })
}

/// As `init_server`, listening on `addr`: an IPv4 literal
/// (`"127.0.0.2"`) or an IPv6 one (`"::1"`; no `%scope`), or NULL for every address through one dual-stack IPv6 socket
/// (`[::]`; IPv4 clients then come as IPv4 in `c->cip`), or `0.0.0.0` where
/// the system has no IPv6. An IPv6 client has `c->cip` and `c->cport` 0:
/// `mario_conn_peer` gives any client's address. `workernum` must be
/// 1..=256. Returns NULL, with a message on stderr, on a bad argument
/// (an address that is not a literal: no name lookup is done). `addr` is
/// read during the call only.
/// docs/C-API.md, "Servers".
///
/// # Safety
///
/// `addr` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_init_server_addr(
    addr: *const c_char,
    port: c_int,
    workernum: c_int,
    connnum: c_int,
    read_timeout: c_int,
    write_timeout: c_int,
) -> *mut SERVER {
    guard("mario_init_server_addr", || {
        let ip = if addr.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            let text = unsafe { std::ffi::CStr::from_ptr(addr) }.to_string_lossy();
            match text.trim().parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) if text.contains('%') => {
                    eprintln!("mario_init_server_addr: \"{text}\": IPv6 scope ids (%...) are not supported");
                    return std::ptr::null_mut();
                }
                Err(_) => {
                    eprintln!("mario_init_server_addr: \"{text}\" is not an IPv4 or IPv6 address");
                    return std::ptr::null_mut();
                }
            }
        };
        let (Ok(workers), Ok(conns)) = (uint16::try_from(workernum), uint32::try_from(connnum)) else {
            eprintln!("mario_init_server_addr: bad workernum {workernum} or connnum {connnum}");
            return std::ptr::null_mut();
        };
        new_server(
            "mario_init_server_addr",
            ip,
            port,
            workers,
            conns,
            read_timeout,
            write_timeout,
        )
    })
}

/// `init_server` and `mario_init_server_addr`: `who` names the caller in
/// messages.
fn new_server(
    who: &str,
    bind: Option<IpAddr>,
    port: c_int,
    workernum: uint16,
    connnum: uint32,
    read_timeout: c_int,
    write_timeout: c_int,
) -> *mut SERVER {
    logq::install_logger();
    let Ok(port) = u16::try_from(port) else {
        eprintln!("{who}: bad port {port}");
        return std::ptr::null_mut();
    };
    let cfg = Config {
        port,
        bind,
        workers: workernum,
        conns_per_worker: connnum,
        read_timeout: read_timeout.max(0) as u32,
        write_timeout: write_timeout.max(0) as u32,
        ..Config::default()
    };
    match ServerShared::new(cfg, Arc::new(CService)) {
        Ok(s) => {
            let records = s.records.server;
            // Servers made from C live for the process: C code may read
            // `SERVER` fields at any time, even after a stop.
            let _ = Arc::into_raw(s);
            records
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            std::ptr::null_mut()
        }
    }
}

/// Listens (on the server's address and port, or on the socket systemd
/// passed: see docs/DEPLOY.md), starts the workers, prints
/// `--------------start server ok--------------` and blocks the calling
/// thread until `mario_stop_server`. Returns `(void *)0` after a stop,
/// `(void *)-1` if the server cannot start (or `arg` is not a server).
/// Example: c-examples/mario.c; docs/C-API.md, "Servers".
///
/// # Safety
///
/// `arg` is NULL or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn start_server(arg: *mut c_void) -> *mut c_void {
    guard("start_server", || {
        let s = arg.cast::<SERVER>();
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared_or_say(s, "start_server") }) else {
            return -1isize as *mut c_void;
        };
        let stx = stx_cell().load(Ordering::Acquire);
        srv.configure(|c| c.stx = stx);
        // SAFETY: `s` is a live record (checked by `shared`); `ret` is
        // written only by the thread in `start_server`.
        unsafe { (*s).ret = -1 };
        match srv.run() {
            Ok(()) => {
                // SAFETY: as above.
                unsafe { (*s).ret = 0 };
                std::ptr::null_mut()
            }
            Err(e) => {
                eprintln!("start server error: {e}");
                -1isize as *mut c_void
            }
        }
    })
}

/// Stops a server started with `start_server`: stops accepting, closes
/// every connection (each close callback runs once), joins the workers;
/// `start_server` then returns `(void *)0`. From any other thread it waits
/// for all that, 5 seconds at most (plus up to 2 to flush the log): a
/// worker or pool thread still in a handler then is left running,
/// detached, and the log says so. From one of the server's own threads (a
/// handler on a worker or a pool thread, the stall callback) it only asks.
/// A call before `start_server` makes it return at once. Not
/// async-signal-safe: call it from a thread (e.g. one blocked in
/// `sigwait`), not from a signal handler.
/// Example: c-examples/mario.c (its `sigwait` thread); docs/C-API.md,
/// "Servers".
///
/// # Safety
///
/// `s` is NULL (ignored) or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_stop_server(s: *mut SERVER) {
    guard("mario_stop_server", || {
        // SAFETY: the caller's contract.
        if let Some(srv) = unsafe { shared(s) } {
            srv.stop();
        }
    })
}

/// Sets the cap on a connection's pending output, in bytes (default 4 MiB;
/// 0 counts as 1, more than 4,294,967,295 as that); output past it resets
/// the connection as an error. Takes effect at `start_server`.
/// docs/C-API.md, "Servers".
///
/// # Safety
///
/// `s` is NULL (ignored) or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_output_limit(s: *mut SERVER, bytes: usize) {
    guard("mario_set_output_limit", || {
        // SAFETY: the caller's contract.
        if let Some(srv) = unsafe { shared(s) } {
            srv.configure(|c| c.output_limit = bytes.clamp(1, u32::MAX as usize));
        }
    })
}

/// The id of a connection record.
///
/// # Safety
///
/// `c` is NULL or a `CONN *` handed out by the library (its record lives
/// as long as its server).
unsafe fn conn_id(c: *const CONN) -> Option<ConnId> {
    if c.is_null() {
        return None;
    }
    // SAFETY: the caller's contract; `bufev` is atomic, so reading it races
    // with nothing. (`owner` is not read: a pool thread swaps it during a
    // call, see `pool`.)
    let id = unsafe { (*std::ptr::addr_of!((*c).bufev)).load(Ordering::Acquire) } as u64;
    ConnId::from_raw(id)
}

/// Closes `c`: sets `c->err_type = akg_id`, calls `AKG_FUNC[akg_id](c)` if
/// set, closes the socket and frees the slot. Runs the callback at most
/// once per connection (a second call is a no-op). On the connection's
/// worker (inside a handler) it happens at once; from any other thread the
/// close is handed to that worker, and a connection that has closed
/// meanwhile is left alone.
/// Example: c-examples/chat.c (`/quit`); docs/C-API.md, "Closing".
///
/// # Safety
///
/// `c` is NULL (ignored) or a `CONN *` the library handed to a callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_conn(c: *mut CONN, akg_id: uint16) {
    guard("close_conn", || {
        // SAFETY: the caller's contract.
        let Some(id) = (unsafe { conn_id(c) }) else {
            return;
        };
        // On the owner thread the record is the worker's to use, and it
        // holds no reference to it while C code runs.
        let done = worker::on_worker(id.server(), id.worker(), |ctx| ctx.close(c, akg_id));
        if done.is_none() {
            let _ = server::close_id(id, akg_id);
        }
    })
}

/// `close_conn(c, g_akg_closed_id)`.
/// docs/C-API.md, "Connections".
///
/// # Safety
///
/// As for [`close_conn`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_err_conn(c: *mut CONN) {
    // SAFETY: the caller's contract is `close_conn`'s.
    unsafe { close_conn(c, AKG_CLOSED) }
}

/// Registers the handler for packet id `id` (NULL removes it) in
/// `AKG_FUNC`, for every server of the process. It runs on the
/// connection's worker with `c->in_buf` at the packet (`HEAD` first); it
/// returns 0 to go on, non-zero to close the connection as an error. Call
/// before `start_server`; a change while a server runs takes effect for
/// the next packet. Any thread. Example: c-examples/mario.c (and
/// function.c, the handlers); docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub extern "C" fn regist_akg_func(id: uint16, func: FUNC_PTR) {
    set_akg(id, func)
}

/// Registers the handler of every frame of a framing other than `HEAD`
/// (see `mario_set_framing`): it gets the connection with `c->in_buf` at
/// the frame's first byte and `mario_frame_len(c)` its length, on the
/// connection's worker; it returns 0 to go on, non-zero to close the
/// connection as an error. NULL removes it (a frame then closes its
/// connection, with a warning). Any thread, as `regist_akg_func`.
/// Example: c-examples/chat.c; docs/C-API.md, "Framing".
#[unsafe(no_mangle)]
pub extern "C" fn regist_frame_func(func: FUNC_PTR) {
    let p = func.map_or(std::ptr::null_mut(), |f| f as *mut c_void);
    FRAME_FUNC.store(p, Ordering::Release);
}

/// The length in bytes of the frame at `c->in_buf`, during a frame or
/// packet callback (a `HEAD` packet's `pkglen`); `c->in_buf_len` holds at
/// most 65,535. 0 for NULL. On the callback's thread. Example:
/// c-examples/chat.c (`on_line`).
///
/// # Safety
///
/// `c` is NULL or a `CONN *` the library handed to a callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_frame_len(c: *const CONN) -> usize {
    if c.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract; `frame_len` is written by the worker
    // before the callback that reads it, on the same thread.
    unsafe { (*c).frame_len as usize }
}

/// `mario_framing`: a server's framing, for `mario_set_framing` (the
/// fields each kind uses are in the header).
/// Example: c-examples/chat.c (`MARIO_FRAMING_LINE`); docs/C-API.md,
/// "Framing".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mario_framing {
    /// `MARIO_FRAMING_HEAD` (0), `_LENGTH` (1), `_LINE` (2), `_FIXED` (3),
    /// `_RAW` (4).
    pub kind: uint32,
    /// The largest frame accepted, in bytes; 0: the kind's default.
    pub max_frame: uint32,
    /// HEAD and LENGTH: non-zero = fields in network byte order.
    pub big_endian: uint32,
    /// LENGTH: bytes before the length field.
    pub length_offset: uint32,
    /// LENGTH: 1, 2, 4 or 8.
    pub length_size: uint32,
    /// LENGTH: added to the field's value to give the bytes after it.
    pub length_adjust: sint32,
    /// LINE: NULL = "\n" (with "\n", a "\r" before it is dropped too).
    pub delimiter: *const c_char,
    /// FIXED: every frame's size.
    pub frame_size: uint32,
}

/// The framing a `mario_framing` describes, or what is wrong with it.
///
/// # Safety
///
/// `f.delimiter` is NULL or a NUL-terminated string.
unsafe fn framing_of(f: &mario_framing) -> Result<Framing, String> {
    let framing = match f.kind {
        0 => Framing::Head {
            big_endian: f.big_endian != 0,
            max_frame: if f.max_frame == 0 {
                MAX_PKG_LEN as u32
            } else {
                f.max_frame
            },
        },
        1 => Framing::Length {
            offset: f.length_offset,
            size: u8::try_from(f.length_size)
                .map_err(|_| format!("length_size is {}, must be 1, 2, 4 or 8", f.length_size))?,
            adjust: f.length_adjust,
            big_endian: f.big_endian != 0,
            max_frame: if f.max_frame == 0 {
                DEFAULT_LENGTH_MAX
            } else {
                f.max_frame
            },
        },
        2 => Framing::Line {
            delimiter: if f.delimiter.is_null() {
                b"\n".to_vec()
            } else {
                // SAFETY: the caller's contract.
                unsafe { std::ffi::CStr::from_ptr(f.delimiter) }
                    .to_bytes()
                    .to_vec()
            },
            max_frame: if f.max_frame == 0 {
                DEFAULT_LINE_MAX
            } else {
                f.max_frame
            },
        },
        3 => Framing::Fixed { size: f.frame_size },
        4 => Framing::Raw,
        k => {
            return Err(format!(
                "kind is {k}, must be MARIO_FRAMING_HEAD..MARIO_FRAMING_RAW (0..=4)"
            ));
        }
    };
    framing.validate()?;
    Ok(framing)
}

/// Sets how the server cuts its input into frames, before `start_server`
/// (the classic `HEAD` is the default). Returns 0, or -1 with a message on
/// stderr naming the bad field (nothing changed); see docs/C-API.md,
/// "Framing", for each kind.
///
/// # Safety
///
/// `s` is NULL or a `SERVER *` from `init_server`; `f` is NULL or points to
/// a `mario_framing` whose `delimiter` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_framing(s: *mut SERVER, f: *const mario_framing) -> sint32 {
    guard("mario_set_framing", || {
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared_or_say(s, "mario_set_framing") }) else {
            return -1;
        };
        if f.is_null() {
            eprintln!("mario_set_framing: no framing given");
            return -1;
        }
        // SAFETY: the caller's contract.
        match unsafe { framing_of(&*f) } {
            Ok(framing) => {
                srv.configure(|c| c.framing = framing);
                0
            }
            Err(e) => {
                eprintln!("mario_set_framing: {e}");
                -1
            }
        }
    })
}

/// Registers `func` as the handler of packet id `id` on the server's
/// handler pool instead of the worker (NULL removes it): for handlers that
/// block (database calls, file I/O, slow computation). The worker goes on
/// serving its other connections meanwhile. An id with both a pool handler
/// and an `AKG_FUNC` handler runs the pool handler. Only `HEAD` packets
/// (the default framing) go to the pool.
/// docs/C-API.md, "The handler pool".
///
/// During the call, on a pool thread: `c->in_buf` holds the packet (`c->in_buf_len`
/// its length), `c->out_buf` is the pool thread's own 2,048-byte scratch
/// area, `c->owner` the pool thread's own `WORKER` record (the same `ind`
/// and `server` as the connection's worker; its own `thread_id` and
/// `qlog`, so `slog_*_t(c->owner->qlog, ...)` is safe), and `c->user` and
/// the other fields are the connection's. Reply with `bufferevent_write(c->bufev,
/// ...)`, close with `close_conn` (the close callback then runs on the
/// worker after the handler returns, once; writes after it return -1, as
/// on a worker). Return 0 to go on, non-zero to close the connection as an
/// error. After the call `in_buf` points where it did before (never to
/// the copy, which is freed).
///
/// Per-connection order is kept: the connection's later packets wait until
/// the handler returns, and the worker reads nothing more from that
/// connection meanwhile (what it already read, one read of at most 64 KiB,
/// waits): a slow handler holds back its client through TCP, the server
/// buffers no more. Call before `start_server`, or any time after: a change
/// takes effect for the next packet.
#[unsafe(no_mangle)]
pub extern "C" fn regist_pool_func(id: uint16, func: FUNC_PTR) {
    let p = func.map_or(std::ptr::null_mut(), |f| f as *mut c_void);
    POOL_FUNC[id as usize].store(p, Ordering::Release);
    if !p.is_null() {
        POOL_ANY.store(true, Ordering::Relaxed);
    }
}

/// Sets the number of handler pool threads (1..=1024; 0, the default: as
/// many as workers; more than 1024 counts as 1024). The threads start with
/// the first pool packet. Takes effect at `start_server`.
/// docs/C-API.md, "The handler pool".
///
/// # Safety
///
/// `s` is NULL (ignored) or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_pool_threads(s: *mut SERVER, n: uint32) {
    guard("mario_set_pool_threads", || {
        // SAFETY: the caller's contract.
        if let Some(srv) = unsafe { shared(s) } {
            srv.configure(|c| c.pool_threads = n.min(MAX_POOL_THREADS));
        }
    })
}

/// Sets the stall threshold in milliseconds (default 1000; 0 turns the
/// monitor off): a worker whose current handler (strictly: current turn of
/// its loop) has run longer is stalled. New connections then go to the
/// other workers (or wait in the listen backlog if every worker is
/// stalled), one warning names the worker, the packet id and how long, and
/// the `regist_stall_func` callback runs; when the handler returns, one
/// info line says the worker is healthy again. The monitor runs on the
/// thread in `start_server` and looks every quarter of the threshold
/// (between 5 and 250 ms): a stall is noticed within the threshold plus
/// that period. Takes effect at `start_server`.
/// docs/C-API.md, "Worker health".
///
/// # Safety
///
/// `s` is NULL (ignored) or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_stall_threshold(s: *mut SERVER, ms: uint32) {
    guard("mario_set_stall_threshold", || {
        // SAFETY: the caller's contract.
        if let Some(srv) = unsafe { shared(s) } {
            srv.configure(|c| c.stall_threshold_ms = ms);
        }
    })
}

/// Sets the listen backlog: connections the kernel completes and holds
/// until a worker accepts them, 1..=65535 (default 4096; the kernel caps
/// it at `net.core.somaxconn`). Takes effect at `start_server`. Returns 0,
/// or -1 with a message on stderr for a value out of range or a `s` that
/// is not a server.
/// docs/C-API.md, "Servers".
///
/// # Safety
///
/// `s` is NULL or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_backlog(s: *mut SERVER, backlog: c_int) -> sint32 {
    guard("mario_set_backlog", || {
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared_or_say(s, "mario_set_backlog") }) else {
            return -1;
        };
        if !(1..=65_535).contains(&backlog) {
            eprintln!("mario_set_backlog: backlog is {backlog}, must be 1..=65535");
            return -1;
        }
        srv.configure(|c| c.backlog = backlog);
        0
    })
}

/// Non-zero `on` sets `SO_REUSEPORT` on the listening socket: other
/// servers, of this process or others of the same user, may listen on the
/// same address and port, and the kernel spreads new connections across
/// them (by a hash of the client's address and port). Without it (the
/// default) a second server on the port fails to start. Each server then
/// places only what its own socket accepts: a busy or stalled process
/// still gets its share from the kernel (see docs/DEPLOY.md). Takes effect
/// at `start_server`.
/// docs/C-API.md, "Listening and the PROXY protocol".
///
/// # Safety
///
/// `s` is NULL (ignored) or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_reuseport(s: *mut SERVER, on: c_int) {
    guard("mario_set_reuseport", || {
        // SAFETY: the caller's contract.
        if let Some(srv) = unsafe { shared(s) } {
            srv.configure(|c| c.reuseport = on != 0);
        }
    })
}

/// Expects a PROXY protocol header (HAProxy's, versions 1 and 2) at the
/// start of every connection, as an L4 load balancer sends it
/// (`send-proxy`, `send-proxy-v2`): `mode` is `MARIO_PROXY_OFF` (0, the
/// default), `MARIO_PROXY_V1`, `MARIO_PROXY_V2` or `MARIO_PROXY_ANY`. The
/// header is read before any framing and gives `c->cip`, `c->cport` and
/// `mario_conn_peer` the real client's address; the connected callback
/// runs after it. A `LOCAL` header (the balancer's health check) keeps the
/// balancer's address, and a reset ending such a connection counts as
/// closed, not as an error. A connection whose header is missing, malformed,
/// longer than 1024 bytes, or not complete within the read timeout (3 s at
/// most, in whole seconds: refused 3 to 4 s after the connection) is closed and counted as an error with one warning; no callback
/// runs for it. Takes effect at `start_server`. Returns 0, or -1 with a
/// message on stderr for a bad mode.
/// Example: c-examples/pushsrv.c; docs/C-API.md, "Listening and the PROXY
/// protocol".
///
/// # Safety
///
/// `s` is NULL or a `SERVER *` returned by `init_server`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_proxy_protocol(s: *mut SERVER, mode: uint32) -> sint32 {
    guard("mario_set_proxy_protocol", || {
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared_or_say(s, "mario_set_proxy_protocol") }) else {
            return -1;
        };
        if mode & !PROXY_ANY != 0 {
            eprintln!("mario_set_proxy_protocol: mode is {mode}, must be MARIO_PROXY_OFF, _V1, _V2 or _ANY");
            return -1;
        }
        srv.configure(|c| c.proxy_protocol = mode);
        0
    })
}

/// Adds a network PROXY protocol headers are trusted from, in CIDR form
/// (`"10.0.0.0/8"`, `"2001:db8::/32"`) or a single address (`"127.0.0.1"`).
/// Once one is added, a connection from any other address is refused at
/// once (reset, counted in `refused`, one warning): only the balancers
/// may speak for clients. Needs `mario_set_proxy_protocol` on by
/// `start_server`. Takes effect at `start_server`. Returns 0, or -1 with a
/// message on stderr for text that is not a network. `cidr` is read during
/// the call only.
/// docs/C-API.md, "Listening and the PROXY protocol".
///
/// # Safety
///
/// `s` is NULL or a `SERVER *` returned by `init_server`; `cidr` is NULL
/// or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_add_proxy_source(s: *mut SERVER, cidr: *const c_char) -> sint32 {
    guard("mario_add_proxy_source", || {
        // SAFETY: the caller's contract.
        let Some(srv) = (unsafe { shared_or_say(s, "mario_add_proxy_source") }) else {
            return -1;
        };
        if cidr.is_null() {
            eprintln!("mario_add_proxy_source: no network given");
            return -1;
        }
        // SAFETY: the caller's contract.
        let text = unsafe { std::ffi::CStr::from_ptr(cidr) }.to_string_lossy();
        match parse_net(&text) {
            Some(net) => {
                srv.configure(|c| c.proxy_sources.push(net));
                0
            }
            None => {
                eprintln!(
                    "mario_add_proxy_source: \"{text}\" is not a network (a.b.c.d/n, x::/n or an address)"
                );
                -1
            }
        }
    })
}

/// A network in CIDR form, or one address (a network of one).
pub(crate) fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    let net = text
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))?;
    // Clients of a dual-stack socket come as IPv4: so must an IPv4-mapped
    // network (`::ffff:10.0.0.0/104`), or it would never match.
    match net {
        ipnet::IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                .ok()
                .map(ipnet::IpNet::V4),
            None => Some(net),
        },
        _ => Some(net),
    }
}

/// Writes the address of `c`'s client into `out` (a `struct sockaddr_in`
/// or `sockaddr_in6`, as `getpeername` would) and its size into `*len`.
/// `*len` is the room at `out` on entry; a shorter room gets the address
/// truncated (as `getpeername`), while `*len` still says its whole size.
/// With the PROXY protocol on, it is the real client's address from the
/// header. An IPv4 client of a dual-stack server is `AF_INET`. Call it on
/// the thread running a callback for `c` (a worker or a pool thread).
/// Returns 0, or -1 if an argument is NULL.
/// docs/C-API.md, "Listening and the PROXY protocol".
///
/// # Safety
///
/// `c` is NULL or a `CONN *` a callback received, used on that callback's
/// thread; `out` is NULL or valid for `*len` bytes; `len` is NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_conn_peer(
    c: *const CONN,
    out: *mut libc::sockaddr_storage,
    len: *mut libc::socklen_t,
) -> sint32 {
    guard("mario_conn_peer", || {
        if c.is_null() || out.is_null() || len.is_null() {
            return -1;
        }
        // SAFETY: the caller's contract: a live record, read on its thread.
        let peer = unsafe { (*c).peer() };
        let sa = socket2::SockAddr::from(peer);
        // SAFETY: `len` is valid (the caller's contract).
        let room = unsafe { *len } as usize;
        let n = (sa.len() as usize).min(room);
        // SAFETY: `sa` holds `sa.len()` bytes and `out` has room for
        // `room`; we copy the smaller, and the two never overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(sa.as_ptr().cast::<u8>(), out.cast::<u8>(), n);
            *len = sa.len();
        }
        0
    })
}

/// Registers `func(w, akg_id, ms)`, called once per stall (see
/// `mario_set_stall_threshold`) with the stalled worker, the id of the
/// packet whose handler runs (`g_akg_connected_id` for the connected
/// callback, the reason for a close callback, 0 for a frame of another
/// framing) and how long it has run, in milliseconds. It runs on the
/// monitor thread (the one in `start_server`), never on a worker; it must
/// not block for long (the monitor waits for it). It may call
/// `mario_stop_server`, which then only asks. NULL removes it.
/// docs/C-API.md, "Worker health".
#[unsafe(no_mangle)]
pub extern "C" fn regist_stall_func(func: mario_stall_func) {
    let p = func.map_or(std::ptr::null_mut(), |f| f as *mut c_void);
    STALL_FUNC.store(p, Ordering::Release);
}

/// 1 if worker `w` is stalled now, 0 if not, -1 if `w` is NULL. Any thread,
/// any time.
/// docs/C-API.md, "Worker health".
///
/// # Safety
///
/// `w` is NULL or a `WORKER *` of a server from `init_server` (such as
/// `c->owner` in a callback, or `&s->workers->array[i]`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_worker_stalled(w: *const WORKER) -> sint32 {
    guard("mario_worker_stalled", || {
        if w.is_null() {
            return -1;
        }
        // SAFETY: the caller's contract: the record and its server's live
        // for the rest of the process.
        let (ind, server) = unsafe { ((*w).ind, (*w).server) };
        // SAFETY: as above.
        match unsafe { shared(server) } {
            Some(srv) => sint32::from(srv.worker_stalled(ind as usize)),
            None => -1,
        }
    })
}

/// Registers the callback run once on each new connection, on its worker,
/// before any packet, with `cip`/`cport` set and `user` NULL (its return
/// is ignored); NULL removes it. `AKG_FUNC[g_akg_connected_id]`. As
/// `regist_akg_func` otherwise. Example: c-examples/chat.c;
/// docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub extern "C" fn regist_connected_func(func: FUNC_PTR) {
    set_akg(AKG_CONNECTED, func)
}

/// Registers one close callback for the reasons timeout, closed and error
/// (`c->err_type` tells which); it runs exactly once per connection, on
/// its worker, for those reasons (the ids given to `close_conn` have
/// their own `AKG_FUNC` entries). As `regist_akg_func` otherwise.
/// Example: c-examples/chat.c; docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub extern "C" fn regist_disconnected_func(func: FUNC_PTR) {
    set_akg(AKG_TIMEOUT, func);
    set_akg(AKG_CLOSED, func);
    set_akg(AKG_ERROR, func);
}

/// Registers the close callback for the reason timeout
/// (`AKG_FUNC[g_akg_timeout_id]`). As `regist_disconnected_func`
/// otherwise.
/// docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub extern "C" fn regist_timeout_func(func: FUNC_PTR) {
    set_akg(AKG_TIMEOUT, func)
}

/// Registers the close callback for the reason closed
/// (`AKG_FUNC[g_akg_closed_id]`). As `regist_disconnected_func`
/// otherwise.
/// docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub extern "C" fn regist_closed_func(func: FUNC_PTR) {
    set_akg(AKG_CLOSED, func)
}

/// Registers the close callback for the reason error
/// (`AKG_FUNC[g_akg_error_id]`). As `regist_disconnected_func`
/// otherwise.
/// docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub extern "C" fn regist_error_func(func: FUNC_PTR) {
    set_akg(AKG_ERROR, func)
}

/// Sets the packet magic every head must carry (`g_stx`), for every
/// server of the process; read by `start_server`, so call it before.
/// Example: c-examples/mario.c; docs/C-API.md, "Handlers".
#[unsafe(no_mangle)]
pub extern "C" fn regist_stx(stx: uint32) {
    stx_cell().store(stx, Ordering::Release)
}

/// Queues `size` bytes at `data` for the connection whose `bufev` this is
/// (the bytes are copied). Safe from any thread. Returns 0, or -1 if the
/// connection is gone, its output is over its cap (it is then closed as an
/// error), the other thread's queue to its worker is over 64 MiB, or the
/// arguments are bad. A `bufev` that is not one of ours is passed on to
/// libevent's `bufferevent_write` when libevent is linked into the program
/// (else -1).
/// Example: c-examples/function.c (the header's `bufferevent_write` is
/// this function); docs/C-API.md, "Connections".
///
/// # Safety
///
/// `data` points to `size` readable bytes (or `size` is 0); a `bufev` that
/// is not a libmario handle must be what libevent's `bufferevent_write`
/// accepts.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_bufferevent_write(
    bufev: *mut bufferevent,
    data: *const c_void,
    size: usize,
) -> c_int {
    guard("bufferevent_write", || {
        let Some(id) = ConnId::from_raw(bufev as usize as u64) else {
            // SAFETY: the caller's contract for libevent's handles.
            return unsafe { forward_to_libevent(bufev, data, size) };
        };
        if size == 0 {
            return 0;
        }
        if data.is_null() {
            return -1;
        }
        // SAFETY: the caller passes `size` readable bytes at `data`.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
        if server::send_to(id, bytes) { 0 } else { -1 }
    })
}

/// Closes the connection whose `c->bufev` this is, gracefully, with
/// `akg_id` as the reason (as `close_conn` does), from any thread: the way
/// to close a connection kept by its handle, since a `CONN *` names its
/// slot (the next client's, once the connection has closed) while a handle
/// names one connection only. On the owning worker it happens at once (for
/// the connection a handler runs on, when the handler returns); elsewhere
/// it is handed to that worker. Returns 0, or -1 when the handle is not one
/// of libmario's, its connection is known to be gone, or its server has
/// stopped. A connection that closes meanwhile is left alone.
/// Example: c-examples/pushsrv.c; docs/C-API.md, "Connections".
///
/// # Safety
///
/// None: any value is accepted (a handle is never dereferenced).
#[unsafe(no_mangle)]
pub extern "C" fn mario_close_bufev(bufev: *mut bufferevent, akg_id: uint16) -> sint32 {
    guard("mario_close_bufev", || {
        let Some(id) = ConnId::from_raw(bufev as usize as u64) else {
            return -1;
        };
        if server::close_id(id, akg_id) { 0 } else { -1 }
    })
}

type BevWrite = unsafe extern "C" fn(*mut bufferevent, *const c_void, usize) -> c_int;

/// libevent's `bufferevent_write`, if the program has it.
///
/// # Safety
///
/// As for [`mario_bufferevent_write`], for a libevent `bufev`.
unsafe fn forward_to_libevent(bufev: *mut bufferevent, data: *const c_void, size: usize) -> c_int {
    if bufev.is_null() {
        return -1;
    }
    static REAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let f = *REAL.get_or_init(|| {
        // SAFETY: `dlsym` with a NUL-terminated name; a null result is
        // handled.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"bufferevent_write".as_ptr()) as usize }
    });
    if f == 0 {
        return -1;
    }
    // SAFETY: the symbol is libevent's `bufferevent_write`, whose signature
    // is `int (struct bufferevent *, const void *, size_t)`; the arguments
    // are the caller's, under its contract.
    unsafe { std::mem::transmute::<usize, BevWrite>(f)(bufev, data, size) }
}

/// Creates a log queue: a bounded ring (64 KiB) one thread writes to with
/// `record_log`, drained by the log thread. Never returns NULL; the queue
/// lives for the rest of the process. Any thread; one queue per producer
/// thread. docs/C-API.md, "Logging".
#[unsafe(no_mangle)]
pub extern "C" fn create_log_queue() -> *mut LOG_QUEUE {
    guard("create_log_queue", || {
        LogQueue::create() as *const LogQueue as *mut LogQueue
    })
}

/// Queues one formatted log line of `len` bytes for `fd` (used by the
/// header's `record_log`; lines over `MAX_LOG_LINE_LENGTH` are cut).
/// Returns 0, or -1 if the queue is full or NULL. On the queue's producer
/// thread. docs/C-API.md, "Logging".
///
/// # Safety
///
/// `queue` is NULL or comes from `create_log_queue` (or a `qlog` field);
/// `line` points to `len` readable bytes (or `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_record_log_line(
    queue: *mut LOG_QUEUE,
    fd: c_int,
    line: *const c_char,
    len: usize,
) -> sint32 {
    guard("record_log", || {
        if queue.is_null() || (line.is_null() && len > 0) {
            return -1;
        }
        // SAFETY: the caller's contract; queues live forever.
        let q = unsafe { &*queue };
        let bytes = if len == 0 {
            &[][..]
        } else {
            // SAFETY: the caller passes `len` readable bytes at `line`.
            unsafe { std::slice::from_raw_parts(line.cast::<u8>(), len) }
        };
        match q.push(fd, bytes) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    })
}

/// Starts the thread that writes every log queue to its descriptors.
/// Returns 0 (also when it already runs), or -1 if the thread cannot be
/// created. Any thread. docs/C-API.md, "Logging".
#[unsafe(no_mangle)]
pub extern "C" fn start_log_thread() -> sint32 {
    guard("start_log_thread", || match logq::start_log_thread() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("start_log_thread: {e}");
            -1
        }
    })
}

/// The log level (`MARIO_LOG_OFF` 0 .. `MARIO_LOG_DEBUG` 4; default
/// `MARIO_LOG_INFO`) the `slog_*` macros test before formatting anything.
/// Read atomically (relaxed) by the macros; set it with
/// `mario_set_log_level`.
/// docs/C-API.md, "Logging".
#[unsafe(no_mangle)]
pub static mut g_mario_log_level: c_int = Level::Info as c_int;

/// Sets the log level: the `slog_*` macros and the library's own messages
/// of a higher level (less severe) are dropped before any formatting.
/// `level` is one of `MARIO_LOG_OFF` (0), `MARIO_LOG_ERROR` (1),
/// `MARIO_LOG_WARN` (2), `MARIO_LOG_INFO` (3, the default) or
/// `MARIO_LOG_DEBUG` (4); values outside are clamped. `record_log` itself
/// is never filtered. Any thread, any time.
/// docs/C-API.md, "Logging".
#[unsafe(no_mangle)]
pub extern "C" fn mario_set_log_level(level: c_int) {
    guard("mario_set_log_level", || {
        let level = Level::from_i32(level);
        logq::install_logger();
        // SAFETY: `g_mario_log_level` is a `c_int` static, aligned for
        // `AtomicI32`, living forever; the library only accesses it through
        // this atomic view (the header's macros load it atomically too).
        unsafe { std::sync::atomic::AtomicI32::from_ptr(&raw mut g_mario_log_level) }
            .store(level as c_int, Ordering::Relaxed);
        log::set_max_level(level.filter());
    })
}

/// Sends what the log thread would write to standard output and standard
/// error (the `slog_*` lines and the library's own messages) to the file at
/// `path` instead: appending, created with mode 0640. NULL goes back to the
/// standard descriptors. Takes effect before the log thread's next write.
/// Returns 0, or -1 (with the reason on stderr, nothing changed) if the
/// file cannot be opened.
/// docs/C-API.md, "Logging".
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mario_set_log_file(path: *const c_char) -> sint32 {
    guard("mario_set_log_file", || {
        let p = if path.is_null() {
            None
        } else {
            // SAFETY: the caller passes a NUL-terminated string.
            let bytes = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
            Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
        };
        match logq::set_log_file(p.as_deref()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mario_set_log_file: {}: {e}", p.unwrap_or_default().display());
                -1
            }
        }
    })
}

/// Reopens the log file by its path, for `logrotate`: rename the file,
/// then call this; lines before go to the old file, lines after to the new
/// one, none lost or written twice. Async-signal-safe (it only raises a
/// flag, acted on before the log thread's next write, within about a
/// second when it is idle): call it from a SIGHUP handler if you like.
/// docs/C-API.md, "Logging".
#[unsafe(no_mangle)]
pub extern "C" fn mario_reopen_log() {
    logq::reopen_log()
}

/// Routes the library's own messages (not the `slog_*` / `record_log`
/// lines) to `callback(level, line, len, user)` instead of the log file or
/// standard output and error; NULL routes them back. The callback runs on
/// the log thread, never on a worker; `line` is NUL-terminated and valid
/// during the call, `len` counts neither the NUL nor a newline; `level` is
/// a `MARIO_LOG_*` value; `user` is passed back untouched.
/// docs/C-API.md, "Logging".
#[unsafe(no_mangle)]
pub extern "C" fn mario_set_log_callback(callback: mario_log_callback, user: *mut c_void) {
    logq::set_log_callback(callback.map(|f| (f, user)))
}

/// The library's version, `"MAJOR.MINOR.PATCH"` (`MARIO_VERSION_STRING` of
/// the header it was built with): a static string, never NULL, never
/// freed. Any thread, any time. docs/C-API.md, "Utilities".
#[unsafe(no_mangle)]
pub extern "C" fn mario_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Sleeps `ns` nanoseconds (at least; `u32`: up to about 4.3 s), on the
/// calling thread. docs/C-API.md, "Utilities".
#[unsafe(no_mangle)]
pub extern "C" fn nsleep(ns: uint32) {
    std::thread::sleep(std::time::Duration::from_nanos(u64::from(ns)));
}

/// Sleeps `s` seconds plus `us` microseconds (at least), on the calling
/// thread. docs/C-API.md, "Utilities".
#[unsafe(no_mangle)]
pub extern "C" fn susleep(s: uint32, us: uint32) {
    std::thread::sleep(
        std::time::Duration::from_secs(u64::from(s)) + std::time::Duration::from_micros(u64::from(us)),
    );
}

/// Installs `handler` for `sig` with `sigaction` (empty mask, no flags);
/// NULL restores the default. An invalid `sig` is ignored. For a stop on
/// SIGTERM, the handler cannot call `mario_stop_server` (not
/// async-signal-safe): let a thread blocked in `sigwait` do it, as
/// c-examples/chat.c does. docs/C-API.md, "Utilities".
///
/// # Safety
///
/// `handler` must be safe to run as a signal handler at any point of the
/// program (async-signal-safe).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal_handler(sig: c_int, handler: sighandler_t) {
    // SAFETY: a zeroed `sigaction` is valid; the handler is the caller's
    // (async-signal-safe by contract) or NULL, which is SIG_DFL.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler.map_or(libc::SIG_DFL, |h| h as usize);
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Turns the process into a daemon: forks, the parent exits 0, the child
/// starts a new session and ignores SIGHUP, SIGTERM and SIGPIPE. The
/// working directory and descriptors are kept. docs/C-API.md,
/// "Utilities".
///
/// # Safety
///
/// No other thread may be running (call it first in `main`, as the
/// original's applications do): the child of `fork` gets only the calling
/// thread, and locks other threads held would stay locked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn run_daemon() {
    // SAFETY: `fork` with no other thread running (the caller's contract);
    // `exit` runs C atexit handlers.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            libc::perror(c"daemon can't fork".as_ptr());
            libc::exit(1);
        } else if pid != 0 {
            libc::exit(0);
        }
        libc::setsid();
        for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGPIPE] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_IGN;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The C view of CONN, WORKER, WORKER_ARRAY, SERVER and LOG_QUEUE (from
    /// the committed header, compiled by gcc) must match the Rust records
    /// field for field.
    #[test]
    fn c_layout_matches_rust() {
        let dir = std::env::temp_dir().join(format!("mario-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("layout.c");
        let fields: &[(&str, &str, usize)] = &[
            ("CONN", "fd", offset_of!(Conn, fd)),
            ("CONN", "bufev", offset_of!(Conn, bufev)),
            ("CONN", "ind", offset_of!(Conn, ind)),
            ("CONN", "in_buf", offset_of!(Conn, in_buf)),
            ("CONN", "in_buf_len", offset_of!(Conn, in_buf_len)),
            ("CONN", "out_buf", offset_of!(Conn, out_buf)),
            ("CONN", "out_buf_len", offset_of!(Conn, out_buf_len)),
            ("CONN", "next", offset_of!(Conn, next)),
            ("CONN", "owner", offset_of!(Conn, owner)),
            ("CONN", "cip", offset_of!(Conn, cip)),
            ("CONN", "cport", offset_of!(Conn, cport)),
            ("CONN", "err_type", offset_of!(Conn, err_type)),
            ("CONN", "user", offset_of!(Conn, user)),
            ("WORKER", "thread_id", offset_of!(CWorker, thread_id)),
            ("WORKER", "ind", offset_of!(CWorker, ind)),
            ("WORKER", "qlog", offset_of!(CWorker, qlog)),
            ("WORKER", "server", offset_of!(CWorker, server)),
            (
                "WORKER_ARRAY",
                "size",
                offset_of!(crate::records::CWorkerArray, size),
            ),
            (
                "WORKER_ARRAY",
                "server",
                offset_of!(crate::records::CWorkerArray, server),
            ),
            (
                "WORKER_ARRAY",
                "array",
                offset_of!(crate::records::CWorkerArray, array),
            ),
            ("SERVER", "server_fd", offset_of!(CServer, server_fd)),
            ("SERVER", "port", offset_of!(CServer, port)),
            ("SERVER", "workers", offset_of!(CServer, workers)),
            ("SERVER", "qlog", offset_of!(CServer, qlog)),
            ("SERVER", "ret", offset_of!(CServer, ret)),
            ("SERVER", "conn_count", offset_of!(CServer, conn_count)),
            ("SERVER", "mario_private", offset_of!(CServer, mario)),
            ("LOG_QUEUE", "size", offset_of!(LogQueue, size)),
            ("LOG_QUEUE", "producer", offset_of!(LogQueue, producer)),
            ("LOG_QUEUE", "consumer", offset_of!(LogQueue, consumer)),
        ];
        let mut c = String::from("#include <stddef.h>\n#include \"mario/mario.h\"\nint main(void) {\n");
        for (t, f, _) in fields {
            c += &format!("    printf(\"{t}.{f} %zu\\n\", offsetof({t}, {f}));\n");
        }
        c += "    printf(\"WORKER %zu\\n\", sizeof(WORKER));\n    return 0;\n}\n";
        std::fs::write(&src, c).unwrap();
        let exe = dir.join("layout");
        for flag in ["-DLINUX32", "-DLINUX64", "-DNONE"] {
            let inc = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
            let st = std::process::Command::new("gcc")
                .args(["-std=c99", "-Wall", "-Werror", flag, "-I", inc, "-o"])
                .arg(&exe)
                .arg(&src)
                .status()
                .expect("gcc");
            assert!(st.success(), "layout program does not compile with {flag}");
            let out = std::process::Command::new(&exe).output().unwrap();
            let out = String::from_utf8(out.stdout).unwrap();
            for (t, f, off) in fields {
                let want = format!("{t}.{f} {off}");
                assert!(
                    out.lines().any(|l| l == want),
                    "{flag}: C disagrees on {want}:\n{out}"
                );
            }
            assert!(
                out.contains(&format!("WORKER {}\n", size_of::<CWorker>())),
                "{flag}: sizeof(WORKER)\n{out}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An idle connection costs its record (in a chunk of 64, no
    /// allocation of its own), its slot's bookkeeping and one wheel entry:
    /// at most 200 bytes of ours (the target of BENCHMARKS.md), buffers
    /// being released when idle.
    #[test]
    fn idle_connection_record_is_small() {
        let t = crate::conn::table::ConnTable::new(0, 0, std::ptr::null_mut(), std::ptr::null_mut());
        let p = t
            .open(-1, std::net::SocketAddr::from(([0, 0, 0, 0], 0)), 0)
            .unwrap();
        // SAFETY: a record of a live test table, read only.
        let slot = unsafe {
            assert_eq!((*p).partial.capacity(), 0);
            (*p).ind
        };
        assert_eq!(t.with_slot(slot, |s| s.out.capacity()), 0);
        let record = size_of::<Conn>();
        let slot = size_of::<crate::conn::table::Slot>();
        let per_conn = record + slot + size_of::<u32>();
        eprintln!(
            "idle connection: {record} byte record + {slot} byte slot + wheel entry = {per_conn} bytes"
        );
        assert!(per_conn <= 200, "idle connection costs {per_conn} bytes");
    }
}
