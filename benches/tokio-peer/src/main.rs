//! The maritcp LOGIN and ECHO server (see `c-examples/README.md`)
//! written the way a Rust user would write it with tokio: the peer libmario
//! is benchmarked against.
//!
//! ```text
//! tokio-peer [--port P] [--workers N] [--timeout SECS] [--stx HEX]
//! ```
//!
//! One task per connection reads into a buffer, cuts it into packets
//! (8-byte little-endian `HEAD { u32 stx, u16 pkglen, u16 akg_id }`, `pkglen`
//! counting the header), answers every LOGIN (`akg_id` 0x6101, `pkglen` 10)
//! with a bare `HEAD { stx, 8, 0x6101 }`, every ECHO (`akg_id` 0x6102, any
//! `pkglen` up to 1500) with the packet unchanged, and writes the replies to
//! all the complete packets of one read with a single `write_all`. Anything
//! else closes the connection, as in maritcp. A connection with no input for
//! `--timeout` seconds (or whose replies cannot be written in that time) is
//! closed; 0 disables the timeout. Every 60 seconds the number of users
//! logged in is logged. SIGTERM or SIGINT stops the server (exit status 0).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Size of a packet header.
const HEAD_LEN: usize = 8;
/// Largest accepted packet, header included (`MAX_PKG_LEN`).
const MAX_PKG_LEN: usize = 1500;
/// The LOGIN packet id.
const LOGIN: u16 = 0x6101;
/// A LOGIN is a `HEAD` and a `u16 uid`.
const LOGIN_REQ_LEN: usize = 10;
/// The reply is a bare `HEAD`.
const LOGIN_RSP_LEN: u16 = 8;
/// The ECHO packet id: the reply is the packet itself.
const ECHO: u16 = 0x6102;
/// Per-connection input buffer: always room for a whole packet after the
/// unfinished tail of the previous read.
const READ_BUF_LEN: usize = 4096;
/// Seconds between two `online number` lines.
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Listen backlog.
const BACKLOG: u32 = 4096;

/// Users logged in, over all connections.
static ONLINE: AtomicI64 = AtomicI64::new(0);

const USAGE: &str =
    "usage: tokio-peer [--port P=8082] [--workers N=2] [--timeout SECS=300] [--stx HEX=8eb69af7]";

struct Config {
    port: u16,
    workers: usize,
    /// `None`: no timeout.
    timeout: Option<Duration>,
    stx: u32,
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        port: 8082,
        workers: 2,
        timeout: Some(Duration::from_secs(300)),
        stx: 0x8eb6_9af7,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value:?}");
        match flag.as_str() {
            "--port" => cfg.port = value.parse().map_err(bad)?,
            "--workers" => {
                cfg.workers = value.parse().map_err(bad)?;
                if cfg.workers == 0 {
                    return Err("--workers must be at least 1".into());
                }
            }
            "--timeout" => {
                let secs: u64 = value.parse().map_err(bad)?;
                cfg.timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "--stx" => {
                let hex = value.trim_start_matches("0x").trim_start_matches("0X");
                cfg.stx =
                    u32::from_str_radix(hex, 16).map_err(|_| format!("bad value for {flag}: {value:?}"))?;
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokio-peer: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio-peer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cfg));
    // Connection tasks still running are dropped (their sockets closed) here.
    drop(rt);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
    socket.listen(BACKLOG)
}

async fn run(cfg: Config) -> std::io::Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let listener =
        bind(cfg.port).map_err(|e| std::io::Error::new(e.kind(), format!("port {}: {e}", cfg.port)))?;

    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "--------------start server ok--------------")?;
        out.flush()?;
    }

    tokio::spawn(async {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + STATS_INTERVAL, STATS_INTERVAL);
        loop {
            tick.tick().await;
            eprintln!("[info] online number: {}", ONLINE.load(Ordering::Relaxed));
        }
    });

    let (stx, timeout) = (cfg.stx, cfg.timeout);
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        eprintln!("[warn] set TCP_NODELAY for {peer}: {e}");
                    }
                    tokio::spawn(serve(stream, peer, stx, timeout));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    eprintln!("[error] accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    eprintln!("[info] stopping");
    Ok(())
}

/// Awaits `fut`, giving up after `timeout` (if any).
async fn with_timeout<F: Future>(timeout: Option<Duration>, fut: F) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// What to do with the connection after its buffered input was handled.
enum Next {
    Read,
    Close,
}

/// One connection: read, answer, until EOF, an error, bad input or timeout.
async fn serve(mut stream: TcpStream, peer: SocketAddr, stx: u32, timeout: Option<Duration>) {
    let mut buf = vec![0u8; READ_BUF_LEN];
    let mut len = 0;
    let mut out = Vec::with_capacity(READ_BUF_LEN);
    let mut logged_in = false;

    loop {
        let n = match with_timeout(timeout, stream.read(&mut buf[len..])).await {
            None => break, // idle too long
            Some(Ok(0)) | Some(Err(_)) => break,
            Some(Ok(n)) => n,
        };
        len += n;

        let (used, next) = handle(&buf[..len], &mut out, stx, peer, &mut logged_in);
        // Keep the unfinished tail for the next read.
        buf.copy_within(used..len, 0);
        len -= used;

        if !out.is_empty() {
            let written = with_timeout(timeout, stream.write_all(&out)).await;
            out.clear();
            if !matches!(written, Some(Ok(()))) {
                break;
            }
        }
        if let Next::Close = next {
            break;
        }
    }

    if logged_in {
        ONLINE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Handles the complete packets at the start of `input`, appending the
/// replies to `out`. Returns how many bytes were consumed.
fn handle(
    input: &[u8],
    out: &mut Vec<u8>,
    stx: u32,
    peer: SocketAddr,
    logged_in: &mut bool,
) -> (usize, Next) {
    let mut pos = 0;
    while input.len() - pos >= HEAD_LEN {
        let h = &input[pos..pos + HEAD_LEN];
        let pkt_stx = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let pkglen = u16::from_le_bytes([h[4], h[5]]);
        let akg_id = u16::from_le_bytes([h[6], h[7]]);
        let plen = usize::from(pkglen);

        if !(HEAD_LEN..=MAX_PKG_LEN).contains(&plen) || pkt_stx != stx {
            eprintln!(
                "[error] bad packet head from {peer}: stx {pkt_stx:#010x} pkglen {pkglen} akg_id {akg_id:#06x}"
            );
            return (pos, Next::Close);
        }
        if input.len() - pos < plen {
            break; // wait for the rest of the packet
        }
        if akg_id == ECHO {
            out.extend_from_slice(&input[pos..pos + plen]);
            pos += plen;
            continue;
        }
        if akg_id != LOGIN {
            eprintln!("[warn] no handler for akg_id {akg_id:#06x} from {peer}");
            return (pos, Next::Close);
        }
        if plen != LOGIN_REQ_LEN {
            eprintln!("[error] invalid login packet: pkglen {pkglen} from {peer}");
            return (pos, Next::Close);
        }
        // A second LOGIN on the same connection is answered but not counted.
        if !*logged_in {
            *logged_in = true;
            ONLINE.fetch_add(1, Ordering::Relaxed);
        }
        out.extend_from_slice(&pkt_stx.to_le_bytes());
        out.extend_from_slice(&LOGIN_RSP_LEN.to_le_bytes());
        out.extend_from_slice(&akg_id.to_le_bytes());
        pos += plen;
    }
    (pos, Next::Read)
}
