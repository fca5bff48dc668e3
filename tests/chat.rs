//! c-examples/chat.c (`mario_chat`, built with ASan/UBSan) over loopback,
//! driven as telnet would: "\r\n" lines, nicknames, messages to everyone
//! else across both workers, /who, /quit, a line over 512 bytes, SIGTERM.
mod common;
use common::*;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Chat {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Chat {
    /// Starts mario_chat on a free port; a port taken meanwhile (by another
    /// test's client, say) is retried on another, as `Proc::ctest` does.
    fn start() -> Chat {
        for _ in 0..4 {
            let mut chat = Chat::start_once();
            if chat.started() {
                return chat;
            }
            let _ = chat.child.kill();
            let _ = chat.child.wait();
            if !chat.logs().contains("Address already in use") {
                panic!("mario_chat did not start:\n{}", chat.logs());
            }
        }
        let chat = Chat::start_once();
        assert!(chat.started(), "mario_chat did not start:\n{}", chat.logs());
        chat
    }

    fn started(&self) -> bool {
        // start_server says when it listens (a probe connection would
        // join the room).
        wait_for(Duration::from_secs(10), || {
            self.logs().contains("start server ok") || self.logs().contains("did not start")
        }) && self.logs().contains("start server ok")
    }

    fn start_once() -> Chat {
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
        Chat {
            child,
            port,
            out,
            err,
        }
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

use common::lines::LineClient as Client;

impl Client {
    /// Connects and reads the welcome line, which names the member.
    fn join(port: u16) -> Client {
        let mut c = Client::open("127.0.0.1", port);
        let welcome = c.line();
        let name = welcome
            .strip_prefix("* welcome, ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("welcome line: {welcome:?}"));
        c.name = name.to_string();
        c
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
    for bad in [
        "/nick no spaces",
        "/nick",
        "/nick ",
        "/nick 123456789012345678901",
    ] {
        a.send(bad);
        a.expect("* a name is 1..20 letters, digits, '_' or '-'");
    }

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

/// Members that never read while another floods the room: each is reset
/// when its output passes the 4 MiB cap, the others hear it left, and the
/// room goes on (the reset never runs the close callback inside the
/// broadcast, which holds the room's lock).
#[test]
fn members_that_never_read_are_reset_at_the_cap_and_the_room_goes_on() {
    let chat = Chat::start();
    let mut sleepers: Vec<TcpStream> = (0..2)
        .map(|_| {
            let s = Client::join(chat.port);
            let s = s.w;
            // SAFETY: a valid int for SO_RCVBUF on an open socket.
            unsafe {
                let v: libc::c_int = 4096;
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s
        })
        .collect();
    let mut talker = Client::join(chat.port);
    let mut listener = Client::join(chat.port);
    // The listener reads everything on its own thread.
    let mut lr = listener.r.get_ref().try_clone().unwrap();
    // Bytes the listener has read: the talker keeps within 2 MiB of it,
    // so a listener slowed down by a loaded machine is never cut off.
    let heard = Arc::new(AtomicUsize::new(0));
    let h = heard.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut left = Vec::new(); // the " left" notices heard
        let mut tail: Vec<u8> = Vec::new(); // an unfinished last line
        lr.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        while let Ok(n) = std::io::Read::read(&mut lr, &mut buf) {
            if n == 0 {
                break;
            }
            h.fetch_add(n, Ordering::Relaxed);
            tail.extend_from_slice(&buf[..n]);
            let cut = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            for l in tail[..cut].split(|&b| b == b'\n') {
                if l.starts_with(b"* ") && l.ends_with(b" left\r") {
                    left.push(String::from_utf8_lossy(l).trim_end().to_string());
                }
            }
            tail.drain(..cut);
            if left.len() >= 2 {
                break;
            }
        }
        left
    });
    // Up to 16 MB of chat (each sleeper needs a bit over 4 MiB to be cut).
    let line = [vec![b'm'; 500], b"\r\n".to_vec()].concat().repeat(64);
    let t0 = Instant::now();
    let mut sent = 0;
    // A server that stopped reading makes the write time out: a failure,
    // not a hang.
    talker.w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    while sent < 16_000_000 && t0.elapsed() < Duration::from_secs(15) {
        if let Err(e) = talker.w.write_all(&line) {
            panic!(
                "the room stopped reading after {sent} bytes ({e}):\n{}",
                chat.logs()
            );
        }
        sent += line.len();
        if chat.logs().matches("over its cap").count() >= 2 {
            break;
        }
        while sent > heard.load(Ordering::Relaxed) + (2 << 20) && t0.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let left = reader.join().unwrap();
    assert_eq!(left.len(), 2, "after {sent} bytes: {left:?}\n{}", chat.logs());
    for s in &mut sleepers {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "a sleeper is still open"
        );
    }
    // The room still answers.
    let mut late = Client::join(chat.port);
    late.send("/who");
    // The talker's last lines may still be on their way.
    let who = (0..100_000)
        .map(|_| late.line())
        .find(|l| !l.starts_with(&format!("{}: ", talker.name)))
        .unwrap();
    assert!(who.starts_with("* here: "), "{who}");
    listener.send("/quit");
    talker.send("/quit");
    stop(chat);
}
