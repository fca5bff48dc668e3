//! Command-line parsing (by hand, no dependencies).

use std::net::{SocketAddr, ToSocketAddrs};

pub const USAGE: &str = "\
usage:
  mario-bench rps  --addr HOST:PORT [--conns N=100] [--depth D=1] [--duration SECS=10] [--warmup SECS=2] [--threads K=1] [COMMON]
  mario-bench cps  --addr HOST:PORT [--concurrency C=200] [--duration SECS=10] [--warmup SECS=2] [--threads K=1] [COMMON]
  mario-bench hold --addr HOST:PORT [--conns N=15000] [--churn R=1000] [--sends K=1000] [--duration SECS=30] [--threads K=1] [COMMON]
  mario-bench bw   --addr HOST:PORT [--conns N=50] [--depth D=8] [--size BYTES=1400] [--duration SECS=10] [--warmup SECS=2] [--threads K=1] [COMMON]
COMMON: [--pid PID] [--stx HEX=8eb69af7] [--id HEX=6101, bw: 6102] [--body BYTES=2, not bw] [--rst] [--json-only] [--quiet]

  rps   N connections, D requests in flight on each; requests/s and latency
  cps   C slots looping connect, one request, reply, close; connections/s
  hold  open and hold N connections (one LOGIN each); every second close and
        reopen R random ones and send K requests on random held ones
  bw    N connections, D ECHO packets of SIZE bytes (head included, 16..65535)
        in flight on each, every echo checked byte for byte; packets/s, Gbit/s
  --pid      server process: report its CPU time (/proc/PID/stat) and RSS
  --rst      close with SO_LINGER {1,0} (RST, no TIME_WAIT)
  --json-only  print only the JSON summary line on stdout
  --quiet    no per-second progress on stderr
SIGUSR1 ends the measured window at once (the run drains and reports).
exit status: 0 run completed (errors are counted and reported), 2 bad
arguments or no connection could be made at all";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Rps,
    Cps,
    Hold,
    Bw,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rps => "rps",
            Mode::Cps => "cps",
            Mode::Hold => "hold",
            Mode::Bw => "bw",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub addr: SocketAddr,
    /// rps, bw: connections; cps: concurrency; hold: connections held.
    pub conns: usize,
    /// Requests in flight per connection (rps, bw; 1 otherwise).
    pub depth: usize,
    pub duration: f64,
    /// Warm-up seconds (rps, cps; hold has a set-up phase instead).
    pub warmup: f64,
    pub threads: usize,
    /// hold: connections closed and reopened per second.
    pub churn: u64,
    /// hold: requests per second on random held connections.
    pub sends: u64,
    pub pid: Option<u32>,
    pub stx: u32,
    pub id: u16,
    /// Body bytes of a request (bw: `--size` minus the head).
    pub body: usize,
    pub rst: bool,
    pub json_only: bool,
    pub quiet: bool,
}

impl Config {
    /// Whole request length (head + body).
    pub fn req_len(&self) -> usize {
        8 + self.body
    }

    /// Bind client sockets to spread loopback source addresses?
    pub fn spread_sources(&self) -> bool {
        match self.addr {
            SocketAddr::V4(a) => a.ip().octets()[0] == 127,
            SocketAddr::V6(_) => false,
        }
    }
}

fn parse_num<T: std::str::FromStr>(opt: &str, v: &str) -> Result<T, String> {
    v.parse::<T>().map_err(|_| format!("{opt}: bad value '{v}'"))
}

fn parse_secs(opt: &str, v: &str) -> Result<f64, String> {
    let x: f64 = parse_num(opt, v)?;
    if !(0.0..=1e7).contains(&x) {
        return Err(format!("{opt}: bad value '{v}'"));
    }
    Ok(x)
}

fn parse_hex(opt: &str, v: &str) -> Result<u64, String> {
    let t = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    u64::from_str_radix(t, 16).map_err(|_| format!("{opt}: bad hex value '{v}'"))
}

