//! Scraping `/metrics` in the tests: a plain HTTP/1.1 request over a
//! `TcpStream` (bounded in time), the samples of the text, and the
//! Prometheus client's own parser (`tests/prom_scrape.py`, run with the
//! Python of `make venv`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `raw` to `addr` and reads the response to the server's close
/// (5 s at most).
pub fn request(addr: &str, raw: &str) -> io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(raw.as_bytes())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8(all).map_err(|e| io::Error::other(e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no end of headers in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `GET /metrics` on `addr`.
pub fn get(addr: &str) -> Response {
    request(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"))
}

/// A sample's key: its name and its labels, `k=v` sorted and joined with
/// commas (`-` for none), as prom_scrape.py prints them.
pub fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    let l = if l.is_empty() {
        "-".to_string()
    } else {
        l.join(",")
    };
    format!("{name} {l}")
}

/// The samples of the text `/metrics` serves (this library's layout: one
/// sample a line, `name{k="v",...} value`), by [`key`].
pub fn samples(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: Vec<(&str, &str)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("k=v");
                (k, v.trim_matches('"'))
            })
            .collect();
        out.insert(key(name, &labels), value.parse().expect("a whole number"));
    }
    out
}

/// Makes target/venv (`make venv`) once per test binary.
pub fn ensure_venv() -> PathBuf {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new("make")
            .args(["-s", "venv"])
            .current_dir(root())
            .output()
            .expect("run make venv");
        assert!(
            out.status.success(),
            "make venv failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    root().join("target/venv/bin/python")
}

/// What the Prometheus client's parser made of a scrape.
#[derive(Debug)]
pub struct Parsed {
    pub status: u16,
    pub content_type: String,
    /// Family name -> (type, number of samples).
    pub families: BTreeMap<String, (String, usize)>,
    /// By [`key`].
    pub samples: HashMap<String, u64>,
}

/// Scrapes `http://addr/metrics` with Python's urllib and parses it with
/// `prometheus_client.parser.text_string_to_metric_families`.
pub fn parse_with_prometheus_client(addr: &str) -> Parsed {
    let python = ensure_venv();
    let out = Command::new(python)
        .arg(root().join("tests/prom_scrape.py"))
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("run prom_scrape.py");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "prom_scrape.py failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut p = Parsed {
        status: 0,
        content_type: String::new(),
        families: BTreeMap::new(),
        samples: HashMap::new(),
    };
    for line in text.lines() {
        let w: Vec<&str> = line.splitn(2, ' ').collect();
        match (w[0], w.get(1).copied().unwrap_or("")) {
            ("STATUS", v) => p.status = v.parse().unwrap(),
            ("CTYPE", v) => p.content_type = v.to_string(),
            ("FAMILY", v) => {
                let f: Vec<&str> = v.split(' ').collect();
                p.families
                    .insert(f[0].to_string(), (f[1].to_string(), f[2].parse().unwrap()));
            }
            ("SAMPLE", v) => {
                let (k, value) = v.rsplit_once(' ').unwrap();
                p.samples.insert(k.to_string(), value.parse().unwrap());
            }
            _ => panic!("prom_scrape.py printed {line:?}"),
        }
    }
    p
}

/// What one worker's samples should say (the gauges not listed here must
/// be 0: output queued, stalled, stalls, pool, log lines dropped).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub connections: u64,
    pub accepted: u64,
    pub closed: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Want {
    /// A client accepted that sent testsrv's INFO (8 bytes) and got its
    /// reply (20 bytes).
    pub fn accepted_with_info(&mut self) {
        self.accepted += 1;
        self.packets_in += 1;
        self.bytes_in += 8;
        self.bytes_out += 20;
    }
}

/// What in `samples` differs from `want` (per worker) and `refused` (the
/// sum over the workers).
pub fn mismatches(samples: &HashMap<String, u64>, want: &[Want], refused: u64) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |name: &str, labels: &[(&str, &str)], v: u64| {
        let k = key(name, labels);
        match samples.get(&k) {
            Some(&got) if got == v => {}
            got => bad.push(format!("{k}: {got:?}, want {v}")),
        }
    };
    let mut refused_sum = 0;
    for (i, w) in want.iter().enumerate() {
        let wk = i.to_string();
        let wl = [("worker", wk.as_str())];
        check("mario_connections", &wl, w.connections);
        check("mario_connections_accepted_total", &wl, w.accepted);
        for (reason, v) in [("closed", w.closed), ("timeout", w.timeouts), ("error", w.errors)] {
            check(
                "mario_connections_closed_total",
                &[("worker", wk.as_str()), ("reason", reason)],
                v,
            );
        }
        check("mario_packets_received_total", &wl, w.packets_in);
        check("mario_received_bytes_total", &wl, w.bytes_in);
        check("mario_sent_bytes_total", &wl, w.bytes_out);
        for zero in [
            "mario_output_queued_bytes",
            "mario_worker_stalled",
            "mario_stalls_total",
            "mario_pool_queued_packets",
            "mario_log_dropped_lines_total",
        ] {
            check(zero, &wl, 0);
        }
        refused_sum += samples
            .get(&key("mario_connections_refused_total", &wl))
            .copied()
            .unwrap_or(u64::MAX / 4);
    }
    if refused_sum != refused {
        bad.push(format!("refused over the workers: {refused_sum}, want {refused}"));
    }
    bad
}
