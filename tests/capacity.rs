//! Connection capacity: `workernum * connnum` connections, round-robin
//! placement while small and balanced placement past that, refusal when
//! every worker is full, slot reuse, and 15,000
//! connections held at once.
mod common;
use common::*;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Writes INFO on a connection the server should refuse and asserts that
/// it is closed within 1 s without a single byte of reply.
fn assert_refused(c: &mut TcpStream) {
    let _ = c.write_all(&frame(STX, ID_INFO, &[])); // may already fail: reset
    let t0 = Instant::now();
    let mut got = 0usize;
    let mut buf = [0u8; 256];
    loop {
        let left = Duration::from_secs(1).saturating_sub(t0.elapsed());
        assert!(!left.is_zero(), "refused connection still open after 1 s");
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                panic!("refused connection still open after 1 s")
            }
            Err(e) => panic!("unexpected error on a refused connection: {e}"),
        }
    }
    assert_eq!(got, 0, "a refused connection got a reply");
}

fn wait_stderr(p: &Proc, pat: &str, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if p.stderr().contains(pat) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn full_workers_refuse_and_slots_are_reused() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7"), ("TS_WORKERS", "2"), ("TS_CONNNUM", "5")]);
    // (connection, serial, slot, worker)
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut c = connect(p.port);
        let (serial, slot, worker, workers) = info(&mut c, STX);
        assert_eq!(workers, 2);
        held.push((c, serial, slot, worker));
    }
    // Round robin: consecutive connections alternate between the workers,
    // five each, with distinct slots inside each worker.
    for w in held.windows(2) {
        assert_ne!(w[0].3, w[1].3, "consecutive connections on the same worker");
    }
    let mut per_worker: HashMap<u16, Vec<u32>> = HashMap::new();
    for (_, _, slot, worker) in &held {
        per_worker.entry(*worker).or_default().push(*slot);
    }
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    for (w, slots) in &mut per_worker {
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 5, "worker {w}: slots {slots:?}");
    }
    // Every connection is still served.
    for (c, serial, _, _) in held.iter_mut() {
        assert_eq!(info(c, STX).0, *serial);
    }

    // The 11th: closed at once, no reply, and the server says why.
    let mut extra = connect(p.port);
    assert_refused(&mut extra);
    assert!(
        wait_stderr(&p, "workers are too busy", Duration::from_secs(3)),
        "no 'workers are too busy' on stderr:\n{}",
        p.stderr()
    );

    // Free three slots (two on one worker, one on the other); three new
    // clients take exactly those slots and are served.
    let w0 = held[0].3;
    let mut pick: Vec<usize> = (0..10).filter(|&i| held[i].3 == w0).take(2).collect();
    pick.push((0..10).find(|&i| held[i].3 != w0).unwrap());
    pick.sort_unstable_by(|a, b| b.cmp(a)); // remove from the back first
    let mut freed: Vec<(u16, u32)> = Vec::new();
    for &i in &pick {
        let (c, serial, slot, worker) = held.remove(i);
        drop(c);
        assert_eq!(
            p.wait_close_event(serial, Duration::from_secs(3)),
            Some((0xfffe, 2))
        );
        freed.push((worker, slot));
    }
    // The slot is freed at the end of the worker's turn, just after the
    // close callback logged its line.
    std::thread::sleep(Duration::from_millis(200));
    let mut taken: Vec<(u16, u32)> = Vec::new();
    for _ in 0..3 {
        let mut c = connect(p.port);
        let (serial, slot, worker, _) = info(&mut c, STX);
        assert!(held.iter().all(|h| h.1 != serial), "serial reused");
        taken.push((worker, slot));
        held.push((c, serial, slot, worker));
    }
    freed.sort_unstable();
    taken.sort_unstable();
    assert_eq!(taken, freed, "new connections must take the freed slots");
    // Full again.
    let mut extra2 = connect(p.port);
    assert_refused(&mut extra2);
    for (c, serial, _, _) in held.iter_mut() {
        assert_eq!(info(c, STX).0, *serial);
    }
    drop(held);
    drop((extra, extra2));
    let s = p.stop_clean();
    // Refused connections never reach the application.
    assert_eq!(summary(&s.stdout, "connected"), 13);
    assert_eq!(summary(&s.stdout, "closed"), 13);
    assert_eq!(summary(&s.stdout, "violations"), 0);
}

