//! Tests of the logging core as a whole: the ring, the hub and log thread,
//! the `log` sink.
//!
//! Uses: `super::ring`, `super::hub`, `super::sink`, `super::write`,
//! `super::dest`.

use super::hub::Hub;
use super::ring::RECORD_HEADER;
use super::sink::{LOGGER, format_line};
use super::*;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

fn test_hub() -> &'static Hub {
    Box::leak(Box::new(Hub::new()))
}

/// Takes every record of `hub`'s queues, one entry per record.
fn drain_records(hub: &Hub) -> Vec<(i32, Vec<u8>)> {
    let mut out = Vec::new();
    hub.drain_with(&mut hub.lock_drain(), &mut |scratch, records| {
        let mut start = 0;
        for &(fd, end) in records {
            out.push((fd, scratch[start..end].to_vec()));
            start = end;
        }
    });
    out
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A line of `len` bytes whose content depends on `seq`.
fn pattern(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i * 7) as u8).collect()
}

/// A pipe; the read end as a `File`, the write end as a raw fd.
fn pipe() -> (File, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two fds `pipe` writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: `fds[0]` is a fresh fd nobody else owns.
    let reader = unsafe { File::from_raw_fd(fds[0]) };
    (reader, fds[1])
}

fn close(fd: i32) {
    // SAFETY: `fd` is a write end created by `pipe` in this test and
    // closed once.
    unsafe { libc::close(fd) };
}

#[test]
fn wrap_around_with_random_sizes() {
    let hub = test_hub();
    // An odd capacity, so that records wrap at every possible offset.
    let q = hub.create_queue(5003);
    assert_eq!(q.capacity(), 5003);
    assert_eq!(q.size.load(Ordering::Relaxed), 5003);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut pushed, mut checked) = (0u64, 0u64);
    for _round in 0..2000 {
        let burst = rng.next() % 8 + 1;
        for _ in 0..burst {
            let len = match rng.next() % 10 {
                0 => (rng.next() % (MAX_LOG_LINE_LENGTH as u64 + 1)) as usize,
                1 => 0,
                _ => (rng.next() % 120) as usize,
            };
            let fd = (pushed % 3) as i32;
            if q.push(fd, &pattern(pushed, len)).is_err() {
                break;
            }
            pushed += 1;
        }
        for (fd, bytes) in drain_records(hub) {
            assert_eq!(fd, (checked % 3) as i32);
            assert_eq!(bytes, pattern(checked, bytes.len()));
            checked += 1;
        }
        assert!(q.is_empty());
        assert_eq!(
            q.producer.load(Ordering::Relaxed),
            q.consumer.load(Ordering::Relaxed)
        );
    }
    assert_eq!(pushed, checked);
    assert!(pushed > 5000, "only {pushed} records");
}

#[test]
fn lengths_survive_wrap_around() {
    // Same as above but checks lengths exactly, with a fixed sequence.
    let hub = test_hub();
    let q = hub.create_queue(MIN_QUEUE_BYTES + 1);
    let mut rng = XorShift(12345);
    let mut expected = std::collections::VecDeque::new();
    for seq in 0..20_000u64 {
        let len = (rng.next() % 300) as usize;
        let line = pattern(seq, len);
        if q.push(7, &line).is_err() {
            for (fd, bytes) in drain_records(hub) {
                assert_eq!(fd, 7);
                assert_eq!(Some(bytes), expected.pop_front());
            }
            q.push(7, &line).expect("fits after drain");
        }
        expected.push_back(line);
    }
    for (_, bytes) in drain_records(hub) {
        assert_eq!(Some(bytes), expected.pop_front());
    }
    assert!(expected.is_empty());
}

