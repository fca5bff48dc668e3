//! c-examples/chat.c (`mario_chat`, built with ASan/UBSan) over loopback,
//! driven as telnet would: "\r\n" lines, nicknames, messages to everyone
//! else across both workers, /who, /quit, a line over 512 bytes, SIGTERM.
mod common;
use common::*;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Chat {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Chat {
    fn start() -> Chat {
        ensure_built();
        let dir = scratch_dir("chat");
        let out = dir.join("stdout.txt");
        let err = dir.join("stderr.txt");
        let port = free_port();
        let child = Command::new(root().join("target/ctests/mario_chat-asan"))
            .args([port.to_string(), "2".to_string()])
            .current_dir(&dir)
            .env("ASAN_OPTIONS", ASAN_OPTIONS)
            .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn mario_chat");
        let chat = Chat {
            child,
            port,
            out,
            err,
        };
        // start_server says when it listens (a probe connection would
        // join the room).
        assert!(
            wait_for(Duration::from_secs(10), || chat
                .logs()
                .contains("start server ok")),
            "mario_chat did not start:\n{}",
            chat.logs()
        );
        chat
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
            + &std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A telnet-like client: sends "\r\n" lines, reads lines.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    name: String,
}

impl Client {
    /// Connects and reads the welcome line.
    fn join(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            name: String::new(),
        };
        let welcome = c.line();
        let name = welcome
            .strip_prefix("* welcome, ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("welcome line: {welcome:?}"));
        c.name = name.to_string();
        c
    }

    fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\r\n").unwrap();
    }

    /// The next line, without "\r\n" (panics at EOF or after 10 s).
    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read a line");
        assert!(n > 0, "EOF where a line was expected");
        assert!(l.ends_with("\r\n"), "line without CRLF: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    /// Reads lines until one equals `want`, skipping join notices.
    fn expect(&mut self, want: &str) {
        loop {
            let l = self.line();
            if l == want {
                return;
            }
            assert!(l.ends_with(" joined"), "{}: got {l:?}, want {want:?}", self.name);
        }
    }

    /// True if the server closes this connection (EOF or reset) within `d`.
    fn closed_within(&mut self, d: Duration) -> bool {
        closed_within(self.r.get_mut(), d)
    }
}

#[test]
fn a_telnet_session_nick_say_who_quit() {
    let chat = Chat::start();
    let mut a = Client::join(chat.port);
    let mut b = Client::join(chat.port);
    let mut c = Client::join(chat.port);
    let (na, nb, nc) = (a.name.clone(), b.name.clone(), c.name.clone());
    assert_eq!(
        [&na, &nb, &nc].iter().collect::<HashSet<_>>().len(),
        3,
        "names are unique"
    );

    a.send("/nick alice");
    let renamed = format!("* {na} is now alice");
    for cl in [&mut a, &mut b, &mut c] {
        cl.expect(&renamed);
    }
    // "\n" alone ends a line too (nc).
    b.w.write_all(b"/nick bob\n").unwrap();
    let renamed = format!("* {nb} is now bob");
    for cl in [&mut a, &mut b, &mut c] {
        cl.expect(&renamed);
    }
    a.send("/nick bob");
    a.expect("* that name is taken");
    a.send("/nick no spaces");
    a.expect("* a name is 1..20 letters, digits, '_' or '-'");

    // A message reaches the others, not its sender; control characters are
    // shown as '?'. An empty line is ignored.
    a.send("");
    a.send("hello\u{1}there");
    b.expect("alice: hello?there");
    c.expect("alice: hello?there");
    c.send("/who");
    let who = c.line();
    let mut names: Vec<&str> = who
        .strip_prefix("* here: ")
        .expect("who line")
        .split(' ')
        .collect();
    names.sort_unstable();
    let mut want = vec!["alice", "bob", nc.as_str()];
    want.sort_unstable();
    assert_eq!(names, want);
    // The sender got nothing for its own message: its next line is this.
    b.send("hi alice");
    a.expect("bob: hi alice");

    // A line over 512 bytes closes its connection within 100 ms.
    c.w.write_all(&[b'x'; 600]).unwrap();
    assert!(
        c.closed_within(Duration::from_millis(100)),
        "long line not refused"
    );
    let left = format!("* {nc} left");
    a.expect(&left);
    b.expect(&left);

    // /quit: "bye", then EOF.
    b.send("/quit");
    b.expect("* bye");
    assert!(b.closed_within(Duration::from_secs(2)));
    a.expect("* bob left");
    drop(a);

    let logs = chat.logs();
    assert!(
        logs.contains("[WARN]") && logs.contains("over the framing's max_frame"),
        "no warning for the long line:\n{logs}"
    );
    stop(chat);
}

#[test]
fn fifty_members_on_two_workers_each_hear_everyone_else() {
    const N: usize = 50;
    let chat = Chat::start();
    let mut members: Vec<Client> = (0..N).map(|_| Client::join(chat.port)).collect();
    let t0 = Instant::now();
    for (i, m) in members.iter_mut().enumerate() {
        m.send(&format!("message {i}"));
    }
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    for (i, m) in members.iter_mut().enumerate() {
        let mut want: HashSet<String> = (0..N)
            .filter(|&j| j != i)
            .map(|j| format!("{}: message {j}", names[j]))
            .collect();
        while !want.is_empty() {
            let l = m.line();
            if !want.remove(&l) {
                assert!(l.ends_with(" joined"), "member {i}: unexpected {l:?}");
            }
        }
    }
    eprintln!("{N} members heard {} messages in {:?}", N * (N - 1), t0.elapsed());
    drop(members);
    stop(chat);
}

/// SIGTERM: the server says so, exits 0, with nothing from the sanitizers.
fn stop(mut chat: Chat) {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(chat.child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = chat.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "mario_chat did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    let logs = chat.logs();
    assert!(status.success(), "exit {status:?}:\n{logs}");
    assert!(logs.contains("mario_chat: got SIGTERM, stopping"), "{logs}");
    let bad = unexpected_log_lines(&logs, "");
    assert!(bad.is_empty(), "unexpected log lines:\n{}", bad.join("\n"));
}