/// A blocking client socket bound to `src` (any 127/8 address, port chosen
/// at connect time), connected to 127.0.0.1:`port`.
fn connect_from(src: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr_in
    // values are fully initialised and their sizes passed correctly. On
    // success the descriptor is handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |fd: i32| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from(src).to_be();
        a.sin_port = 0;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&a as *const libc::sockaddr_in).cast(), len) != 0 {
            return fail(fd);
        }
        a.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        a.sin_port = port.to_be();
        if libc::connect(fd, (&a as *const libc::sockaddr_in).cast(), len) != 0 {
            return fail(fd);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

#[test]
fn fifteen_thousand_connections_at_once() {
    const N: usize = 15_000;
    const BATCH: usize = 1000;
    let deadline = Instant::now() + Duration::from_secs(60);
    let p = Proc::testsrv(&[
        ("TS_STX", "8eb69af7"),
        ("TS_WORKERS", "2"),
        ("TS_CONNNUM", "8000"),
    ]);
    let pid = p.pid();
    let fds0 = fd_count(pid);

    // Open in batches; each batch is checked with a pipelined ECHO round
    // trip before the next is opened. Sources spread over 127.0.0.2..9 so
    // that ephemeral ports never run short.
    let mut conns: Vec<TcpStream> = Vec::with_capacity(N);
    let t_open = Instant::now();
    while conns.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} connections after 60 s",
            conns.len()
        );
        let first = conns.len();
        for i in first..(first + BATCH).min(N) {
            let src = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
            let c = connect_from(src, p.port).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c.set_nodelay(true).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            conns.push(c);
        }
        for (i, c) in conns.iter_mut().enumerate().skip(first) {
            c.write_all(&frame(STX, ID_ECHO, &(i as u32).to_ne_bytes()))
                .unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate().skip(first) {
            let (h, b) = read_frame(c).unwrap_or_else(|e| panic!("ECHO on connection {i}: {e}"));
            assert_eq!((h.akg_id, b.as_slice()), (ID_ECHO, &(i as u32).to_ne_bytes()[..]));
        }
    }
    let opened = t_open.elapsed();
    assert_eq!(
        fd_count(pid),
        fds0 + N,
        "server descriptors while holding {N} connections"
    );
    let rss = rss_kib(pid);

    // All held at once: a second round trip on every one, all pipelined.
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&frame(STX, ID_ECHO, &(!(i as u32)).to_ne_bytes()))
            .unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let (h, b) = read_frame(c).unwrap_or_else(|e| panic!("second ECHO on connection {i}: {e}"));
        assert_eq!(
            (h.akg_id, b.as_slice()),
            (ID_ECHO, &(!(i as u32)).to_ne_bytes()[..])
        );
    }
    assert!(Instant::now() < deadline, "round trips took too long");

    // Balanced: past 32 connections the accepting worker keeps one only
    // while it is at most 1/32 of those held ahead of the other (two
    // workers may decide at once: one more each).
    let mut per_worker = [0usize; 2];
    for c in conns.iter_mut() {
        per_worker[info(c, STX).2 as usize] += 1;
    }
    assert!(
        per_worker[0].abs_diff(per_worker[1]) <= N / 32 + 2,
        "connections per worker: {per_worker:?}"
    );

    // Close them all; the server must let go of every descriptor.
    drop(conns);
    loop {
        let n = fd_count(pid);
        if n <= fds0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server still holds {} of the closed connections",
            n - fds0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "opened {N} connections in {opened:?}, {per_worker:?} per worker; server RSS holding them (ASan build): {rss} KiB"
    );
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "connected"), N as u64);
    assert_eq!(summary(&s.stdout, "closed"), N as u64);
    assert_eq!(summary(&s.stdout, "violations"), 0);
}