#[test]
fn full_queue_rejects_without_blocking() {
    let hub = test_hub();
    let q = hub.create_queue(MIN_QUEUE_BYTES);
    let line = [b'x'; 100];
    let mut n = 0;
    while q.push(1, &line).is_ok() {
        n += 1;
    }
    // (4096 - 1) / 106 records fit.
    assert_eq!(n, (MIN_QUEUE_BYTES - 1) / (RECORD_HEADER + 100));
    let t = Instant::now();
    for _ in 0..1000 {
        assert_eq!(q.push(1, &line), Err(QueueFull));
    }
    assert!(t.elapsed() < Duration::from_millis(500));
    // A smaller line may still fit in what is left.
    let left = MIN_QUEUE_BYTES - 1 - n * (RECORD_HEADER + 100);
    assert!(q.push(1, &vec![b'y'; left - RECORD_HEADER]).is_ok());
    assert_eq!(q.push(1, b""), Err(QueueFull));

    let records = drain_records(hub);
    assert_eq!(records.len(), n + 1);
    assert!(q.is_empty());
    for _ in 0..n {
        q.push(1, &line).expect("room after drain");
    }
    assert_eq!(drain_records(hub).len(), n);
}

#[test]
fn long_lines_are_cut() {
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let mut with_nl = pattern(1, 3000);
    with_nl.push(b'\n');
    let without_nl = vec![b'a'; 5000];
    let exact = pattern(2, MAX_LOG_LINE_LENGTH);
    let mut exact_nl = pattern(3, MAX_LOG_LINE_LENGTH - 1);
    exact_nl.push(b'\n');
    for line in [&with_nl, &without_nl, &exact, &exact_nl] {
        q.push(1, line).unwrap();
    }
    let got = drain_records(hub);
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].1.len(), MAX_LOG_LINE_LENGTH);
    assert_eq!(
        got[0].1[..MAX_LOG_LINE_LENGTH - 1],
        with_nl[..MAX_LOG_LINE_LENGTH - 1]
    );
    assert_eq!(got[0].1.last(), Some(&b'\n'));
    assert_eq!(got[1].1, without_nl[..MAX_LOG_LINE_LENGTH]);
    assert_eq!(got[2].1, exact);
    assert_eq!(got[3].1, exact_nl);
}

#[test]
fn log_thread_delivers_100k_lines_in_order() {
    const LINES: u64 = 100_000;
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let (reader, wfd) = pipe();
    hub.start().unwrap();
    hub.start().unwrap(); // idempotent
    let producer = thread::spawn(move || {
        let mut full = 0u64;
        for i in 0..LINES {
            let line = format!("line {i} {}\n", "z".repeat((i % 50) as usize));
            while q.push(wfd, line.as_bytes()).is_err() {
                full += 1;
                thread::yield_now();
            }
        }
        full
    });
    let mut lines = BufReader::new(reader).lines();
    for i in 0..LINES {
        let got = lines.next().expect("line").expect("read");
        assert_eq!(got, format!("line {i} {}", "z".repeat((i % 50) as usize)));
    }
    producer.join().unwrap();
    assert!(hub.flush(Duration::from_secs(5)));
    close(wfd);
    assert!(lines.next().is_none());
}

#[test]
fn records_to_several_fds_keep_their_order() {
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let (mut ra, wa) = pipe();
    let (mut rb, wb) = pipe();
    for i in 0..300 {
        let fd = if i % 3 == 0 { wb } else { wa };
        q.push(fd, format!("{i}\n").as_bytes()).unwrap();
    }
    assert!(hub.flush(Duration::from_secs(5)));
    close(wa);
    close(wb);
    let (mut a, mut b) = (String::new(), String::new());
    ra.read_to_string(&mut a).unwrap();
    rb.read_to_string(&mut b).unwrap();
    let want_a: String = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("{i}\n"))
        .collect();
    let want_b: String = (0..300)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("{i}\n"))
        .collect();
    assert_eq!(a, want_a);
    assert_eq!(b, want_b);
}

#[test]
fn flush_without_log_thread_writes_on_caller() {
    let hub = test_hub();
    let q1 = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let q2 = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let (mut reader, wfd) = pipe();
    q1.push(wfd, b"one\n").unwrap();
    q2.push(wfd, b"two\n").unwrap();
    q1.push(wfd, b"three\n").unwrap();
    assert!(hub.flush(Duration::from_secs(1)));
    assert!(q1.is_empty() && q2.is_empty());
    assert!(hub.flush(Duration::ZERO));
    close(wfd);
    let mut s = String::new();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(s, "one\nthree\ntwo\n");
}

