//! A real HAProxy (Debian's `haproxy`) in `mode tcp` in front of test
//! servers, for the tests of the PROXY protocol and of the cluster example:
//! started with a generated configuration in a scratch directory, in the
//! foreground, killed when dropped. Its runtime API (a UNIX stats socket)
//! says which servers its health checks see up.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{free_port, scratch_dir, wait_for};

/// Health checks every `CHECK_MS` ms; a server is down after `FALL`
/// failed checks, so a dead server is out of rotation within
/// `CHECK_MS * FALL` ms plus one check.
pub const CHECK_MS: u64 = 200;
pub const FALL: u64 = 2;

/// A running HAProxy.
pub struct HaProxy {
    child: Option<Child>,
    /// The frontend's port on 127.0.0.1.
    pub port: u16,
    pub dir: PathBuf,
    stats: PathBuf,
}

impl HaProxy {
    /// HAProxy on 127.0.0.1:<free port>, round robin over `servers` (name,
    /// address) with `server_opts` on each (e.g. "send-proxy-v2"), health
    /// checks every [`CHECK_MS`] ms, redispatch on a failed connect.
    /// Panics, naming what to install, when `haproxy` is missing.
    pub fn start(servers: &[(&str, SocketAddr)], server_opts: &str) -> HaProxy {
        let port = free_port();
        let dir = scratch_dir("haproxy");
        let stats = dir.join("stats.sock");
        let mut cfg = format!(
            "global\n    maxconn 4096\n    stats socket {} mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    \
             retries 3\n    option redispatch\n\n\
             frontend front\n    bind 127.0.0.1:{port}\n    default_backend back\n\n\
             backend back\n    balance roundrobin\n",
            stats.display()
        );
        for (name, addr) in servers {
            cfg.push_str(&format!(
                "    server {name} {addr} {server_opts} check inter {CHECK_MS}ms fall {FALL} rise 1\n"
            ));
        }
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, &cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-f", conf.to_str().unwrap(), "-db"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run haproxy ({e}): install it (apt-get install haproxy); .ci/run does")
            });
        let mut h = HaProxy {
            child: Some(child),
            port,
            dir,
            stats,
        };
        let up = wait_for(Duration::from_secs(10), || {
            UnixStream::connect(&h.stats).is_ok() && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let log = h.log();
            h.kill();
            panic!("haproxy did not start:\n{cfg}\n{log}");
        }
        h
    }

    /// What HAProxy printed.
    pub fn log(&self) -> String {
        let r = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", r("stdout.txt"), r("stderr.txt"))
    }

    /// The status of each server ("UP", "DOWN", ...), from `show stat`.
    pub fn status(&self) -> Vec<(String, String)> {
        let Ok(mut s) = UnixStream::connect(&self.stats) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"show stat\n").is_err() {
            return Vec::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        // CSV: pxname, svname, ..., status is column 17 (0-based).
        out.lines()
            .filter(|l| l.starts_with("back,") && !l.starts_with("back,BACKEND"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.get(1)?.to_string(), f.get(17)?.to_string()))
            })
            .collect()
    }

    /// Waits until the servers named are up and the others down.
    pub fn wait_status(&self, up: &[&str], limit: Duration) -> bool {
        wait_for(limit, || {
            let st = self.status();
            !st.is_empty()
                && st.iter().all(|(name, status)| {
                    let want_up = up.contains(&name.as_str());
                    status.starts_with("UP") == want_up
                })
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client connection from `src` (a loopback address of our choosing, so
/// that the servers behind the balancer can be seen to log the real
/// client) to `to`, with a 5 s read timeout.
pub fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((src, 0)).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Milliseconds since `t0`.
pub fn ms(t0: Instant) -> u128 {
    t0.elapsed().as_millis()
}
