//! A telnet-like client for the chat servers (the C `mario_chat` and the
//! Rust `examples/chat.rs`): sends "\r\n" lines, reads lines.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One member's connection.
pub struct LineClient {
    /// The reading side.
    pub r: BufReader<TcpStream>,
    /// The writing side.
    pub w: TcpStream,
    /// The member's name, once known (for messages).
    pub name: String,
}

impl LineClient {
    /// Connects to `host:port`; reads time out after 10 s.
    pub fn open(host: &str, port: u16) -> LineClient {
        let s = TcpStream::connect((host, port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        LineClient {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            name: String::new(),
        }
    }

    /// Sends `line` and "\r\n".
    pub fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\r\n").unwrap();
    }

    /// The next line, without "\r\n" (panics at EOF or after 10 s).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read a line");
        assert!(n > 0, "{}: EOF where a line was expected", self.name);
        assert!(l.ends_with("\r\n"), "line without CRLF: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    /// Writes `bytes` as they are (no line end added).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// Reads lines until one equals `want`, skipping join notices.
    pub fn expect(&mut self, want: &str) {
        loop {
            let l = self.line();
            if l == want {
                return;
            }
            assert!(l.ends_with(" joined"), "{}: got {l:?}, want {want:?}", self.name);
        }
    }

    /// True if the server closes this connection (EOF or reset) within `d`.
    pub fn closed_within(&mut self, d: Duration) -> bool {
        super::closed_within(self.r.get_mut(), d)
    }
}
