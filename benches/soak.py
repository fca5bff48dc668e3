#!/usr/bin/env python3
"""make soak: 15,000 connections held against maritcp, 1,000 churned per
second and random sends, for 10 minutes (SOAK_SECONDS to change).

Passes when mario-bench counts zero failed requests and the server's RSS
and descriptor count are flat from minute 2 to the end (within 5 % + 1 MiB
and 1 % + 20 descriptors of their minute-2 values). Not part of CI.
"""
import json, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BENCH, Server, rss_kib  # noqa: E402


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    secs = int(os.environ.get("SOAK_SECONDS", "600"))
    s = Server("mario")
    pid = s.proc.pid
    cmd = [BENCH, "hold", "--addr", f"127.0.0.1:{s.port}", "--conns", "15000", "--churn", "1000",
           "--sends", "1000", "--duration", str(secs), "--rst", "--pid", str(pid), "--json-only"]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples = []
    t0 = time.time()
    while bench.poll() is None:
        time.sleep(10)
        samples.append((time.time() - t0, rss_kib(pid), fds(pid)))
        t, r, f = samples[-1]
        print(f"soak {t:6.0f} s  rss {r} KiB  fds {f}", file=sys.stderr, flush=True)
    out = bench.stdout.read()
    s.stop()
    res = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    steady = [x for x in samples if x[0] >= 120]
    ok = True
    if steady:
        r0, f0 = steady[0][1], steady[0][2]
        rmax, fmax = max(x[1] for x in steady), max(x[2] for x in steady)
        rmin, fmin = min(x[1] for x in steady), min(x[2] for x in steady)
        print(f"RSS from minute 2: {rmin}..{rmax} KiB (start {r0}); descriptors {fmin}..{fmax} (start {f0})")
        ok &= rmax <= r0 * 1.05 + 1024 and fmax <= f0 * 1.01 + 20
    failures = res.get("failures_total", sum((res.get("failures") or {}).values()) if isinstance(res.get("failures"), dict) else res.get("failures", 0))
    print(f"requests {res.get('requests')} failures {failures} held {res.get('held')} "
          f"server CPU per op {res.get('server_cpu_us_per_op')} us")
    ok &= failures == 0
    print("SOAK PASSED" if ok else "SOAK FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
