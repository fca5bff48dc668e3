#!/usr/bin/env python3
"""make scale: hold a million connections (the seed's headline) on this machine.

One process may open only 20,000 files here (`ulimit -n`, hard), so the
connections are spread over several processes on each side, all on this
machine over loopback:

- servers: N `c-examples/maritcp -f`, each in a temporary directory of its
  own with an init.conf (PORT, WORKERNUM, CONNNUM, TIMEOUT 0, BIND 127.0.0.1,
  BACKLOG, REUSEPORT 1);
- clients: N `mario-bench hold` processes, each holding --per-process
  connections (one LOGIN each), churning and sending its share of --churn and
  --sends per second. mario-bench binds each client socket to one of 62,500
  loopback source addresses 127.0.y.z, so the 4-tuple space is not a limit.

Ports. By default all servers share one port with SO_REUSEPORT (REUSEPORT 1),
as a deployment on one service port would. The kernel then spreads
connections over the listeners by a hash of the 4-tuple, so each server gets
a binomial share: with 56 servers and ~17,860 connections per client process
the spread is about +-134 (one standard deviation), and the fullest server
ends near 18,300, well under its 20,000 descriptors. Each server is allowed
more than its share (CONNNUM 19,900 per worker: the descriptor limit is the
real cap), and the script prints each server's count after set-up so the
imbalance is visible. `--ports distinct` gives every server a port of its
own and every client one server (no hashing, exactly --per-process each).

Steps: check the machine and print every limit that applies (raising
net.core.somaxconn and net.ipv4.tcp_max_syn_backlog when writable, restored
at the end); start the servers and read the idle figures (/proc/meminfo,
/proc/slabinfo, /proc/net/sockstat, the servers' VmRSS); start the clients a
few at a time (--ramp-parallel), checking MemAvailable and fs.file-nr before
each one and stopping there if the machine is short (that is reported as
what stopped it); when every client has finished its set-up, hold for
--hold-seconds while sampling memory every 5 s; then SIGUSR1 ends every
client's measured window together and each prints its JSON (failures by
kind). The time to establish is from the first client's start to the end of
the last one's set-up (each client's `setup_s`).

    python3 benches/scale.py [--conns 1000000] [--per-process 18000]
        [--churn 5000] [--sends 5000] [--hold-seconds 120] [--workers 1]
        [--ports shared|distinct] [--markdown] [--report-only]

Writes benches/scale-results.json (one entry per size run, newest kept);
--markdown prints a BENCHMARKS.md-ready section from every size recorded
there. Bounded: a hard deadline (--deadline) kills everything; every child
dies with this script (PR_SET_PDEATHSIG), and on any exit the children are
stopped, the temporary directory is removed and the sysctls restored.
Loopback only. Not part of CI.
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/mario-bench")
MARITCP = os.path.join(ROOT, "c-examples/maritcp")
# Committed: BENCHMARKS.md (make bench) includes the latest run's section.
RESULTS = os.path.join(ROOT, "benches/scale-results.json")

# Descriptors a process needs besides its connections (listener, epoll,
# eventfds, log files, stdio; mario-bench asks for conns + 64).
FD_SLACK = 64
# What one held connection costs the machine, client and server ends
# together, for the "is there room for the next client" check: make scale
# measured ~10 KB of Slab per pair (proc fd entries included) and ~0.5 KB
# of RSS for both processes; rounded up.
EST_BYTES_PER_PAIR = 12 * 1024
SAMPLE_EVERY = 5.0
# Sysctls raised for the ramp (when writable and lower), restored at the end:
# a deep accept queue per listener, so a burst of SYNs is not dropped.
TUNE = {"net/core/somaxconn": 65535, "net/ipv4/tcp_max_syn_backlog": 65535}
BACKLOG = 65535

PROGRESS = re.compile(r"hold (\w+)\s+([\d.]+)s\s+held\s+(\d+)/(\d+).*failures (\d+)")


def log(msg):
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- readings

def read_meminfo():
    """/proc/meminfo in KiB."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def read_slabinfo():
    """{cache: bytes held (num_objs * objsize)}, or None when unreadable;
    the object sizes under the key "@objsize"."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return None
    out, size = {}, {}
    for line in lines:
        p = line.split()
        if len(p) > 4:
            out[p[0]] = int(p[2]) * int(p[3])
            size[p[0]] = int(p[3])
    out["@objsize"] = size
    return out


def read_sockstat():
    """The TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem (pages)."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    p = line.split()[1:]
                    return {p[i]: int(p[i + 1]) for i in range(0, len(p) - 1, 2)}
    except OSError:
        pass
    return {}


# TCP counters (/proc/net/netstat TcpExt, /proc/net/snmp Tcp) whose growth
# during a run says where connections were lost: accept queues full, SYNs
# retransmitted, memory pressure, ...
NET_KEYS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPReqQFullDoCookies", "SyncookiesSent",
            "TCPSynRetrans", "TCPTimeouts", "TCPBacklogDrop", "TCPMemoryPressures", "TCPAbortOnMemory",
            "TCPRcvQDrop", "PruneCalled", "AttemptFails", "EstabResets", "RetransSegs", "InErrs")


