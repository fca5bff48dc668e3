#!/usr/bin/env python3
"""make bench: our server (maritcp on libmario) against the tokio peer and the
floor (a bare C epoll loop, benches/floor/floor.c), side by side.

Runs every benchmark scenario (BENCHMARKS.md) alternating the three servers
(A B C A B C ..., same settings, same worker count, same load generator) for
--rounds rounds, then writes BENCHMARKS.md: the machine, the commands, a table
of medians with the ratios ours / tokio and ours / floor and each round's
ratio, the pictures (benches/img/*.svg, drawn by benches/plots.py with
matplotlib in its own virtual environment), and the dated history of earlier
results.

    python3 benches/run.py [--rounds 5] [--quick] [--out BENCHMARKS.md]
                           [--compare OLD_MARITCP]

--compare runs a third server in every round, another build of maritcp
(say, the last commit's: `git worktree add /tmp/before HEAD~1 && make -C
/tmp/before`), and adds the column "ours / before": a before/after
measurement of a change, from one run.
"""
import argparse, datetime, json, os, platform, re, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/mario-bench")
MARITCP = os.path.join(ROOT, "c-examples/maritcp")
PEER = os.path.join(ROOT, "target/release/tokio-peer")
FLOOR = os.path.join(ROOT, "target/bench/floor")
# matplotlib for the pictures, in the bench's own virtual environment.
PLOT_PY = os.path.join(ROOT, "target/bench-venv/bin/python")
PEERS = ("tokio", "floor")
# The Python LOGIN server (python/mario/examples/login.py), as `make venv`
# installs the package, on the library of this tree.
VENV_PY = os.path.join(ROOT, "target/venv/bin/python")
SO = os.path.join(ROOT, "target/release/libmario.so")
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

    def __init__(self, kind, maritcp=None):
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"mario-bench-{kind}-")
        out = open(os.path.join(self.dir, "stdout.txt"), "w")
        err = open(os.path.join(self.dir, "stderr.txt"), "w")
        env = None
        if kind in ("mario", "before", "haproxy"):
            with open(os.path.join(self.dir, "init.conf"), "w") as f:
                f.write(f"PORT {self.port}\nTIMEOUT {TIMEOUT}\nWORKERNUM {WORKERS}\nCONNNUM 20000\n")
                if kind == "haproxy":
                    # maritcp behind HAProxy: PROXY v2, only from HAProxy.
                    f.write("BIND 127.0.0.2\nPROXY v2\nPROXY_SOURCE 127.0.0.1\n")
            cmd = [maritcp or MARITCP, "-f"]
        elif kind == "floor":
            cmd = [FLOOR, "--port", str(self.port), "--workers", str(WORKERS)]
        elif kind == "python":
            cmd = [VENV_PY, "-m", "mario.examples.login", "--port", str(self.port), "--workers", str(WORKERS),
                   "--timeout", str(TIMEOUT)]
            env = dict(os.environ, MARIO_LIBRARY=SO)
        else:
            cmd = [PEER, "--port", str(self.port), "--workers", str(WORKERS), "--timeout", str(TIMEOUT)]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        t0, started = time.time(), False
        while time.time() - t0 < 10 and not started:
            with open(os.path.join(self.dir, "stdout.txt")) as f:
                started = "start server ok" in f.read()
            if not started and self.proc.poll() is not None:
                break
            time.sleep(0 if started else 0.02)
        if not started:
            raise RuntimeError(f"{kind} did not start; see {self.dir}")
        if kind != "haproxy":
            return
        # HAProxy in front (the configuration of docs/DEPLOY.md, one server):
        # clients connect to it, the CPU measured is maritcp's.
        self.backend, self.port = self.port, free_port()
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("global\n    maxconn 8000\n\ndefaults\n    mode tcp\n    timeout connect 1s\n"
                    "    timeout client 30s\n    timeout server 30s\n\n"
                    f"frontend front\n    bind 127.0.0.1:{self.port}\n    default_backend back\n\n"
                    f"backend back\n    server a 127.0.0.2:{self.backend} send-proxy-v2 maxconn 8000\n")
        self.haproxy = subprocess.Popen(["haproxy", "-f", cfg, "-db"], cwd=self.dir, stdin=subprocess.DEVNULL,
                                        stdout=open(os.path.join(self.dir, "haproxy.txt"), "w"),
                                        stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < 10:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not start; see {self.dir}")

    def stop(self):
        if getattr(self, "haproxy", None) is not None:
            self.haproxy.kill()
            self.haproxy.wait()
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
    # Short runs, many rounds: the spread across rounds says more on this
    # noisy machine than a long run does.
    d, w = ("1.5", "0.5") if quick else ("2.5", "0.5")
    load = [
        ("rps 100 x 1", ["rps", "--conns", "100", "--depth", "1", "--duration", d, "--warmup", w]),
        ("rps 1000 x 4", ["rps", "--conns", "1000", "--depth", "4", "--duration", d, "--warmup", w]),
        ("cps 200", ["cps", "--concurrency", "200", "--duration", d, "--warmup", w, "--rst"]),
    ]
    # The same three with a two-thread generator: on two cores the one-thread
    # generator is itself the bottleneck, so both settings are reported.
    two = [(f"{name} {GEN2}", args + ["--threads", "2"]) for name, args in load]
    return load + two + [
        # The original's "1 Gbit/s" claim: 1,400-byte packets echoed.
        (BW, ["bw", "--conns", "50", "--depth", "8", "--size", "1400", "--duration", d, "--warmup", w]),
        ("hold 15000", ["hold", "--conns", "15000", "--churn", "1000", "--sends", "1000",
                        "--duration", "4" if quick else "6", "--rst"]),
    ]


BW = "bw 50 x 8 x 1400 B"


GEN2 = "(2 generator threads)"


MEM_SIZES = (1000, 5000, 15000)


def memory_scaling():
    """RSS growth per held connection at 1k, 5k and 15k (fresh server each)."""
    out = {}
    for kind in ("mario", "tokio"):
        for n in MEM_SIZES:
            s = Server(kind)
            try:
                res = run_bench(["hold", "--conns", str(n), "--churn", "0", "--sends", "0", "--duration", "2"], s)
            finally:
                s.stop()
            grow = (res["rss_max_kib"] - res["rss_before_kib"]) * 1024
            out[(kind, n)] = {"base_kib": res["rss_before_kib"], "max_kib": res["rss_max_kib"],
                              "per_conn": grow / n, "held": res.get("held"), "failures": res.get("failures_total")}
            print(f"memory {kind:6} {n:>6} held {res.get('held')} rss {res['rss_before_kib']} -> "
                  f"{res['rss_max_kib']} KiB, {grow / n:.0f} B per connection", file=sys.stderr, flush=True)
    return out


def memory_table(mem):
    rows = ["| connections held | ours: RSS growth | ours: per connection | tokio peer: per connection |",
            "|---|---|---|---|"]
    for n in MEM_SIZES:
        m, t = mem[("mario", n)], mem[("tokio", n)]
        rows.append(f"| {n:,} | {m['max_kib'] - m['base_kib']:,} KiB | {m['per_conn']:.0f} B "
                    f"| {t['per_conn']:.0f} B |")
    lo, hi = MEM_SIZES[1], MEM_SIZES[-1]
    for kind, label in (("mario", "ours"), ("tokio", "tokio peer")):
        a, b = mem[(kind, lo)], mem[(kind, hi)]
        marg = (b["max_kib"] - b["base_kib"] - (a["max_kib"] - a["base_kib"])) * 1024 / (hi - lo)
        rows.append(f"| {lo:,} to {hi:,}, {label}: per added connection | | {marg:.0f} B | |")
    return "\n".join(rows)


LOGCOST = os.path.join(ROOT, "target/bench/logcost")


def micro(quick):
    """The decoders (frames/s per framing on one core, `cargo bench --bench
    decoders`) and the cost of a filtered log call (benches/logcost.c)."""
    secs = "0.2" if quick else "0.6"
    out = subprocess.run(["cargo", "bench", "-q", "--bench", "decoders", "--", secs], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    decoders = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    for d in decoders:
        print(f"decoder {d['case']:40} payload {d['payload']:>4} {d['frames_per_s'] / 1e6:8.1f} M frames/s "
              f"({d['vs_head']:.2f} x HEAD)", file=sys.stderr, flush=True)
    calls = "5000000" if quick else "20000000"
    log = json.loads(subprocess.run([LOGCOST, calls], capture_output=True, text=True, check=True).stdout)
    print(f"filtered slog_info {log['filtered_ns']:.2f} ns, snprintf of the line {log['snprintf_ns']:.1f} ns, "
          f"kept slog_info {log['kept_ns']:.1f} ns", file=sys.stderr, flush=True)
    return {"decoders": decoders, "log": log}


def micro_table(m):
    if not m:
        return ""
    rows = ["| framing | payload | frames/s (one core) | bytes/s | vs classic HEAD, same payload |",
            "|---|---|---|---|---|"]
    for d in m["decoders"]:
        rows.append(f"| {d['case']} | {d['payload']} B | {d['frames_per_s'] / 1e6:,.1f} M "
                    f"| {d['bytes_per_s'] / 1e9:,.2f} GB | {d['vs_head']:.2f} x |")
    lg = m["log"]
    return ("Decoders (`cargo bench --bench decoders`: `Framing::scan` over a 64 KiB read buffer full of\n"
            "frames, again and again, the callback touching each frame; median of 3):\n\n"
            + "\n".join(rows) + "\n\n"
            + "A `slog_info` below the log level (`benches/logcost.c`, median of 3): "
            + f"{lg['filtered_ns']:.2f} ns per call, {lg['filtered_vs_snprintf']:.4f} x the `snprintf` of the same line "
            + f"({lg['snprintf_ns']:.1f} ns: what 0.9.9 paid for every call, having no levels) and "
            + f"{lg['filtered_vs_kept']:.4f} x a kept `slog_info` (formatted and queued: {lg['kept_ns']:.1f} ns).\n\n")


def ctx_switches(pid):
    """Context switches of all the process's threads so far (each wake-up of
    a sleeping thread is one)."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
        except OSError:
            pass
    return n


def idle_cpu(server, secs):
    """CPU and thread wake-ups of a server holding no connection (libmario's
    worker monitor runs: it looks every 250 ms)."""
    time.sleep(0.5)
    c0, w0 = cpu_seconds(server.proc.pid), ctx_switches(server.proc.pid)
    time.sleep(secs)
    return {"idle_cpu_pct": 100.0 * (cpu_seconds(server.proc.pid) - c0) / secs,
            "wakeups_per_s": (ctx_switches(server.proc.pid) - w0) / secs,
            "rss_kib": rss_kib(server.proc.pid)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--raw", default=os.path.join(ROOT, "target/bench-results.json"),
                    help="where the raw results are saved")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the saved raw results (after editing benches/NOTES.md)")
    ap.add_argument("--compare", metavar="MARITCP",
                    help="also run this maritcp binary (another build) in every round, as 'before'")
    a = ap.parse_args()
    kinds = ("mario",) + PEERS + (("before",) if a.compare else ())
    if a.report_only:
        raw = json.load(open(a.raw))
        a.rounds, a.quick = raw["rounds"], raw["quick"]
        results = {tuple(k.split("|")): v for k, v in raw["results"].items()}
        mem = {(k.split("|")[0], int(k.split("|")[1])): v for k, v in raw["mem"].items()}
        write_report(a, results, mem, raw["date"], replace_today=True, micro=raw.get("micro"))
        plots(a.raw)
        return
    results = {}  # (scenario, kind) -> [json]
    for r in range(a.rounds):
        for name, args in scenarios(a.quick):
            for kind in kinds:
                s = Server(kind, a.compare if kind == "before" else None)
                try:
                    res = run_bench(args, s)
                finally:
                    s.stop()
                results.setdefault((name, kind), []).append(res)
                print(f"round {r + 1} {name:14} {kind:6} rate {res.get('rate', 0):>10.0f}/s "
                      f"cpu/op {res.get('server_cpu_us_per_op') or 0:6.2f} us "
                      f"rss {res.get('rss_max_kib') or 0} KiB", file=sys.stderr, flush=True)
        for kind in kinds:
            s = Server(kind, a.compare if kind == "before" else None)
            try:
                res = idle_cpu(s, 2 if a.quick else 4)
            finally:
                s.stop()
            results.setdefault(("idle", kind), []).append(res)
            print(f"round {r + 1} idle           {kind:6} cpu {res['idle_cpu_pct']:.2f} % "
                  f"wake-ups {res['wakeups_per_s']:.1f}/s", file=sys.stderr)
    # The price of Python handlers (the GIL, ctypes): the same LOGIN server
    # in Python against ours, rps 100 x 1, alternating, every round.
    side = min(a.rounds, 3)
    py_args = dict(scenarios(a.quick))["rps 100 x 1"]
    for r in range(side):
        for kind in ("mario", "python"):
            s = Server(kind)
            try:
                res = run_bench(py_args, s)
            finally:
                s.stop()
            results.setdefault(("python rps 100 x 1", kind), []).append(res)
            print(f"round {r + 1} python check   {kind:6} rate {res.get('rate', 0):>10.0f}/s "
                  f"cpu/op {res.get('server_cpu_us_per_op') or 0:6.2f} us", file=sys.stderr, flush=True)
    # Through HAProxy (PROXY protocol v2) against direct, same rounds,
    # alternating: what the balancer in front costs.
    for r in range(side):
        for scen in ("rps 100 x 1", "cps 200"):
            for kind in ("mario", "haproxy"):
                s = Server(kind)
                try:
                    res = run_bench(dict(scenarios(a.quick))[scen], s)
                finally:
                    s.stop()
                results.setdefault((f"haproxy {scen}", kind), []).append(res)
                print(f"round {r + 1} {scen:14} {kind:7} rate {res.get('rate', 0):>10.0f}/s", file=sys.stderr,
                      flush=True)
    mem = memory_scaling()
    mic = micro(a.quick)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    os.makedirs(os.path.dirname(a.raw), exist_ok=True)
    with open(a.raw, "w") as f:
        json.dump({"rounds": a.rounds, "quick": a.quick, "date": today,
                   "results": {"|".join(k): v for k, v in results.items()},
                   "mem": {f"{k[0]}|{k[1]}": v for k, v in mem.items()}, "micro": mic}, f)
    write_report(a, results, mem, today, micro=mic)
    plots(a.raw)


def scale_section():
    """make scale's section (benches/scale.py --report-only --markdown) from
    its saved results (benches/scale-results.json), or "" when it never ran
    here."""
    if not os.path.exists(os.path.join(ROOT, "benches/scale-results.json")):
        return ""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benches/scale.py"), "--report-only", "--markdown"],
                         capture_output=True, text=True)
    text = out.stdout
    if out.returncode != 0 or "## Holding" not in text:
        print(f"make scale's section not included: {out.stderr}", file=sys.stderr)
        return ""
    return text[text.index("## Holding"):].rstrip() + "\n\n"


def plots(raw):
    """Draws benches/img/*.svg from the raw results (benches/plots.py, with
    matplotlib from the bench's own virtual environment)."""
    if not os.path.exists(PLOT_PY):
        print(f"no {PLOT_PY}: pictures not drawn (make bench makes it)", file=sys.stderr)
        return
    subprocess.run([PLOT_PY, os.path.join(ROOT, "benches/plots.py"), raw, os.path.join(ROOT, "benches/img")],
                   check=True)


def med(results, key, field):
    vals = [x.get(field) for x in results.get(key, []) if x.get(field) is not None]
    return statistics.median(vals) if vals else None


def ratios(results, scen, field, peer):
    """Median of ours / `peer`, and each round's ratio (the spread)."""
    m, t = med(results, (scen, "mario"), field), med(results, (scen, peer), field)
    ratio = (m / t) if (m is not None and t) else None
    pairs = zip(results.get((scen, "mario"), []), results.get((scen, peer), []))
    per = [x.get(field) / y.get(field) for x, y in pairs if x.get(field) is not None and y.get(field)]
    return (f"{ratio:.2f} x" if ratio is not None else "-"), (" ".join(f"{r:.2f}" for r in per) if per else "-")


def python_table(results):
    """The Python LOGIN server against ours (the C one), same rounds."""
    key = "python rps 100 x 1"
    py, c = results.get((key, "python"), []), results.get((key, "mario"), [])
    if not py or not c:
        return ""
    rows = ["Python handlers (`python -m mario.examples.login`, the same LOGIN server in Python through "
            "libmario's C interface with ctypes) against ours (maritcp, C handlers), rps 100 x 1, "
            "alternating in each round:", "",
            "| | ours (C) | Python | Python / ours | per round |", "|---|---|---|---|---|"]
    for label, field, fmt in (("req/s", "rate", lambda v: f"{v:,.0f}"),
                              ("server CPU per request", "server_cpu_us_per_op", lambda v: f"{v:.2f} us")):
        m, p = med(results, (key, "mario"), field), med(results, (key, "python"), field)
        per = [y[field] / x[field] for x, y in zip(c, py) if x.get(field) and y.get(field)]
        rows.append(f"| {label} | {fmt(m)} | {fmt(p)} | {statistics.median(per):.2f} x | "
                    + " ".join(f"{r:.2f}" for r in per) + " |")
    return "\n".join(rows) + "\n\n"


def haproxy_table(results):
    """maritcp behind HAProxy (send-proxy-v2) against maritcp direct."""
    rows = ["Behind HAProxy (`mode tcp`, `send-proxy-v2`, maritcp with `PROXY v2`, docs/DEPLOY.md) against "
            "maritcp direct, alternating in each round; server CPU is maritcp's (HAProxy's own is not "
            "counted):", "",
            "| scenario | | direct | through HAProxy | HAProxy / direct | per round |", "|---|---|---|---|---|---|"]
    for scen in ("rps 100 x 1", "cps 200"):
        key = f"haproxy {scen}"
        d, h = results.get((key, "mario"), []), results.get((key, "haproxy"), [])
        if not d or not h:
            return ""
        for label, field, fmt in (("rate", "rate", lambda v: f"{v:,.0f}/s"),
                                  ("server CPU per op", "server_cpu_us_per_op", lambda v: f"{v:.2f} us")):
            m, p = med(results, (key, "mario"), field), med(results, (key, "haproxy"), field)
            per = [y[field] / x[field] for x, y in zip(d, h) if x.get(field) and y.get(field)]
            if m is None or p is None or not per:
                continue
            rows.append(f"| {scen} | {label} | {fmt(m)} | {fmt(p)} | {statistics.median(per):.2f} x | "
                        + " ".join(f"{r:.2f}" for r in per) + " |")
    return "\n".join(rows) + "\n\n"


PICTURES = """Rate, p99 latency and server CPU per operation of each scenario, relative to the floor's
median (bars: the median; whiskers: the lowest and highest round), and memory per held connection
(benches/plots.py):

![rate per scenario](benches/img/rates.svg)

![p99 latency](benches/img/latency.svg)

![server CPU per operation](benches/img/cpu.svg)

![memory per held connection](benches/img/memory.svg)

"""


def write_report(a, results, mem, today, replace_today=False, micro=None):
    rows = []
    before = any(k[1] == "before" for k in results)

    def row(label, scen, field, fmt, target):
        vals = [fmt(med(results, (scen, k), field)) for k in ("mario",) + PEERS]
        cols = []
        for peer in PEERS + (("before",) if before else ()):
            cols += list(ratios(results, scen, field, peer))
        rows.append((label, *vals, *cols, target))

    n = lambda v: "-" if v is None else f"{v:,.0f}"
    us = lambda v: "-" if v is None else f"{v:.2f} us"
    gb = lambda v: "-" if v is None else f"{v:.2f}"
    sgb = lambda v: "-" if v is None else f"{v:.2f} s"
    for gen in ("", " " + GEN2):
        for scen, what in ((f"rps 100 x 1{gen}", "100 conns x 1 in flight"),
                           (f"rps 1000 x 4{gen}", "1000 conns x 4 in flight")):
            row(f"{what}: req/s{gen}", scen, "rate", n, ">= 1.1 x tokio")
            row("same: server CPU per request", scen, "server_cpu_us_per_op", us, "<= 0.95 x tokio, <= 1.05 x floor")
            row("same: p99 latency", scen, "p99_us", us, "")
        row(f"connect + LOGIN + close, 200 at a time: per second{gen}", f"cps 200{gen}", "rate", n,
            ">= 1.15 x tokio")
        row("same: server CPU per connection", f"cps 200{gen}", "server_cpu_us_per_op", us, "<= 1.05 x floor")
    row("1,400-byte packets echoed, 50 conns x 8 in flight: Gbit/s in", BW, "gbit_out", gb, ">= 1 x tokio")
    row("same: Gbit/s out", BW, "gbit_in", gb, ">= 1 x tokio")
    row("same: server CPU per GB moved", BW, "server_cpu_s_per_gb", sgb, "<= 1 x tokio")
    row("RSS holding 15,000 connections (churn 1000/s): KiB", "hold 15000", "rss_max_kib", n, "<= 0.2 x tokio")
    row("same: failures", "hold 15000", "failures_total", n, "0")
    for field, label, fmt, target in (("idle_cpu_pct", "idle server CPU", lambda v: f"{v:.3f} %", "~0"),
                                      ("wakeups_per_s", "same: thread wake-ups per second",
                                       lambda v: f"{v:.1f}", "")):
        vals = [med(results, ("idle", k), field) for k in ("mario",) + PEERS]
        if None in vals:
            continue
        rows.append((label, *(fmt(v) for v in vals), *(["-", "-"] * (len(PEERS) + (1 if before else 0))), target))

    cpu = "unknown"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read()).group(1)
    except Exception:
        pass
    table = ["| scenario | ours (maritcp + libmario) | tokio peer | floor (bare epoll) | ours / tokio | per round "
             "| ours / floor | per round |" + (" ours / before | per round |" if before else "") + " target |",
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if before else "") + "---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    compared = (f"\n- \"before\": `{a.compare}` (another build of maritcp), run in the same rounds;"
                " \"ours / before\" is the change's before/after ratio.") if before and getattr(a, "compare", None) else ""
    head = f"""# Benchmarks

Generated by `make bench` (`python3 benches/run.py --rounds {a.rounds}{' --quick' if a.quick else ''}`)
on {today}.

- Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; shared and noisy,
  so only ratios measured in the same run mean anything.
- Servers: `c-examples/maritcp -f` (the C sample application linked with `libmario.a`),
  `target/release/tokio-peer` (the same LOGIN and ECHO server in tokio: multi-thread runtime, a
  task per connection) and `target/bench/floor` (benches/floor/floor.c: a bare C epoll loop per
  thread with its own `SO_REUSEPORT` listener, one read and one write per event, no logging, no
  timeouts: the kernel's minimum), each with {WORKERS} workers (maritcp and tokio with a {TIMEOUT} s
  timeout), run alternately (A B C A B C) on loopback, each scenario started on a fresh server.
- Load: `target/release/mario-bench` (one process; one thread, and for the rps and cps scenarios
  also two threads, marked "2 generator threads") with `--pid` for the server's CPU time
  (utime + stime from /proc over the measured window) and RSS (max VmRSS during the run).
- Medians over {a.rounds} rounds; "per round" is ours / peer within each round's back-to-back runs
  (the spread). The bandwidth rows: "in" is what the clients send (client to server), "out" the
  echo; CPU per GB counts the bytes of both directions.{compared}

"""
    hist_start = "## History"
    old = ""
    if os.path.exists(a.out):
        txt = open(a.out).read()
        if hist_start in txt:
            old = txt.split(hist_start, 1)[1]
    if replace_today and old.lstrip("\n").startswith(f"### {today}\n"):
        # Drop the entry of the run being reported again.
        rest = old.lstrip("\n")[len(f"### {today}\n"):]
        old = rest[rest.index("\n### "):] if "\n### " in rest else ""
    entry = f"\n### {today}\n\n" + "\n".join(table) + "\n"
    notes_file = os.path.join(ROOT, "benches/NOTES.md")
    notes = open(notes_file).read() if os.path.exists(notes_file) else ""
    with open(a.out, "w") as f:
        f.write(head + "\n".join(table) + "\n\n" + PICTURES
                + "Memory per held connection (`mario-bench hold --churn 0 --sends 0`, a fresh server for each\n"
                + "size; server RSS growth over its RSS before the run, divided by the connections held):\n\n"
                + memory_table(mem) + "\n\n" + python_table(results) + haproxy_table(results) + micro_table(micro) + scale_section() + notes + "\n" + hist_start + "\n" + entry + "\n" + old.lstrip("\n"))
    print("\n".join(table))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
