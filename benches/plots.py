#!/usr/bin/env python3
"""The pictures of BENCHMARKS.md, drawn from make bench's raw results.

    target/bench-venv/bin/python benches/plots.py target/bench-results.json benches/img

Writes, as SVG (regenerated with the tables by every `make bench`, never
edited by hand):

- rates.svg: each scenario's rate, ours / tokio / floor, as the median with
  the per-round spread (lowest to highest round) as error bars, relative to
  the floor so that scenarios of different sizes share one axis;
- latency.svg: p99 latency of the request/response scenarios, same layout;
- cpu.svg: server CPU per request / connection / GB, relative to the floor;
- memory.svg: server RSS per held connection against connections held
  (make bench's 1k to 15k, and make scale's 50k to 1M when
  benches/scale-results.json is there), ours against tokio.

Uses matplotlib (installed by `make bench` into target/bench-venv), with the
SVG output made reproducible (fixed hash salt, no date).
"""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams["svg.hashsalt"] = "mario-bench"
plt.rcParams["svg.fonttype"] = "none"
plt.rcParams["font.size"] = 9

SERVERS = (("mario", "ours (maritcp + libmario)", "#1f77b4"),
           ("tokio", "tokio peer", "#ff7f0e"),
           ("floor", "floor (bare epoll)", "#7f7f7f"))


def values(results, scen, kind, field):
    return [r[field] for r in results.get(f"{scen}|{kind}", []) if r.get(field) is not None]


def grouped(ax, results, scens, field, relative_to="floor", labels=None):
    """Bars per scenario and server: median / the reference's median, with
    the lowest and highest round as the error bar."""
    width = 0.8 / len(SERVERS)
    drawn = False
    for i, (kind, name, colour) in enumerate(SERVERS):
        meds, lo, hi, xs = [], [], [], []
        for j, scen in enumerate(scens):
            v, ref = values(results, scen, kind, field), values(results, scen, relative_to, field)
            if not v or not ref:
                continue
            r = statistics.median(ref)
            m = statistics.median(v) / r
            meds.append(m)
            lo.append(m - min(v) / r)
            hi.append(max(v) / r - m)
            xs.append(j + (i - 1) * width)
        if meds:
            drawn = True
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=name, color=colour)
    ax.set_xticks(range(len(scens)))
    ax.set_xticklabels(labels or scens, rotation=20, ha="right")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.grid(axis="y", linewidth=0.3)
    return drawn


def save(fig, out, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), metadata={"Date": None})
    plt.close(fig)


def main():
    raw, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    data = json.load(open(raw))
    results = data["results"]
    rounds = data["rounds"]
    scens = [k.split("|")[0] for k in results if k.endswith("|floor")]
    scens = [s for s in dict.fromkeys(scens) if s != "idle"]

    def relative(name, scens_of, field, ylabel, title, height=3.6):
        """One grouped-bar picture of `field` over the scenarios chosen."""
        chosen = [s for s in scens if scens_of(s)]
        fig, ax = plt.subplots(figsize=(8, height))
        labels = [s.replace(" (2 generator threads)", ", 2 gen") for s in chosen]
        if grouped(ax, results, chosen, field, labels=labels):
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend(fontsize=8)
            save(fig, out, name)
        else:
            plt.close(fig)

    # hold's rate is its fixed churn: not a measure.
    relative("rates.svg", lambda s: not s.startswith("hold"), "rate", "rate / floor's (median)",
             f"Rate per scenario, relative to the bare epoll floor ({rounds} rounds; bars: lowest to highest)")
    relative("latency.svg", lambda s: s.startswith("rps"), "p99_us", "p99 latency / floor's",
             f"p99 latency of request/response, relative to the floor ({rounds} rounds; lower is better)", 3.4)
    relative("cpu.svg", lambda s: not s.startswith("hold"), "server_cpu_us_per_op", "server CPU per op / floor's",
             "Server CPU per request, connection or packet, relative to the floor (lower is better)")

    # Memory per held connection against connections held.
    fig, ax = plt.subplots(figsize=(6, 3.4))
    drawn = False
    mem = data.get("mem", {})
    for kind, name, colour in SERVERS:
        pts = sorted((int(k.split("|")[1]), v["per_conn"]) for k, v in mem.items() if k.split("|")[0] == kind)
        if kind == "mario":
            scale = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale-results.json")
            if os.path.exists(scale):
                for run in json.load(open(scale)).get("runs", []):
                    if run.get("held_at_end") and run.get("server_rss_per_conn_b") is not None:
                        pts.append((run["held_at_end"], run["server_rss_per_conn_b"]))
                pts.sort()
        if pts:
            drawn = True
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=colour)
    if drawn:
        ax.set_xscale("log")
        ax.set_xlabel("connections held")
        ax.set_ylabel("server RSS per connection (bytes)")
        ax.set_title("Memory per held connection")
        ax.grid(linewidth=0.3)
        ax.legend(fontsize=8)
        save(fig, out, "memory.svg")


if __name__ == "__main__":
    main()