def read_net_counters():
    out = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for head, vals in zip(lines[::2], lines[1::2]):
            keys, nums = head.split()[1:], vals.split()[1:]
            if head.split()[0] in ("TcpExt:", "Tcp:"):
                out.update({k: int(v) for k, v in zip(keys, nums) if k in NET_KEYS})
    # Packets dropped because a CPU's input backlog (net.core.netdev_max_backlog)
    # was full: on loopback every packet goes through it.
    try:
        with open("/proc/net/softnet_stat") as f:
            rows = [l.split() for l in f]
        out["softnet_dropped"] = sum(int(r[1], 16) for r in rows)
        out["softnet_squeezed"] = sum(int(r[2], 16) for r in rows)
    except (OSError, IndexError, ValueError):
        pass
    return out


def sysctl(path):
    """A /proc/sys value as text (None when absent), e.g. sysctl('fs/file-max')."""
    try:
        with open("/proc/sys/" + path) as f:
            return f.read().strip()
    except OSError:
        return None


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def file_nr():
    """(files allocated, fs.file-max) from fs.file-nr."""
    a, _, m = sysctl("fs/file-nr").split()
    return int(a), int(m)


def conntrack_count():
    v = sysctl("net/netfilter/nf_conntrack_count")
    return int(v) if v is not None else None


def machine_limits():
    """Every limit that bears on holding many connections, as found."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    mem = read_meminfo()
    return {
        "ulimit_n_soft": soft, "ulimit_n_hard": hard,
        "fs.file-max": int(sysctl("fs/file-max")), "fs.nr_open": int(sysctl("fs/nr_open")),
        "fs.file-nr": sysctl("fs/file-nr"),
        "net.ipv4.ip_local_port_range": sysctl("net/ipv4/ip_local_port_range"),
        "net.core.somaxconn": sysctl("net/core/somaxconn"),
        "net.ipv4.tcp_max_syn_backlog": sysctl("net/ipv4/tcp_max_syn_backlog"),
        "net.ipv4.tcp_mem": sysctl("net/ipv4/tcp_mem"),
        "net.ipv4.tcp_rmem": sysctl("net/ipv4/tcp_rmem"),
        "net.ipv4.tcp_wmem": sysctl("net/ipv4/tcp_wmem"),
        "net.ipv4.tcp_ehash_entries": sysctl("net/ipv4/tcp_ehash_entries"),
        "net.ipv4.tcp_max_tw_buckets": sysctl("net/ipv4/tcp_max_tw_buckets"),
        "net.netfilter.nf_conntrack_max": sysctl("net/netfilter/nf_conntrack_max"),
        "net.netfilter.nf_conntrack_count": sysctl("net/netfilter/nf_conntrack_count"),
        "kernel.pid_max": sysctl("kernel/pid_max"),
        "MemTotal_kib": mem["MemTotal"], "MemAvailable_kib": mem["MemAvailable"],
        "cpus": os.cpu_count(), "loadavg": open("/proc/loadavg").read().split()[:3],
        "slabinfo_readable": read_slabinfo() is not None,
        "nf_conntrack_objsize": (read_slabinfo() or {}).get("@objsize", {}).get("nf_conntrack"),
    }


# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup():
    """In each child before exec: die with this script (SIGKILL when it
    goes, however it goes), and the soft descriptor limit at the hard one."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(cmd, cwd, out, err):
    with open(out, "w") as o, open(err, "w") as e:
        return subprocess.Popen(cmd, cwd=cwd, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                preexec_fn=_child_setup)


def stop(procs, sig, wait_s):
    """Signal every live process of `procs` (Popen objects we started), then
    wait up to wait_s in all; SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except OSError:
                pass
    end = time.time() + wait_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def server_messages(servers):
    """The servers' warnings and errors (maritcp logs them on stderr), each
    kind once with how many servers logged it how often; times and counts
    inside the line are dropped so that equal kinds group."""
    kinds = {}
    for x in servers:
        text = tail(os.path.join(x.dir, "stderr.txt"), 200000) + tail(x.out, 200000)
        for line in text.splitlines():
            if "[ERROR]" in line or "[WARN" in line:
                k = re.sub(r"\d+", "N", re.sub(r"^\[[^]]*\]\s*", "", line))[:160]
                kinds[k] = kinds.get(k, 0) + 1
    return kinds


class Stopped(Exception):
    """The run cannot go on (deadline, a child died, memory): the reason."""


class Server:
    def __init__(self, base, i, port, workers, connnum):
        self.dir = os.path.join(base, f"server-{i:03}")
        os.mkdir(self.dir)
        self.port = port
        with open(os.path.join(self.dir, "init.conf"), "w") as f:
            f.write(f"PORT {port}\nBIND 127.0.0.1\nTIMEOUT 0\nWORKERNUM {workers}\nCONNNUM {connnum}\n"
                    f"BACKLOG {BACKLOG}\nREUSEPORT 1\n")
        self.out = os.path.join(self.dir, "stdout.txt")
        self.proc = spawn([MARITCP, "-f"], self.dir, self.out, os.path.join(self.dir, "stderr.txt"))

    def started(self):
        return "start server ok" in tail(self.out, 100000)


class Client:
    def __init__(self, base, i, port, conns, churn, sends, duration):
        self.i, self.port, self.conns = i, port, conns
        self.cmd = [BENCH, "hold", "--addr", f"127.0.0.1:{port}", "--conns", str(conns), "--churn", str(churn),
                    "--sends", str(sends), "--duration", str(int(duration)), "--rst", "--json-only"]
        self.out = os.path.join(base, f"client-{i:03}.json")
        self.err = os.path.join(base, f"client-{i:03}.txt")
        self.proc = None
        self.t_start = None
        self.progress = None  # (phase, elapsed, held, target, failures)
        self.exited = None  # why it ended before the hold did

    def start(self):
        self.t_start = time.time()
        self.proc = spawn(self.cmd, ROOT, self.out, self.err)

    def poll_progress(self):
        """The last per-second progress line on its stderr."""
        m = None
        for m in PROGRESS.finditer(tail(self.err, 600)):
            pass
        if m:
            self.progress = (m.group(1), float(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
        return self.progress

    def measuring(self):
        p = self.poll_progress()
        return p is not None and p[0] == "measure"

    def result(self):
        for line in reversed(tail(self.out, 100000).splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return None


def split(total, n):
    """total split into n integers that add up to it."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


