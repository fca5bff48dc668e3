//! The Rust examples as programs, over loopback: `examples/chat.rs` driven
//! as telnet would (names, messages to everyone else across both workers,
//! `/who`, `/quit`, a line over 512 bytes, SIGTERM and SIGINT), and
//! `examples/login_server.rs` against maritcp's protocol. Both are built
//! with `cargo build --example` (once per test binary) in the profile and
//! target directory of this test.
mod common;
mod protocol;
use common::*;
use protocol::*;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Builds the examples once and returns the directory holding them
/// (`target/<profile>/examples`, next to this test's `deps`).
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("this test's path");
        // target/<profile>/deps/rust_examples-<hash>
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target");
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.args([
            "build",
            "--quiet",
            "--example",
            "chat",
            "--example",
            "login_server",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        // The same features as this test: the library is not built twice.
        if cfg!(feature = "harness") {
            cmd.args(["--features", "harness"]);
        }
        let out = cmd.output().expect("run cargo build --example");
        assert!(
            out.status.success(),
            "cargo build --example failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("examples")
    })
}

/// An example program running in a scratch directory, its output in files.
struct Example {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    port: u16,
}

impl Example {
    /// Starts example `name` with `args` and waits for its line
    /// `<name>: listening on <addr>`.
    fn start(name: &str, args: &[&str]) -> Example {
        let dir = scratch_dir(name);
        let (out, err) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
        let child = Command::new(examples_dir().join(name))
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut ex = Example {
            child,
            out,
            err,
            port: 0,
        };
        let key = format!("{name}: listening on ");
        let mut addr = None;
        assert!(
            wait_for(Duration::from_secs(20), || {
                addr = ex
                    .stdout()
                    .lines()
                    .find_map(|l| l.strip_prefix(&key).map(String::from));
                addr.is_some()
            }),
            "{name} did not start:\n{}",
            ex.logs()
        );
        let addr: std::net::SocketAddr = addr.unwrap().parse().expect("an address");
        ex.port = addr.port();
        ex
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn logs(&self) -> String {
        self.stdout() + &self.stderr()
    }

    /// Sends `sig` and waits (10 s at most) for the exit status.
    fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no exit 10 s after signal {sig}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// examples/chat.rs

const WELCOME: &str = "* welcome! your name? (1..20 letters, digits, '_' or '-')";
const BAD_NAME: &str = "* a name is 1..20 letters, digits, '_' or '-'";

use common::lines::LineClient as Client;

impl Client {
    /// Connects (to `host`) and reads the welcome line.
    fn connect(host: &str, port: u16) -> Client {
        let mut c = Client::open(host, port);
        assert_eq!(c.line(), WELCOME);
        c
    }

    /// Connects and takes the name `name`.
    fn join(port: u16, name: &str) -> Client {
        let mut c = Client::connect("127.0.0.1", port);
        c.send(name);
        assert_eq!(c.line(), format!("* hello, {name} (/who, /quit)"));
        c.name = name.to_string();
        c
    }
}

#[test]
fn chat_a_telnet_session_names_say_who_quit() {
    let mut chat = Example::start("chat", &["0", "2"]);
    let port = chat.port;
    let mut a = Client::join(port, "alice");
    let mut b = Client::join(port, "bob");
    a.expect("* bob joined");
    // An IPv6 client of the same dual-stack socket.
    let mut c = Client::connect("::1", port);
    // Names: bad ones and a taken one are refused; the next line is tried.
    for bad in ["", "no spaces", "123456789012345678901", "ünïcode"] {
        c.send(bad);
        assert_eq!(c.line(), BAD_NAME, "name {bad:?}");
    }
    c.send("bob");
    assert_eq!(c.line(), "* that name is taken");
    c.send("carol");
    assert_eq!(c.line(), "* hello, carol (/who, /quit)");
    c.name = "carol".into();
    a.expect("* carol joined");
    b.expect("* carol joined");

    // A message reaches the others, not its sender; control characters are
    // shown as '?'. An empty line is ignored.
    a.send("");
    a.send("hello\u{1}there");
    b.expect("alice: hello?there");
    c.expect("alice: hello?there");
    // "\n" alone ends a line too (nc).
    c.write_raw(b"/who\n");
    assert_eq!(c.line(), "* here: alice bob carol");
    // The sender got nothing for its own message: its next line is this.
    b.send("hi alice");
    assert_eq!(a.line(), "bob: hi alice");
    assert_eq!(c.line(), "bob: hi alice");

    // A line over 512 bytes closes its connection; the others hear it left.
    c.write_raw(&[b'x'; 600]);
    assert!(c.closed_within(Duration::from_secs(2)), "long line not refused");
    assert_eq!(a.line(), "* carol left");
    assert_eq!(b.line(), "* carol left");
    // 512 bytes exactly is a line.
    let long = "y".repeat(512);
    a.send(&long);
    assert_eq!(b.line(), format!("alice: {long}"));

    // /quit: "bye", then EOF; the others hear it left.
    b.send("/quit");
    assert_eq!(b.line(), "* bye");
    assert!(b.closed_within(Duration::from_secs(2)));
    assert_eq!(a.line(), "* bob left");
    a.send("/who");
    assert_eq!(a.line(), "* here: alice");

    // SIGTERM: everyone is disconnected, the program says so and exits 0.
    let status = chat.signal_and_wait(libc::SIGTERM);
    assert!(a.closed_within(Duration::from_secs(1)), "alice still connected");
    let logs = chat.logs();
    assert!(status.success(), "exit {status:?}:\n{logs}");
    let out = chat.stdout();
    assert!(out.contains("chat: got a signal, stopping\n"), "{logs}");
    assert!(out.ends_with("chat: stopped\n"), "{logs}");
    assert!(
        logs.contains("[WARN]") && logs.contains("over the framing's max_frame"),
        "no warning for the long line:\n{logs}"
    );
    assert_eq!(chat.stderr(), "", "nothing on stderr");
}

#[test]
fn chat_fifty_members_on_two_workers_each_hear_everyone_else() {
    const N: usize = 50;
    let mut chat = Example::start("chat", &["0", "2"]);
    let mut members: Vec<Client> = (0..N)
        .map(|i| Client::join(chat.port, &format!("m{i}")))
        .collect();
    for (i, m) in members.iter_mut().enumerate() {
        m.send(&format!("message {i}"));
    }
    for (i, m) in members.iter_mut().enumerate() {
        let mut want: HashSet<String> = (0..N)
            .filter(|&j| j != i)
            .map(|j| format!("m{j}: message {j}"))
            .collect();
        let t0 = Instant::now();
        while !want.is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "member {i}: missing {want:?}"
            );
            let l = m.line();
            if !want.remove(&l) {
                assert!(l.ends_with(" joined"), "member {i}: unexpected {l:?}");
            }
        }
    }
    // Ctrl-C stops it as SIGTERM does.
    let status = chat.signal_and_wait(libc::SIGINT);
    assert!(status.success(), "exit {status:?}:\n{}", chat.logs());
    for m in members.iter_mut() {
        assert!(m.closed_within(Duration::from_secs(1)));
    }
    assert!(chat.stdout().ends_with("chat: stopped\n"), "{}", chat.logs());
}

