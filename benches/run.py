#!/usr/bin/env python3
"""make bench: our server (maritcp on libmario) against the tokio peer, side by side.

Runs every scenario of DESIGN.md alternating the two servers (A B A B ...,
same settings, same worker count, same load generator) for --rounds rounds,
then writes BENCHMARKS.md: the machine, the commands, a table of medians with
the ratio ours / peer, and the dated history of earlier results.

    python3 benches/run.py [--rounds 3] [--quick] [--out BENCHMARKS.md]
"""
import argparse, datetime, json, os, platform, re, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/mario-bench")
MARITCP = os.path.join(ROOT, "c-examples/maritcp")
PEER = os.path.join(ROOT, "target/release/tokio-peer")
WORKERS = 2
TIMEOUT = 300


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    """One server process on a free port, started in the foreground."""

    def __init__(self, kind):
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"mario-bench-{kind}-")
        out = open(os.path.join(self.dir, "stdout.txt"), "w")
        err = open(os.path.join(self.dir, "stderr.txt"), "w")
        if kind == "mario":
            with open(os.path.join(self.dir, "init.conf"), "w") as f:
                f.write(f"PORT {self.port}\nTIMEOUT {TIMEOUT}\nWORKERNUM {WORKERS}\nCONNNUM 20000\n")
            cmd = [MARITCP, "-f"]
        else:
            cmd = [PEER, "--port", str(self.port), "--workers", str(WORKERS), "--timeout", str(TIMEOUT)]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        t0 = time.time()
        while time.time() - t0 < 10:
            with open(os.path.join(self.dir, "stdout.txt")) as f:
                if "start server ok" in f.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{kind} did not start; see {self.dir}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_bench(args, server):
    cmd = [BENCH] + args + ["--addr", f"127.0.0.1:{server.port}", "--pid", str(server.proc.pid), "--json-only"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    res = json.loads(line[-1])
    if isinstance(res.get("failures"), dict):
        res["failures_total"] = sum(res["failures"].values())
    return res


def scenarios(quick):
    d = "3" if quick else "5"
    return [
        ("rps 100 x 1", ["rps", "--conns", "100", "--depth", "1", "--duration", d, "--warmup", "1"]),
        ("rps 1000 x 4", ["rps", "--conns", "1000", "--depth", "4", "--duration", d, "--warmup", "1"]),
        ("cps 200", ["cps", "--concurrency", "200", "--duration", d, "--warmup", "1", "--rst"]),
        ("hold 15000", ["hold", "--conns", "15000", "--churn", "1000", "--sends", "1000",
                        "--duration", "6" if quick else "10", "--rst"]),
    ]


def idle_cpu(server, secs):
    c0 = cpu_seconds(server.proc.pid)
    time.sleep(secs)
    return {"idle_cpu_pct": 100.0 * (cpu_seconds(server.proc.pid) - c0) / secs, "rss_kib": rss_kib(server.proc.pid)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    a = ap.parse_args()
    results = {}  # (scenario, kind) -> [json]
    for r in range(a.rounds):
        for name, args in scenarios(a.quick):
            for kind in ("mario", "tokio"):
                s = Server(kind)
                try:
                    res = run_bench(args, s)
                finally:
                    s.stop()
                results.setdefault((name, kind), []).append(res)
                print(f"round {r + 1} {name:14} {kind:6} rate {res.get('rate', 0):>10.0f}/s "
                      f"cpu/op {res.get('server_cpu_us_per_op') or 0:6.2f} us "
                      f"rss {res.get('rss_max_kib') or 0} KiB", file=sys.stderr, flush=True)
        for kind in ("mario", "tokio"):
            s = Server(kind)
            try:
                res = idle_cpu(s, 3 if a.quick else 5)
            finally:
                s.stop()
            results.setdefault(("idle", kind), []).append(res)
            print(f"round {r + 1} idle           {kind:6} cpu {res['idle_cpu_pct']:.2f} %", file=sys.stderr)
    write_report(a, results)


def med(results, key, field):
    vals = [x.get(field) for x in results.get(key, []) if x.get(field) is not None]
    return statistics.median(vals) if vals else None


def write_report(a, results):
    rows = []

    def row(label, scen, field, fmt, target):
        m, t = med(results, (scen, "mario"), field), med(results, (scen, "tokio"), field)
        ratio = (m / t) if (m is not None and t) else None
        rows.append((label, fmt(m), fmt(t), f"{ratio:.2f} x" if ratio is not None else "-", target))

    n = lambda v: "-" if v is None else f"{v:,.0f}"
    us = lambda v: "-" if v is None else f"{v:.2f} us"
    row("100 conns x 1 in flight: req/s", "rps 100 x 1", "rate", n, ">= 1.25 x")
    row("same: server CPU per request", "rps 100 x 1", "server_cpu_us_per_op", us, "<= 0.6 x")
    row("same: p99 latency", "rps 100 x 1", "p99_us", us, "")
    row("1000 conns x 4 in flight: req/s", "rps 1000 x 4", "rate", n, ">= 1.2 x")
    row("same: server CPU per request", "rps 1000 x 4", "server_cpu_us_per_op", us, "<= 0.75 x")
    row("same: p99 latency", "rps 1000 x 4", "p99_us", us, "")
    row("connect + LOGIN + close, 200 at a time: per second", "cps 200", "rate", n, ">= 1.2 x")
    row("same: server CPU per connection", "cps 200", "server_cpu_us_per_op", us, "<= 0.75 x")
    row("RSS holding 15,000 connections (churn 1000/s): KiB", "hold 15000", "rss_max_kib", n, "<= 0.2 x")
    row("same: failures", "hold 15000", "failures_total", n, "0")
    m, t = med(results, ("idle", "mario"), "idle_cpu_pct"), med(results, ("idle", "tokio"), "idle_cpu_pct")
    rows.append(("idle server CPU", f"{m:.2f} %", f"{t:.2f} %", "-", "0"))

    today = datetime.date.today().isoformat()
    cpu = "unknown"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read()).group(1)
    except Exception:
        pass
    table = ["| scenario | ours (maritcp + libmario) | tokio peer | ours / peer | target |", "|---|---|---|---|---|"]
    table += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in rows]
    head = f"""# Benchmarks

Generated by `make bench` (`python3 benches/run.py --rounds {a.rounds}{' --quick' if a.quick else ''}`)
on {today}.

- Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; shared and noisy,
  so only ratios measured in the same run mean anything.
- Servers: `c-examples/maritcp -f` (the C sample application linked with `libmario.a`) and
  `target/release/tokio-peer` (the same LOGIN server in tokio: multi-thread runtime, a task per
  connection), both with {WORKERS} workers and a {TIMEOUT} s timeout, run alternately (A B A B)
  on loopback, each scenario started on a fresh server.
- Load: `target/release/mario-bench` (one process, one thread) with `--pid` for the server's CPU
  time (utime + stime from /proc over the measured window) and RSS (max VmRSS during the run).
- Medians over {a.rounds} rounds.

"""
    hist_start = "## History"
    old = ""
    if os.path.exists(a.out):
        txt = open(a.out).read()
        if hist_start in txt:
            old = txt.split(hist_start, 1)[1]
    entry = f"\n### {today}\n\n" + "\n".join(table) + "\n"
    notes_file = os.path.join(ROOT, "benches/NOTES.md")
    notes = open(notes_file).read() if os.path.exists(notes_file) else ""
    with open(a.out, "w") as f:
        f.write(head + "\n".join(table) + "\n\n" + notes + "\n" + hist_start + "\n" + entry + "\n" + old.lstrip("\n"))
    print("\n".join(table))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