# ---------------------------------------------------------------- the run

class Run:
    def __init__(self, a):
        self.a = a
        self.base = tempfile.mkdtemp(prefix="mario-scale-")
        self.servers, self.clients = [], []
        self.changed = {}  # sysctl path -> old value
        self.deadline = time.time() + a.deadline
        self.samples = []
        self.slab_during = None
        self.net0 = None

    def check_time(self, what):
        if time.time() > self.deadline:
            raise Stopped(f"deadline: --deadline {self.a.deadline} s passed during {what}")

    def check_alive(self):
        for s in self.servers:
            if s.proc.poll() is not None:
                raise Stopped(f"server {s.dir} exited ({s.proc.returncode}): {tail(s.out, 400)!r}")
        for c in self.clients:
            if c.proc is not None and c.proc.poll() is not None and c.exited is None:
                # Not the end of the run: its connections count as failed,
                # the others go on and report theirs.
                c.exited = f"exit {c.proc.returncode}: {tail(c.err, 200).strip().splitlines()[-1]}"
                log(f"client {c.i} exited early ({c.exited}); its {c.conns:,} connections count as failed")

    # -- sysctls
    def tune(self):
        for path, want in TUNE.items():
            old = sysctl(path)
            if old is None or int(old) >= want:
                continue
            try:
                with open("/proc/sys/" + path, "w") as f:
                    f.write(str(want))
                self.changed[path] = old
                log(f"sysctl {path.replace('/', '.')}: {old} -> {want} (restored at the end)")
            except OSError as e:
                log(f"sysctl {path.replace('/', '.')} stays {old}: not writable ({e.strerror})")

    def restore(self):
        for path, old in self.changed.items():
            try:
                with open("/proc/sys/" + path, "w") as f:
                    f.write(old)
                log(f"sysctl {path.replace('/', '.')} restored to {old}")
            except OSError as e:
                log(f"could not restore {path}: {e}")
        self.changed = {}

    def diagnose(self):
        """What the machine looked like when the run stopped: listeners'
        accept queues, socket states, the servers' warnings, counters."""
        try:
            lines = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=30).stdout.splitlines()
            ports = {str(x.port) for x in self.servers}
            queues = sorted(int(l.split()[1]) for l in lines if l.split()[3].rsplit(":", 1)[-1] in ports)
            if queues:
                log(f"listeners' accept queues (Recv-Q): max {queues[-1]}, median {queues[len(queues) // 2]}, "
                    f"{sum(1 for q in queues if q > 0)} of {len(queues)} non-empty")
            summ = subprocess.run(["ss", "-s"], capture_output=True, text=True, timeout=30).stdout
            log("ss -s: " + " | ".join(l.strip() for l in summ.splitlines()[:3]))
        except (OSError, subprocess.SubprocessError, IndexError, ValueError) as e:
            log(f"ss: {e}")
        log(f"servers' messages: {server_messages(self.servers) or 'none'}")
        if self.samples:
            self.sample("stop")
            self.show(self.samples[-1])

    def cleanup(self):
        """Whatever happened: children stopped, sysctls restored, files gone."""
        stop([c.proc for c in self.clients if c.proc], signal.SIGKILL, 10)
        stop([s.proc for s in self.servers], signal.SIGKILL, 10)
        self.restore()
        if self.a.keep:
            log(f"kept {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- measurements
    def sample(self, phase):
        mem = read_meminfo()
        held = sum((c.poll_progress() or (0, 0, 0, 0, 0))[2] for c in self.clients if c.proc)
        fails = sum((c.progress or (0, 0, 0, 0, 0))[4] for c in self.clients if c.proc)
        s = {"t": round(time.time() - self.t0, 1), "phase": phase, "held": held, "failures": fails,
             "MemAvailable": mem["MemAvailable"], "Slab": mem["Slab"], "SUnreclaim": mem["SUnreclaim"],
             "server_rss_kib": sum(rss_kib(x.proc.pid) for x in self.servers),
             "client_rss_kib": sum(rss_kib(c.proc.pid) for c in self.clients if c.proc),
             "sockstat": read_sockstat(), "conntrack": conntrack_count(), "file_nr": file_nr()[0]}
        net = read_net_counters()
        if self.net0 is None:
            self.net0 = net
        s["net"] = {k: net[k] - self.net0.get(k, 0) for k in net if net[k] != self.net0.get(k, 0)}
        self.samples.append(s)
        return s

    def show(self, s):
        log(f"{s['phase']:5} t {s['t']:6.1f}s held {s['held']:>9,} failures {s['failures']} "
            f"MemAvailable {s['MemAvailable'] / 1048576:5.2f} GiB Slab {s['Slab'] / 1048576:5.2f} GiB "
            f"server RSS {s['server_rss_kib'] / 1024:7.1f} MiB client RSS {s['client_rss_kib'] / 1024:7.1f} MiB "
            f"TCP inuse {s['sockstat'].get('inuse', '?')}" + (f" {s['net']}" if s["net"] else ""))

    def room_for(self, conns):
        """None if the machine has room for `conns` more pairs, else why not."""
        avail = read_meminfo()["MemAvailable"] * 1024
        need = self.a.min_available_gb * 2**30 + conns * EST_BYTES_PER_PAIR
        if avail < need:
            return (f"memory: MemAvailable {avail / 2**30:.2f} GiB, under {self.a.min_available_gb} GiB "
                    f"+ {conns * EST_BYTES_PER_PAIR / 2**30:.2f} GiB for {conns:,} more pairs")
        used, fmax = file_nr()
        if used + 2 * conns + 1000 > fmax:
            return f"fs.file-max: {used:,} files open of {fmax:,}, {2 * conns:,} more needed"
        return None

    def settle(self):
        """Waits (up to 120 s) while the kernel is still freeing sockets, of
        an earlier run say: the idle figures are the baseline of every
        per-connection figure."""
        t, last = time.time(), read_sockstat().get("alloc", 0)
        while last > 20000 and time.time() - t < 120:
            time.sleep(3)
            now = read_sockstat().get("alloc", 0)
            if now >= last:  # not falling: someone else's, wait no longer
                break
            last = now
        if last > 20000:
            log(f"{last:,} TCP sockets allocated before the start (not ours): the idle baseline includes them")

    def go(self):
        a = self.a
        self.settle()
        n = math.ceil(a.conns / a.per_process)
        per = split(a.conns, n)
        churn, sends = split(a.churn, n), split(a.sends, n)
        limits = machine_limits()
        self.limits = limits
        print_limits(limits, a, n, per)
        hard = limits["ulimit_n_hard"]
        if max(per) + FD_SLACK > hard:
            raise SystemExit(f"--per-process {a.per_process}: a client needs {max(per) + FD_SLACK} descriptors, "
                             f"the limit is {hard}")
        if a.tune:
            self.tune()

        # Servers: one port shared by all (SO_REUSEPORT), or one each.
        shared = free_port()
        connnum = max(hard - FD_SLACK, max(per) + FD_SLACK)
        for i in range(n):
            self.check_time("server start")
            port = shared if a.ports == "shared" else free_port()
            self.servers.append(Server(self.base, i, port, a.workers, connnum))
        t = time.time()
        while not all(s.started() for s in self.servers):
            self.check_alive()
            if time.time() - t > 30:
                raise Stopped("servers did not start in 30 s")
            time.sleep(0.1)
        log(f"{n} servers up ({a.workers} worker(s) each, CONNNUM {connnum} per worker, "
            f"{'port ' + str(shared) + ' shared (SO_REUSEPORT)' if a.ports == 'shared' else 'a port each'})")
        time.sleep(2)
        self.t0 = time.time()
        idle = self.sample("idle")
        self.idle, self.slab_idle, self.fds_idle = idle, read_slabinfo(), [fd_count(s.proc.pid) for s in self.servers]
        self.show(idle)

        # Clients, --ramp-parallel at a time in set-up; the machine checked
        # before each. Each gets --duration long enough to outlive the run:
        # SIGUSR1 ends them all together.
        life = a.deadline + 60
        for i in range(n):
            self.clients.append(Client(self.base, i, self.servers[i].port, per[i], churn[i], sends[i], life))
        self.stopped_by = None
        pending = list(self.clients)
        last_show = 0
        while pending or any(c.proc and not c.exited and not c.measuring() for c in self.clients):
            self.check_time("the ramp")
            self.check_alive()
            if time.time() - self.t0 > a.ramp_timeout:
                raise Stopped(f"time: the ramp took over --ramp-timeout {a.ramp_timeout} s")
            setting_up = [c for c in self.clients if c.proc and not c.exited and not c.measuring()]
            if pending and len(setting_up) < a.ramp_parallel and not self.stopped_by:
                why = self.room_for(pending[0].conns)
                if why:
                    self.stopped_by = why
                    log(f"not starting more clients: {why}")
                    pending = []
                else:
                    pending.pop(0).start()
                    continue
            if time.time() - last_show >= SAMPLE_EVERY:
                last_show = time.time()
                s = self.sample("ramp")
                self.show(s)
                if s["MemAvailable"] < a.min_available_gb * 1048576 and pending:
                    self.stopped_by = f"memory: MemAvailable {s['MemAvailable'] / 1048576:.2f} GiB during the ramp"
                    pending = []
            time.sleep(0.2)
        started = [c for c in self.clients if c.proc]
        self.clients = started
        target = sum(c.conns for c in started)
        log(f"all {len(started)} clients set up: {sum((c.progress or (0, 0, 0))[2] for c in started):,} "
            f"of {target:,} held")

        # The hold: every client churning and sending; sampled every 5 s.
        t_hold = time.time()
        next_sample = t_hold
        while time.time() - t_hold < a.hold_seconds:
            self.check_time("the hold")
            self.check_alive()
            if time.time() >= next_sample:
                next_sample += SAMPLE_EVERY
                s = self.sample("hold")
                self.slab_during = read_slabinfo()  # the last one of the hold is kept
                self.show(s)
                if s["MemAvailable"] < a.min_available_gb * 1048576 / 2:
                    self.stopped_by = f"memory: MemAvailable {s['MemAvailable'] / 1048576:.2f} GiB during the hold"
                    log(f"ending the hold early: {self.stopped_by}")
                    break
            time.sleep(min(0.5, max(0.0, next_sample - time.time())))
        self.hold_s = time.time() - t_hold
        # Connections per server, from their descriptors. Only now: listing
        # /proc/PID/fd makes a proc inode and a dentry per descriptor, which
        # would count as kernel memory of the connections in the samples.
        self.balance = [fd_count(s.proc.pid) - f0 for s, f0 in zip(self.servers, self.fds_idle)]
        # Every client ends its window now, drains and prints its JSON.
        stop([c.proc for c in started], signal.SIGUSR1, 60)
        self.results = [c.result() for c in started]
        t = time.time()
        stop([s.proc for s in self.servers], signal.SIGTERM, 30)
        log(f"servers stopped in {time.time() - t:.1f} s")
        time.sleep(2)
        self.after = read_meminfo()
        return self.summarize(target)

    def summarize(self, target):
        a, idle = self.a, self.idle
        hold = [s for s in self.samples if s["phase"] == "hold"]
        if not hold:
            raise Stopped("no sample was taken during the hold")
        med = lambda k: statistics.median(x[k] for x in hold)
        missing = [c.i for c, r in zip(self.clients, self.results) if r is None]
        res = [r for r in self.results if r]
        exits = {c.i: c.exited for c in self.clients if c.exited}
        held_end = sum(r["held"] for r in res)
        held = statistics.median(x["held"] for x in hold)
        fails = {}
        for r in res:
            for k, v in r["failures"].items():
                fails[k] = fails.get(k, 0) + v
        lost = sum(c.conns for c, r in zip(self.clients, self.results) if r is None)
        if lost:
            fails["client without JSON"] = lost
        # Time to establish: first client's start to the end of the last set-up.
        t_first = min(c.t_start for c in self.clients)
        ends = [c.t_start + r["setup_s"] for c, r in zip(self.clients, self.results) if r]
        establish = max(ends) - t_first if ends else None
        caches = {}
        if self.slab_idle and self.slab_during:
            for k in set(self.slab_idle) | set(self.slab_during):
                if k == "@objsize":
                    continue
                d = self.slab_during.get(k, 0) - self.slab_idle.get(k, 0)
                if d > 0:
                    caches[k] = d
        # Whatever lists a process's /proc/PID/fd (lsof, a monitoring agent:
        # on this machine something does, every few seconds) leaves a proc
        # inode and a dentry cached per descriptor. That is not the
        # connections' own memory: counted apart.
        procfs_b = 0
        if caches.get("proc_inode_cache"):
            size = self.slab_during["@objsize"]
            n_inodes = caches["proc_inode_cache"] / size["proc_inode_cache"]
            procfs_b = caches["proc_inode_cache"] + n_inodes * size.get("dentry", 192)
        slab_delta_b = (med("Slab") - idle["Slab"]) * 1024
        per_conn = lambda kib: kib * 1024 / held if held else None
        out = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "conns_target": a.conns, "conns_started": target, "held_median_during_hold": held,
            "held_at_end": held_end, "servers": len(self.servers), "clients": len(self.clients),
            "per_process": a.per_process, "workers": a.workers, "ports": a.ports, "ramp_parallel": a.ramp_parallel,
            "churn_per_s": a.churn, "sends_per_s": a.sends, "hold_s": round(self.hold_s, 1),
            "establish_s": round(establish, 2) if establish else None,
            "establish_rate": round(target / establish) if establish else None,
            "failures_total": sum(fails.values()), "failures": fails,
            "setup_failures": sum(r["setup_failures"] for r in res), "clients_without_json": missing,
            "client_exits": exits,
            "failures_by_client": {c.i: r["failures_total"] for c, r in zip(self.clients, self.results)
                                   if r and r["failures_total"]},
            "server_messages": server_messages(self.servers),
            "requests": sum(r["requests"] for r in res), "reconnects": sum(r["reconnects"] for r in res),
            "send_rate": round(sum(r["rate"] for r in res)), "churn_rate": round(sum(r["churn_rate"] for r in res)),
            "skipped": sum(r["skipped_sends"] + r["skipped_churn"] for r in res),
            "p99_us_max": max((r["p99_us"] or 0) for r in res) if res else None,
            "churn_p99_us_max": max((r["churn_p99_us"] or 0) for r in res) if res else None,
            "server_rss_idle_kib": idle["server_rss_kib"], "server_rss_hold_kib": med("server_rss_kib"),
            "server_rss_per_conn_b": per_conn(med("server_rss_kib") - idle["server_rss_kib"]),
            "client_rss_hold_kib": med("client_rss_kib"), "client_rss_per_conn_b": per_conn(med("client_rss_kib")),
            "slab_idle_kib": idle["Slab"], "slab_hold_kib": med("Slab"),
            "slab_per_pair_b": per_conn(med("Slab") - idle["Slab"]),
            "procfs_per_pair_b": procfs_b / held if held else None,
            "kernel_own_per_pair_b": max(0.0, slab_delta_b - procfs_b) / held if held else None,
            "sunreclaim_per_pair_b": per_conn(med("SUnreclaim") - idle["SUnreclaim"]),
            "memavailable_drop_per_pair_b": per_conn(idle["MemAvailable"] - med("MemAvailable")),
            "slab_after_kib": self.after["Slab"],
            "slab_caches_per_pair_b": {k: round(v / held, 1) for k, v in sorted(caches.items(), key=lambda x: -x[1])
                                       if v / held >= 8} if held else {},
            "tcp_inuse_hold": statistics.median(x["sockstat"].get("inuse", 0) for x in hold),
            "tcp_mem_pages_hold_max": max(x["sockstat"].get("mem", 0) for x in hold),
            "conntrack_max_seen": max((x["conntrack"] or 0) for x in self.samples),
            "tcp_counters": self.samples[-1]["net"],
            "server_conns_min": min(self.balance), "server_conns_max": max(self.balance),
            "stopped_by": self.stopped_by, "limits": self.limits,
            "sysctls_changed": {k.replace("/", "."): [v, str(TUNE[k])] for k, v in self.changed.items()},
            "samples": self.samples,
        }
        return out