#[test]
fn flush_with_log_thread_waits_for_the_writes() {
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let (mut reader, wfd) = pipe();
    hub.start().unwrap();
    // More than a pipe holds (64 KiB): the log thread blocks in write.
    let line = [b'q'; 1000];
    let mut pushed = 0;
    let t = Instant::now();
    while pushed < 100 && t.elapsed() < Duration::from_secs(5) {
        if q.push(wfd, &line).is_ok() {
            pushed += 1;
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    // Everything fits in pipe + ring + the thread's chunk, but the
    // thread cannot finish while nobody reads.
    assert_eq!(pushed, 100);
    assert!(!hub.flush(Duration::from_millis(100)));
    let reading = thread::spawn(move || {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        all
    });
    assert!(hub.flush(Duration::from_secs(5)));
    close(wfd);
    let all = reading.join().unwrap();
    assert_eq!(all.len(), 100 * 1000);
    assert!(all.iter().all(|&b| b == b'q'));
}

#[test]
fn log_thread_sleeps_when_idle_and_wakes_on_push() {
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let (reader, wfd) = pipe();
    let mut lines = BufReader::new(reader).lines();
    hub.start().unwrap();
    q.push(wfd, b"first\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    thread::sleep(Duration::from_millis(100));

    let before = hub.wakeups.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(1500));
    let idle = hub.wakeups.load(Ordering::Relaxed) - before;
    assert!(idle <= 3, "{idle} wake-ups in 1.5 s idle");

    // Each push after an idle period is written promptly (not after the
    // one-second safety timeout): no lost wake-up.
    for i in 0..5 {
        thread::sleep(Duration::from_millis(30 + i * 17));
        let t = Instant::now();
        q.push(wfd, format!("again {i}\n").as_bytes()).unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), format!("again {i}"));
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    }
    close(wfd);
}

