"""The Python package against the protocol tests of the C sample server:
LOGIN, a wrong length, pipelining, split packets, timeouts, sends from
other threads; and what the package adds: handlers that raise, connect and
close handlers, the peer address, the context manager. Real sockets on
loopback; every wait is bounded."""

import socket
import struct
import threading
import time

import pytest

import mario
from mario.examples.login import LOGIN, STX, make_server

HEAD = struct.Struct("=IHH")


def login_req(uid=7):
    return HEAD.pack(STX, 10, LOGIN) + struct.pack("=H", uid)


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += d
    return buf


def closed_within(s, seconds):
    """True if the server closes `s` within `seconds` (EOF or reset)."""
    s.settimeout(seconds)
    try:
        while True:
            if not s.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture
def server():
    s = make_server(port=0, workers=2, timeout=0)
    with s:
        yield s


def test_login_is_answered_exactly(server):
    c = connect(server.port)
    c.sendall(login_req())
    assert read_exact(c, 8) == HEAD.pack(STX, 8, LOGIN)
    c.settimeout(0.2)
    with pytest.raises(socket.timeout):
        c.recv(1)


def test_a_login_of_the_wrong_length_closes_the_connection(server):
    for n in (8, 9, 11, 40):
        c = connect(server.port)
        c.sendall(HEAD.pack(STX, n, LOGIN) + b"x" * (n - 8))
        assert closed_within(c, 2), f"a LOGIN of {n} bytes did not close"
    # The server goes on.
    c = connect(server.port)
    c.sendall(login_req())
    assert read_exact(c, 8) == HEAD.pack(STX, 8, LOGIN)


def test_pipelined_logins_are_answered_in_one_go(server):
    c = connect(server.port)
    c.sendall(login_req() * 500)
    assert read_exact(c, 8 * 500) == HEAD.pack(STX, 8, LOGIN) * 500


def test_a_login_split_at_every_byte_is_answered_once(server):
    c = connect(server.port)
    req = login_req()
    for cut in range(1, len(req)):
        c.sendall(req[:cut])
        time.sleep(0.002)
        c.sendall(req[cut:])
        assert read_exact(c, 8) == HEAD.pack(STX, 8, LOGIN)
    c.settimeout(0.2)
    with pytest.raises(socket.timeout):
        c.recv(1)


def test_an_idle_connection_times_out():
    s = make_server(port=0, workers=1, timeout=1)
    closes = []
    s.on_close(lambda conn, reason: closes.append(reason))
    with s:
        c = connect(s.port)
        c.sendall(login_req())
        read_exact(c, 8)
        t0 = time.monotonic()
        assert closed_within(c, 4)
        assert 0.9 <= time.monotonic() - t0 <= 3.5
        deadline = time.monotonic() + 2
        while not closes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closes == [mario.AKG_TIMEOUT]


def test_send_to_from_another_thread_reaches_the_connection():
    s = mario.Server(port=0, workers=2, read_timeout=0, write_timeout=0, stx=STX)
    ids = []

    @s.on_packet(0x0101)
    def subscribe(conn, packet):
        ids.append(conn.id)

    with s:
        clients = [connect(s.port) for _ in range(4)]
        for c in clients:
            c.sendall(HEAD.pack(STX, 8, 0x0101))
        deadline = time.monotonic() + 3
        while len(ids) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ids) == 4 and len(set(ids)) == 4

        def push(k):
            for i in range(100):
                assert mario.send_to(ids[k], HEAD.pack(STX, 12, 0x0202) + struct.pack("=I", i))

        threads = [threading.Thread(target=push, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Each client gets its 100 frames, in order (which client holds which
        # id does not matter: each got one id).
        for c in clients:
            got = [struct.unpack("=I", read_exact(c, 12)[8:])[0] for _ in range(100)]
            assert got == list(range(100))
        # A closed connection's id reaches nobody.
        clients[0].close()
        time.sleep(0.2)
    assert not mario.send_to(ids[0], b"late")


def test_a_handler_that_raises_closes_only_its_connection():
    s = mario.Server(port=0, workers=2, read_timeout=0, write_timeout=0, stx=STX)
    closes = []

    @s.on_packet(0x0001)
    def echo(conn, packet):
        if packet.body == b"boom":
            raise RuntimeError("boom")
        conn.send(packet.data)

    s.on_close(lambda conn, reason: closes.append(reason))
    with s:
        bad, good = connect(s.port), connect(s.port)
        bad.sendall(HEAD.pack(STX, 12, 1) + b"boom")
        assert closed_within(bad, 2)
        good.sendall(HEAD.pack(STX, 10, 1) + b"ok")
        assert read_exact(good, 10) == HEAD.pack(STX, 10, 1) + b"ok"
        deadline = time.monotonic() + 2
        while mario.AKG_ERROR not in closes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closes.count(mario.AKG_ERROR) == 1


def test_connect_and_close_handlers_run_once_each_with_the_peer_and_reason():
    s = mario.Server(port=0, workers=2, read_timeout=0, write_timeout=0, stx=STX)
    events = []
    lock = threading.Lock()

    @s.on_connect
    def connected(conn):
        with lock:
            events.append(("open", conn.id, conn.peer))

    @s.on_close
    def closed(conn, reason):
        with lock:
            events.append(("close", conn.id, reason))

    @s.on_packet(0x0003)
    def bye(conn, packet):
        conn.send_packet(0x0003, b"bye")
        conn.close(0x0003)

    with s:
        c = connect(s.port)
        c.sendall(HEAD.pack(STX, 8, 3))
        assert read_exact(c, 11) == HEAD.pack(STX, 11, 3) + b"bye"
        assert closed_within(c, 2)
        d = connect(s.port)
        time.sleep(0.1)
    # The stop closed d as AKG_CLOSED.
    opens = [e for e in events if e[0] == "open"]
    closes = [e for e in events if e[0] == "close"]
    assert len(opens) == 2 and len(closes) == 2
    assert opens[0][2] == c.getsockname() and opens[1][2] == d.getsockname()
    assert {e[1] for e in opens} == {e[1] for e in closes}
    assert sorted(e[2] for e in closes) == sorted([0x0003, mario.AKG_CLOSED])


def test_bad_arguments_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="workers"):
        mario.Server(workers=0)
    with pytest.raises(ValueError, match="port"):
        mario.Server(port=70000)
    with pytest.raises(TypeError, match="port must be an int"):
        mario.Server(port="8082")
    s = mario.Server(port=0)
    with pytest.raises(ValueError, match="reserved"):
        s.on_packet(0xFFFD)
    with s:
        assert s.listening
    assert not s.listening


def test_library_version_is_the_packages():
    assert mario.library_version() == "0.1.0"


def test_the_example_runs_as_a_module_and_stops_on_ctrl_c():
    import signal
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "mario.examples.login", "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 10
        while "LOGIN server on port" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()
        assert f"LOGIN server on port {port}" in line
        c = connect(port)
        c.sendall(login_req())
        assert read_exact(c, 8) == HEAD.pack(STX, 8, LOGIN)
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