def print_limits(lim, a, n, per):
    log("what limits apply here:")
    rows = [
        ("ulimit -n (soft/hard)", f"{lim['ulimit_n_soft']:,} / {lim['ulimit_n_hard']:,}",
         f"each process holds at most ~{lim['ulimit_n_hard'] - FD_SLACK:,} connections -> {n} servers + {n} clients "
         f"of {max(per):,}"),
        ("fs.file-max", f"{lim['fs.file-max']:,}", f"{2 * a.conns:,} socket files needed (both ends)"),
        ("fs.nr_open", f"{lim['fs.nr_open']:,}", "the most one process could be given (ulimit -n)"),
        ("fs.file-nr", lim["fs.file-nr"], "files allocated now"),
        ("net.ipv4.ip_local_port_range", lim["net.ipv4.ip_local_port_range"],
         "per (source address, server address:port); clients spread over 62,500 sources"),
        ("net.core.somaxconn", lim["net.core.somaxconn"], f"accept queue cap (servers ask {BACKLOG})"),
        ("net.ipv4.tcp_max_syn_backlog", lim["net.ipv4.tcp_max_syn_backlog"], "half-open queue"),
        ("net.ipv4.tcp_mem (pages)", lim["net.ipv4.tcp_mem"], "socket buffer memory, machine-wide"),
        ("net.ipv4.tcp_ehash_entries", lim["net.ipv4.tcp_ehash_entries"], "established hash buckets"),
        ("nf_conntrack max / count", f"{lim['net.netfilter.nf_conntrack_max']} / "
         f"{lim['net.netfilter.nf_conntrack_count']}", "a limit only if connections are tracked"),
        ("kernel.pid_max", lim["kernel.pid_max"], "threads of all processes"),
        ("memory", f"{lim['MemTotal_kib'] / 1048576:.1f} GiB, {lim['MemAvailable_kib'] / 1048576:.1f} GiB available",
         f"~{EST_BYTES_PER_PAIR * a.conns / 2**30:.1f} GiB budgeted for {a.conns:,} pairs"),
        ("cpus / load", f"{lim['cpus']} / {' '.join(lim['loadavg'])}", "others may be running benchmarks too"),
        ("/proc/slabinfo", "readable" if lim["slabinfo_readable"] else "not readable", "per-cache breakdown"),
    ]
    for name, val, why in rows:
        log(f"  {name:30} {str(val):34} {why}")