fn resolve(v: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = v
        .to_socket_addrs()
        .map_err(|e| format!("--addr: cannot resolve '{v}': {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("--addr: no address for '{v}'"))
}

/// The smallest bw packet: the head, then the connection's tag and the
/// packet's sequence number (u32 each).
pub const BW_MIN_SIZE: usize = 16;

/// Parses the arguments (without the program name). `Ok(None)` means help was asked for.
pub fn parse(args: &[String]) -> Result<Option<Config>, String> {
    let Some(first) = args.first() else {
        return Err("missing mode (rps, cps, hold or bw)".into());
    };
    let mode = match first.as_str() {
        "rps" => Mode::Rps,
        "cps" => Mode::Cps,
        "hold" => Mode::Hold,
        "bw" => Mode::Bw,
        "-h" | "--help" | "help" => return Ok(None),
        m => return Err(format!("unknown mode '{m}' (rps, cps, hold or bw)")),
    };
    let bw = mode == Mode::Bw;
    let mut cfg = Config {
        mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        conns: match mode {
            Mode::Rps => 100,
            Mode::Cps => 200,
            Mode::Hold => 15000,
            Mode::Bw => 50,
        },
        depth: if bw { 8 } else { 1 },
        duration: if mode == Mode::Hold { 30.0 } else { 10.0 },
        warmup: if mode == Mode::Hold { 0.0 } else { 2.0 },
        threads: 1,
        churn: 1000,
        sends: 1000,
        pid: None,
        stx: 0x8eb6_9af7,
        id: if bw { 0x6102 } else { 0x6101 },
        body: if bw { 1400 - 8 } else { 2 },
        rst: false,
        json_only: false,
        quiet: false,
    };
    let mut have_addr = false;
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let (opt, inline) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_string())),
            _ => (arg, None),
        };
        let flag = matches!(opt, "--rst" | "--json-only" | "--quiet" | "-h" | "--help");
        let value = if flag {
            if inline.is_some() {
                return Err(format!("{opt} takes no value"));
            }
            String::new()
        } else if let Some(v) = inline {
            v
        } else if i < args.len() {
            i += 1;
            args[i - 1].clone()
        } else {
            return Err(format!("{opt}: missing value"));
        };
        let v = value.as_str();
        let only = |ok: &[Mode]| -> Result<(), String> {
            if ok.contains(&mode) {
                Ok(())
            } else {
                Err(format!("{opt} is not an option of '{}'", mode.name()))
            }
        };
        match opt {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                cfg.addr = resolve(v)?;
                have_addr = true;
            }
            "--conns" => {
                only(&[Mode::Rps, Mode::Hold, Mode::Bw])?;
                cfg.conns = parse_num(opt, v)?;
            }
            "--concurrency" => {
                only(&[Mode::Cps])?;
                cfg.conns = parse_num(opt, v)?;
            }
            "--depth" => {
                only(&[Mode::Rps, Mode::Bw])?;
                cfg.depth = parse_num(opt, v)?;
            }
            "--duration" => cfg.duration = parse_secs(opt, v)?,
            "--warmup" => {
                only(&[Mode::Rps, Mode::Cps, Mode::Bw])?;
                cfg.warmup = parse_secs(opt, v)?;
            }
            "--threads" => cfg.threads = parse_num(opt, v)?,
            "--churn" => {
                only(&[Mode::Hold])?;
                cfg.churn = parse_num(opt, v)?;
            }
            "--sends" => {
                only(&[Mode::Hold])?;
                cfg.sends = parse_num(opt, v)?;
            }
            "--pid" => cfg.pid = Some(parse_num(opt, v)?),
            "--stx" => {
                cfg.stx = u32::try_from(parse_hex(opt, v)?).map_err(|_| format!("{opt}: too large"))?
            }
            "--id" => cfg.id = u16::try_from(parse_hex(opt, v)?).map_err(|_| format!("{opt}: too large"))?,
            "--body" => {
                only(&[Mode::Rps, Mode::Cps, Mode::Hold])?;
                cfg.body = parse_num(opt, v)?;
            }
            "--size" => {
                only(&[Mode::Bw])?;
                let size: usize = parse_num(opt, v)?;
                if !(BW_MIN_SIZE..=u16::MAX as usize).contains(&size) {
                    return Err(format!("--size must be {BW_MIN_SIZE}..{}", u16::MAX));
                }
                cfg.body = size - 8;
            }
            "--rst" => cfg.rst = true,
            "--json-only" => cfg.json_only = true,
            "--quiet" => cfg.quiet = true,
            _ => return Err(format!("unknown option '{arg}'")),
        }
    }
    if !have_addr {
        return Err("--addr HOST:PORT is required".into());
    }
    if cfg.addr.port() == 0 {
        return Err("--addr: port 0".into());
    }
    if cfg.conns == 0 {
        return Err("the number of connections must be at least 1".into());
    }
    if cfg.conns > 1_000_000 {
        return Err("too many connections".into());
    }
    if cfg.depth == 0 || cfg.depth > 4096 {
        return Err("--depth must be 1..4096".into());
    }
    if cfg.threads == 0 || cfg.threads > 256 {
        return Err("--threads must be 1..256".into());
    }
    if cfg.duration <= 0.0 {
        return Err("--duration must be > 0".into());
    }
    if cfg.req_len() > u16::MAX as usize {
        return Err(format!("--body must be at most {}", u16::MAX as usize - 8));
    }
    if cfg.req_len() * cfg.depth > 4 << 20 {
        return Err("--depth x request size must stay under 4 MiB".into());
    }
    cfg.threads = cfg.threads.min(cfg.conns);
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Config>, String> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    #[test]
    fn defaults() {
        let c = p("rps --addr 127.0.0.1:9").unwrap().unwrap();
        assert_eq!((c.mode, c.conns, c.depth, c.threads), (Mode::Rps, 100, 1, 1));
        assert_eq!((c.duration, c.warmup), (10.0, 2.0));
        assert_eq!((c.stx, c.id, c.body), (0x8eb69af7, 0x6101, 2));
        assert!(c.spread_sources());
        let c = p("hold --addr 127.0.0.1:9").unwrap().unwrap();
        assert_eq!((c.conns, c.churn, c.sends, c.duration), (15000, 1000, 1000, 30.0));
        let c = p("cps --addr 127.0.0.1:9").unwrap().unwrap();
        assert_eq!(c.conns, 200);
        let c = p("bw --addr 127.0.0.1:9").unwrap().unwrap();
        assert_eq!((c.mode, c.conns, c.depth, c.req_len()), (Mode::Bw, 50, 8, 1400));
        assert_eq!((c.id, c.duration, c.warmup), (0x6102, 10.0, 2.0));
    }

    #[test]
    fn options() {
        let c =
            p("rps --addr=127.0.0.1:9 --conns 10 --depth=4 --threads 2 --stx 0x1234 --id ff --rst --quiet")
                .unwrap()
                .unwrap();
        assert_eq!(
            (c.conns, c.depth, c.threads, c.stx, c.id),
            (10, 4, 2, 0x1234, 0xff)
        );
        assert!(c.rst && c.quiet && !c.json_only);
        let c = p("cps --addr 127.0.0.1:9 --concurrency 3 --threads 8")
            .unwrap()
            .unwrap();
        assert_eq!((c.conns, c.threads), (3, 3));
        let c = p("bw --addr 127.0.0.1:9 --conns 4 --depth 2 --size 16 --warmup 0 --threads 2 --id 7")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.conns, c.depth, c.req_len(), c.warmup, c.threads, c.id),
            (4, 2, 16, 0.0, 2, 7)
        );
    }

    #[test]
    fn errors() {
        assert!(p("").is_err());
        assert!(p("rps").is_err());
        assert!(p("bogus --addr 127.0.0.1:9").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --churn 5").is_err());
        assert!(p("hold --addr 127.0.0.1:9 --depth 5").is_err());
        assert!(p("cps --addr 127.0.0.1:9 --conns 5").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --conns").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --conns x").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --stx zz").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --id 10000").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --body 70000").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --rst=1").is_err());
        assert!(p("rps --addr 127.0.0.1:9 --size 100").is_err());
        assert!(p("bw --addr 127.0.0.1:9 --body 100").is_err());
        assert!(p("bw --addr 127.0.0.1:9 --size 15").is_err());
        assert!(p("bw --addr 127.0.0.1:9 --size 65536").is_err());
        assert!(p("bw --addr 127.0.0.1:9 --churn 5").is_err());
        assert!(p("rps --help").unwrap().is_none());
    }
}