#[test]
fn concurrent_producers_do_not_corrupt() {
    // Misuse (several producers on one queue) must stay memory-safe and
    // keep each producer's lines whole and in order.
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    let producers: Vec<_> = (0..3)
        .map(|p| {
            thread::spawn(move || {
                let mut i = 0u64;
                while i < 5000 {
                    if q.push(p, format!("{p}:{i}").as_bytes()).is_ok() {
                        i += 1;
                    } else {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut next = [0u64; 3];
    let mut total = 0;
    while total < 15_000 {
        for (fd, bytes) in drain_records(hub) {
            let s = String::from_utf8(bytes).unwrap();
            assert_eq!(s, format!("{fd}:{}", next[fd as usize]));
            next[fd as usize] += 1;
            total += 1;
        }
    }
    for p in producers {
        p.join().unwrap();
    }
}

/// A cut never splits a UTF-8 character (1 to 4 bytes, at every offset);
/// bytes that are not UTF-8 are cut at the limit.
#[test]
fn cuts_end_on_a_character_boundary() {
    use super::ring::char_cut;
    for ch in ["a", "é", "€", "😀"] {
        for pad in 0..4 {
            let s = "x".repeat(pad) + &ch.repeat(1000);
            let b = s.as_bytes();
            for max in [5, 100, 2047, 2048] {
                let n = char_cut(b, max);
                let want = if b.len() <= max {
                    n == b.len()
                } else {
                    n <= max && max - n < ch.len()
                };
                assert!(want, "{ch} pad {pad} max {max}: {n}");
                assert!(
                    std::str::from_utf8(&b[..n]).is_ok(),
                    "{ch} pad {pad} max {max}: {n}"
                );
            }
        }
    }
    assert_eq!(char_cut(&[0x80; 10], 5), 5);
    assert_eq!(char_cut(b"abc", 5), 3);
    // Through the queue: 3,000-byte lines of "é", whose cut would split a
    // character (at byte 2,047 with a newline, 2,048 without).
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    q.push(1, ("é".repeat(1500) + "\n").as_bytes()).unwrap();
    q.push(1, ("x".to_string() + &"é".repeat(1500)).as_bytes())
        .unwrap();
    let got = drain_records(hub);
    assert_eq!(
        got[0].1.len(),
        MAX_LOG_LINE_LENGTH - 1,
        "one byte of a split character dropped"
    );
    assert!(got[0].1.ends_with("é\n".as_bytes()));
    assert!(std::str::from_utf8(&got[0].1).is_ok());
    assert_eq!(got[1].1.len(), MAX_LOG_LINE_LENGTH - 1);
    assert!(std::str::from_utf8(&got[1].1).is_ok());
    // The log sink.
    let long = "é".repeat(1500);
    let l = format_line("t", log::Level::Info, &format_args!("{long}"));
    assert!(l.as_bytes().len() <= MAX_LOG_LINE_LENGTH);
    assert!(
        l.as_bytes().ends_with("é\n".as_bytes()),
        "{:?}",
        &l.as_bytes()[l.as_bytes().len() - 4..]
    );
    assert!(std::str::from_utf8(l.as_bytes()).is_ok());
}

#[test]
fn format_line_shape_and_cut() {
    let line = format_line(
        "2026-11-30T12:45:17.123Z",
        log::Level::Warn,
        &format_args!("hello {}", 5),
    );
    assert_eq!(line.as_bytes(), b"[2026-11-30T12:45:17.123Z] [WARN] hello 5\n");
    let long = "x".repeat(5000);
    let line = format_line("1", log::Level::Error, &format_args!("{long}"));
    assert_eq!(line.as_bytes().len(), MAX_LOG_LINE_LENGTH);
    assert!(line.as_bytes().starts_with(b"[1] [ERROR] xxx"));
    // The library's timestamps: ISO 8601, UTC, milliseconds.
    let t = super::write::now_iso();
    assert_eq!(t.len(), 24, "{t}");
    assert!(
        t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.',
        "{t}"
    );
    assert_eq!(line.as_bytes().last(), Some(&b'\n'));
}

#[test]
fn logger_uses_the_thread_queue() {
    let first = install_logger();
    assert_eq!(install_logger(), first);
    let hub = test_hub();
    let q = hub.create_queue(DEFAULT_QUEUE_BYTES);
    set_thread_queue(q);
    LOGGER.emit(
        &log::Record::builder()
            .level(log::Level::Info)
            .args(format_args!("to stdout {}", 1))
            .build(),
    );
    LOGGER.emit(
        &log::Record::builder()
            .level(log::Level::Error)
            .args(format_args!("to stderr"))
            .build(),
    );
    clear_thread_queue();
    let got = drain_records(hub);
    assert_eq!(got.len(), 2);
    // Marked with their level (see `dest`): the log thread routes them.
    assert_eq!(got[0].0, super::dest::LEVEL_FD - Level::Info as i32);
    let s = String::from_utf8(got[0].1.clone()).unwrap();
    assert!(s.starts_with('[') && s.ends_with("] [INFO] to stdout 1\n"), "{s}");
    assert_eq!(got[1].0, super::dest::LEVEL_FD - Level::Error as i32);
    let s = String::from_utf8(got[1].1.clone()).unwrap();
    assert!(s.ends_with("] [ERROR] to stderr\n"), "{s}");
}

#[test]
fn global_flush_and_thread() {
    // The global hub: start is idempotent, flush succeeds, and the
    // counter is readable.
    start_log_thread().unwrap();
    start_log_thread().unwrap();
    let q = LogQueue::create();
    let (mut reader, wfd) = pipe();
    q.push(wfd, b"global\n").unwrap();
    assert!(flush(Duration::from_secs(5)));
    let mut buf = [0u8; 7];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"global\n");
    close(wfd);
    let _ = log_thread_wakeups();
}

#[test]
fn refused_lines_are_counted_for_the_log_thread_to_report() {
    let hub = test_hub();
    let q = hub.create_queue(MIN_QUEUE_BYTES);
    let line = [b'x'; 1000];
    let mut fit = 0;
    while q.push(1, &line).is_ok() {
        fit += 1;
    }
    for _ in 0..9 {
        assert_eq!(q.push(1, &line), Err(QueueFull));
    }
    assert_eq!(q.take_dropped(), 10, "the refusals are counted ({fit} fit)");
    assert_eq!(q.take_dropped(), 0, "and reported once");
    drain_records(hub);
    q.push(1, &line).unwrap();
    assert_eq!(q.take_dropped(), 0);
    // The statistics' total is never reset by the log thread's reports.
    assert_eq!(q.dropped_total(), 10);
    while q.push(1, &line).is_ok() {}
    assert_eq!(q.take_dropped(), 1);
    assert_eq!(q.dropped_total(), 11);
}