# ---------------------------------------------------------------- report

def summary(r):
    f = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
    lines = [
        f"connections held        {f(r['held_median_during_hold'])} of {r['conns_target']:,} "
        f"({r['servers']} servers, {r['clients']} clients, {r['ports']} port(s), {r['workers']} worker(s) each)",
        f"time to establish       {f(r['establish_s'], 1)} s ({f(r['establish_rate'])} connections/s)",
        f"hold                    {r['hold_s']} s, churn {f(r['churn_rate'])}/s, sends {f(r['send_rate'])}/s, "
        f"p99 {f(r['p99_us_max'])} us (worst client), reconnect p99 {f(r['churn_p99_us_max'])} us",
        f"failures                {r['failures_total']} {r['failures']} (set-up {r['setup_failures']}), "
        f"skipped {r['skipped']}, clients without JSON {r['clients_without_json']}",
        f"server RSS              {f(r['server_rss_idle_kib'] / 1024, 1)} MiB idle -> "
        f"{f(r['server_rss_hold_kib'] / 1024, 1)} MiB: {f(r['server_rss_per_conn_b'])} B per connection",
        f"client RSS              {f(r['client_rss_hold_kib'] / 1024, 1)} MiB: "
        f"{f(r['client_rss_per_conn_b'])} B per connection",
        f"kernel (Slab)           {f(r['slab_idle_kib'] / 1048576, 2)} GiB idle -> "
        f"{f(r['slab_hold_kib'] / 1048576, 2)} GiB: {f(r['slab_per_pair_b'])} B per connection pair "
        f"(unreclaimable {f(r['sunreclaim_per_pair_b'])} B); {f(r['slab_after_kib'] / 1048576, 2)} GiB after",
        f"  of which /proc fd     {f(r['procfs_per_pair_b'])} B per pair (proc inodes + dentries of whatever lists "
        f"/proc/PID/fd); the connections' own: {f(r['kernel_own_per_pair_b'])} B per pair",
        f"MemAvailable drop       {f(r['memavailable_drop_per_pair_b'])} B per pair (kernel + both processes)",
        f"slab caches per pair    " + ", ".join(f"{k} {v:,.0f}" for k, v in r["slab_caches_per_pair_b"].items()),
        f"per server (end of hold) {r['server_conns_min']:,} .. {r['server_conns_max']:,} connections",
        f"TCP inuse {f(r['tcp_inuse_hold'])}, TCP buffer pages max {r['tcp_mem_pages_hold_max']}, "
        f"conntrack entries max {r['conntrack_max_seen']}",
        f"TCP counters grown      {r['tcp_counters'] or 'none'}",
        f"failures by client      {r['failures_by_client'] or 'none'}; early exits {r['client_exits'] or 'none'}",
        f"servers' messages       {r['server_messages'] or 'none'}",
        f"stopped by              {r['stopped_by'] or 'nothing: every planned connection was held'}",
        f"sysctls changed         {r['sysctls_changed'] or 'none'}",
    ]
    return "\n".join(lines)