#[test]
fn chat_bad_arguments_and_a_port_in_use() {
    let out = Command::new(examples_dir().join("chat"))
        .args(["99999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: chat"));
    let taken = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(examples_dir().join("chat"))
        .args([port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "chat: cannot listen on [::]:{port}: Address already in use"
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// examples/login_server.rs

#[test]
fn login_server_answers_maritcp_clients() {
    let mut srv = Example::start("login_server", &["0"]);
    check_login_exact(srv.port);
    check_pipelined(srv.port);
    // A LOGIN of the wrong length: closed, and logged as an error with the
    // packet id, the client's address and why.
    let mut s = connect(srv.port);
    let me = s.local_addr().unwrap();
    s.write_all(&frame(STX, ID_LOGIN, &[0; 3])).unwrap();
    expect_closed_silently(&mut s, Duration::from_secs(2), "LOGIN with pkglen 11");
    let want = format!(
        "[ERROR] the handler of packet 0x6101 failed for {me}: invalid login packet: pkglen 11 (must be 10); \
         closing the connection as error"
    );
    assert!(
        wait_for(Duration::from_secs(5), || srv.stderr().contains(&want)),
        "no {want:?} in:\n{}",
        srv.logs()
    );
    check_many_connections(srv.port, 2, 100, 3);
    check_login_exact(srv.port);
    // Its standard output is its own: the library prints nothing there
    // (0.9.9's "start server ok" line is for C programs).
    assert!(
        srv.stdout().lines().all(|l| l.starts_with("login_server: ")),
        "{}",
        srv.stdout()
    );
    // It runs until killed.
    let status = srv.signal_and_wait(libc::SIGTERM);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
}