def markdown(runs):
    """A BENCHMARKS.md section from every size recorded (smallest first),
    with what 1 M and 10 M need, from the largest clean run's figures."""
    runs = sorted(runs, key=lambda r: r["conns_target"])
    rows = ["| connections held | servers + clients | time to establish | server RSS per conn. "
            "| kernel (Slab) per pair | of it, /proc fd entries | the connections' own, per pair "
            "| churn / sends per s, hold | failures |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r['held_median_during_hold']:,.0f} of {r['conns_target']:,} | {r['servers']} + {r['clients']} "
                    f"| {r['establish_s']:.1f} s ({r['establish_rate']:,}/s) | {r['server_rss_per_conn_b']:,.0f} B "
                    f"| {r['slab_per_pair_b']:,.0f} B | {r['procfs_per_pair_b']:,.0f} B "
                    f"| {r['kernel_own_per_pair_b']:,.0f} B "
                    f"| {r['churn_rate']:,} / {r['send_rate']:,}, {r['hold_s']:.0f} s | {r['failures_total']} |")
    clean = [r for r in runs if r["failures_total"] == 0] or runs
    big = clean[-1]
    # A server holds one end of each connection: half the pair's objects
    # (the client's end also has a bind bucket, a few dozen bytes).
    end = big["kernel_own_per_pair_b"] / 2
    rss = big["server_rss_per_conn_b"]
    shown = {k: v for k, v in big["slab_caches_per_pair_b"].items() if v >= 30}
    caches = ", ".join(f"{k} {v:,.0f} B" for k, v in shown.items())
    lim = big["limits"]
    gib = lambda b: f"{b / 2**30:,.1f} GiB"
    buf = 0.01 * 16384  # planning assumption: 1 in 100 connections with 16 KiB queued
    ct = (big["limits"].get("nf_conntrack_objsize") or 256)
    tcp_mem = " ".join(f"{int(x):,}" for x in lim["net.ipv4.tcp_mem"].split())
    per_m = end + rss
    ten = 1e7 * (end + rss + buf)
    fit = lambda n: 2 ** math.ceil(math.log2(n * (end + rss + buf) * 1.25 / 2**30))  # GiB, a quarter to spare
    machine, one = fit(1e7), fit(1e6)
    plan = ["| | 1 M connections | 10 M connections |", "|---|---|---|",
            f"| kernel, idle connections ({end:,.0f} B each: half a measured pair) | {gib(1e6 * end)} "
            f"| {gib(1e7 * end)} |",
            f"| libmario RSS ({rss:,.0f} B each, measured) | {gib(1e6 * rss)} | {gib(1e7 * rss)} |",
            f"| socket buffers if 1 in 100 has 16 KiB queued (assumed) | {gib(1e6 * buf)} | {gib(1e7 * buf)} |",
            f"| /proc fd entries, if an agent lists descriptors ({big['procfs_per_pair_b'] / 2:,.0f} B each) "
            f"| {gib(5e5 * big['procfs_per_pair_b'])} | {gib(5e6 * big['procfs_per_pair_b'])} |",
            "| descriptors | `ulimit -n` (systemd `LimitNOFILE`) of 1,000,000 + slack: one process fits under "
            "the default `fs.nr_open` 1,048,576 | raise `fs.nr_open` and `ulimit -n` past 10,000,000, or run 10+ "
            "processes with `REUSEPORT 1`; `fs.file-max` above the total either way |",
            f"| conntrack entries, only if a firewall tracks the connections ({ct} B objects here) "
            f"| {gib(1e6 * ct)} | {gib(1e7 * ct)} |",
            "| TCP established hash (`tcp_ehash_entries`, `thash_entries=` at boot) | 1 M buckets | 8-16 M buckets |",
            "| a balancer in front, per backend ip:port (default port range: 28,232 ports per source address) "
            "| 36 source addresses | 355 source addresses |"]
    stopped = (f"What stopped it: {big['stopped_by']}." if big["stopped_by"]
               else "Nothing stopped it short of the planned count.")
    return f"""## Holding a million connections (`make scale`)

`make scale` (`python3 benches/scale.py`, {big['date']}) holds the connections with client and server ends both
on this machine (2 cores, {lim['MemTotal_kib'] / 1048576:.0f} GiB, loopback). One process may open only
{lim['ulimit_n_hard']:,} files here, so the connections are spread over several `maritcp` processes ({big['workers']}
worker each) sharing one port with `REUSEPORT 1` (the kernel hashes each connection to one of them) and as many
`mario-bench hold` processes (one LOGIN per connection, bound to 62,500 loopback source addresses). The clients
start {big.get('ramp_parallel', 3)} at a time; when all are set up, all of them churn (close with a RST and reopen with a LOGIN) and send
their shares of the totals below for the hold, then SIGUSR1 ends them together and each reports its failures.
"Time to establish" runs from the first client's start to the end of the last one's set-up. Server RSS per
connection is the servers' summed VmRSS during the hold (median of 5 s samples) less their idle RSS, over the
connections held. The kernel's is the growth of `Slab` (/proc/meminfo) over the same idle point, for a **pair**
(client and server end: two sockets, two files, two epoll items). Part of it is not the connections': something
on this machine lists every process's `/proc/PID/fd` every few seconds, which leaves a proc inode and a dentry
cached per descriptor (`proc_inode_cache`); that part is shown apart. Other benchmarks may share the machine.

{chr(10).join(rows)}

Largest clean run ({big['held_median_during_hold']:,.0f} connections): slab caches that grew, per pair
(`/proc/slabinfo`; SLUB may merge small caches into kmalloc-*): {caches}. The servers held
{big['server_conns_min']:,} to {big['server_conns_max']:,} connections each at the end of the hold (SO_REUSEPORT
hashing). `net.core.somaxconn` and `net.ipv4.tcp_max_syn_backlog` were raised to 65,535 for the run and restored;
socket buffer memory (`/proc/net/sockstat` `mem`) peaked at {big['tcp_mem_pages_hold_max']:,} pages, and
conntrack held {big['conntrack_max_seen']} entries (no firewall rules on loopback). {stopped}

**What 1 M and 10 M connections need on a real server.** A server holds one end of each connection, so its
kernel cost is about half a pair: {end:,.0f} B for an idle connection (TCP socket, socket inode, file, dentry,
epoll item), plus socket buffers only while data waits (at most `tcp_rmem`/`tcp_wmem` per socket, all sockets
together capped by `net.ipv4.tcp_mem`, here {tcp_mem} pages). libmario adds {rss:,.0f} B of RSS
per connection; the application's own per-user state comes on top.

{chr(10).join(plan)}

So idle connections cost {gib(1e6 * per_m)} per million on the server, kernel and RSS together: 1 M fit in
a server of {one} GiB next to a modest application, 10 M need about {gib(ten)} with the buffer allowance, a
{machine} GiB machine before the application's own data. Here 2,000,000 sockets shared
{int(lim['net.ipv4.tcp_ehash_entries']):,} established-hash buckets (chains of about 8) without trouble. If a firewall tracks connections,
`net.netfilter.nf_conntrack_max` must exceed the count (here {int(lim['net.netfilter.nf_conntrack_max']):,}, which would
have stopped this run at a quarter of a million had loopback been tracked). Clients connecting directly each
bring their own address and need no port planning; a balancer or proxy opening the connections to the server
needs one source address (or backend port) per 28,232 connections with the default `ip_local_port_range`
(32768-60999; about 64,500 with 1024-65535). A reconnect storm after a restart: at the rate measured here,
with client and server sharing 2 cores, {(1e6 / big['establish_rate']) if big['establish_rate'] else 0:,.0f} s
per million.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=1_000_000, help="connections in all (default 1,000,000)")
    ap.add_argument("--per-process", type=int, default=18_000,
                    help="connections per server and per client process (<= ulimit -n less 64)")
    ap.add_argument("--churn", type=int, default=5000, help="connections closed and reopened per second, in all")
    ap.add_argument("--sends", type=int, default=5000, help="requests sent per second on held connections, in all")
    ap.add_argument("--hold-seconds", type=float, default=120)
    ap.add_argument("--workers", type=int, default=1, choices=(1, 2), help="worker threads per server")
    ap.add_argument("--ports", choices=("shared", "distinct"), default="shared",
                    help="one port for all servers (SO_REUSEPORT) or one each")
    ap.add_argument("--ramp-parallel", type=int, default=3, help="clients in set-up at once")
    ap.add_argument("--ramp-timeout", type=float, default=900, help="seconds the servers and clients may take to start")
    ap.add_argument("--min-available-gb", type=float, default=2.0,
                    help="start no more clients once MemAvailable would drop under this")
    ap.add_argument("--deadline", type=float, default=1800, help="hard limit on the whole run, seconds")
    ap.add_argument("--no-tune", dest="tune", action="store_false", help="change no sysctl")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md section from the saved results")
    ap.add_argument("--report-only", action="store_true", help="run nothing: print what is saved")
    ap.add_argument("--results", default=RESULTS)
    a = ap.parse_args()

    saved = []
    if os.path.exists(a.results):
        with open(a.results) as f:
            saved = json.load(f).get("runs", [])
    if a.report_only:
        for r in saved:
            print(summary(r) + "\n")
        if a.markdown and saved:
            print(markdown(saved))
        return 0
    for path in (BENCH, MARITCP):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{path} is missing: make scale builds it")

    run = Run(a)
    # SIGTERM/SIGINT/SIGHUP and the hard deadline all end in the cleanup below.
    def on_signal(sig, _frame):
        raise Stopped(f"signal {signal.Signals(sig).name}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(int(a.deadline) + 120)  # a backstop to the checks in every loop
    try:
        r = run.go()
    except Stopped as e:
        log(f"STOPPED: {e}")
        run.diagnose()
        return 1
    finally:
        signal.alarm(0)
        run.cleanup()
    print(summary(r))
    saved = [x for x in saved if x["conns_target"] != r["conns_target"]] + [r]
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "w") as f:
        json.dump({"runs": saved}, f, indent=1)
    log(f"wrote {a.results}")
    if a.markdown:
        print(markdown(saved))
    ok = r["failures_total"] == 0 and not r["clients_without_json"]
    print("SCALE PASSED" if ok else "SCALE FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
