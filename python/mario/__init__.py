"""libmario from Python: a MarioTCP server whose handlers are Python functions.

The package drives libmario, the MarioTCP 0.9.9 server core, through its C
interface with :mod:`ctypes`: nothing is compiled when it is installed. The
library is looked for, in order, at the path in the ``MARIO_LIBRARY``
environment variable, as the installed ``libmario.so.0`` (``make install``),
and as ``target/release/libmario.so`` of the source tree this package sits in
(``make``; only when the package is used from the tree, e.g. ``pip install
-e ./python``).

A LOGIN server::

    import mario

    server = mario.Server(port=8082, workers=2, stx=0x8eb69af7)

    @server.on_packet(0x6101)
    def login(conn, packet):
        conn.send_packet(packet.id, b"")

    server.run()              # blocks; Ctrl-C stops it

Threads: handlers run on the server's worker threads (several at once, one
connection's in order), each holding the GIL while it runs, so Python code
of different connections does not run in parallel. :func:`send_to` works from
any thread. A handler that raises has its traceback logged (``logging``,
logger ``"mario"``) and its connection closed as :data:`AKG_ERROR`; the
server keeps serving.

Handlers are registered per packet id in the C library's process-wide table:
two servers in one process may handle different ids, but not the same id
differently.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import struct
import threading
import time
from typing import Callable, Optional

__all__ = [
    "AKG_CLOSED",
    "AKG_CONNECTED",
    "AKG_ERROR",
    "AKG_TIMEOUT",
    "Conn",
    "LibraryNotFound",
    "Packet",
    "Server",
    "library_version",
    "send_to",
]

#: Packet id of the connected callback.
AKG_CONNECTED = 0xFFFC
#: Close reason: the read timeout passed.
AKG_TIMEOUT = 0xFFFD
#: Close reason: closed by the peer, bad input, a stop, or :meth:`Conn.close`.
AKG_CLOSED = 0xFFFE
#: Close reason: an error (a handler raised or returned False, output over its cap).
AKG_ERROR = 0xFFFF

#: The size of a packet head (stx uint32, pkglen uint16, akg_id uint16).
HEAD_SIZE = 8
#: The largest packet of the classic framing, head included.
MAX_PKG_LEN = 1500

_log = logging.getLogger("mario")
_HEAD = struct.Struct("=IHH")


class LibraryNotFound(OSError):
    """libmario could not be loaded; the message lists every place tried."""


# ---------------------------------------------------------------------------
# The C interface (include/mario/mario.h).


class _Worker(ctypes.Structure):
    _fields_ = [
        ("thread_id", ctypes.c_ulong),
        ("ind", ctypes.c_uint16),
        ("qlog", ctypes.c_void_p),
        ("server", ctypes.c_void_p),
    ]


class _Conn(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_int),
        ("bufev", ctypes.c_void_p),
        ("ind", ctypes.c_uint32),
        ("in_buf", ctypes.c_void_p),
        ("in_buf_len", ctypes.c_uint16),
        ("out_buf", ctypes.c_void_p),
        ("out_buf_len", ctypes.c_uint16),
        ("next", ctypes.c_void_p),
        ("owner", ctypes.POINTER(_Worker)),
        ("cip", ctypes.c_uint32),
        ("cport", ctypes.c_uint16),
        ("err_type", ctypes.c_uint16),
        ("user", ctypes.c_void_p),
    ]


class _Server(ctypes.Structure):
    _fields_ = [
        ("server_fd", ctypes.c_int),
        ("port", ctypes.c_int),
        ("workers", ctypes.c_void_p),
        ("qlog", ctypes.c_void_p),
        ("ret", ctypes.c_int),
        ("conn_count", ctypes.c_uint64),
        ("mario_private", ctypes.c_void_p),
    ]


_FUNC = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.POINTER(_Conn))


def _candidates() -> list:
    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    env = os.environ.get("MARIO_LIBRARY")
    if env:
        found.append(env)
    found.append("libmario.so.0")
    found.append(os.path.normpath(os.path.join(here, "..", "..", "target", "release", "libmario.so")))
    return found


def _load() -> ctypes.CDLL:
    errors = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise LibraryNotFound(
        "libmario not found; set MARIO_LIBRARY to the path of libmario.so (make builds "
        "target/release/libmario.so), or install it (make install). Tried:\n  " + "\n  ".join(errors)
    )


_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def _c() -> ctypes.CDLL:
    """The loaded library, with its functions' signatures declared."""
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = _load()
            sig = {
                "init_server": (ctypes.POINTER(_Server), [ctypes.c_int, ctypes.c_uint16, ctypes.c_uint32,
                                                          ctypes.c_int, ctypes.c_int]),
                "start_server": (ctypes.c_void_p, [ctypes.c_void_p]),
                "mario_stop_server": (None, [ctypes.c_void_p]),
                "regist_akg_func": (None, [ctypes.c_uint16, _FUNC]),
                "regist_stx": (None, [ctypes.c_uint32]),
                "close_conn": (None, [ctypes.POINTER(_Conn), ctypes.c_uint16]),
                "mario_bufferevent_write": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
                "mario_close_bufev": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_uint16]),
                "mario_frame_len": (ctypes.c_size_t, [ctypes.POINTER(_Conn)]),
                "start_log_thread": (ctypes.c_int32, []),
                "mario_version": (ctypes.c_char_p, []),
            }
            for name, (res, args) in sig.items():
                f = getattr(lib, name)
                f.restype, f.argtypes = res, args
            _lib = lib
        return _lib


def library_version() -> str:
    """The loaded libmario's version, ``"MAJOR.MINOR.PATCH"``.

    Raises:
        LibraryNotFound: libmario cannot be loaded.
    """
    return _c().mario_version().decode()


# ---------------------------------------------------------------------------
# Connections and packets.


class Packet:
    """One packet as a handler gets it.

    Attributes:
        stx (int): the head's magic.
        length (int): the whole packet's length in bytes, head included.
        id (int): the packet id (``akg_id``).
        data (bytes): the whole packet, head included.
    """

    __slots__ = ("stx", "length", "id", "data")

    def __init__(self, data: bytes):
        self.stx, self.length, self.id = _HEAD.unpack_from(data)
        self.data = data

    @property
    def body(self) -> bytes:
        """The bytes after the 8-byte head."""
        return self.data[HEAD_SIZE:]

    def __repr__(self) -> str:
        return f"Packet(id={self.id:#06x}, length={self.length})"


class Conn:
    """A connection, as a handler sees it (valid during the handler's call).

    Keep :attr:`id` rather than the object to reach the connection later,
    from any thread (:func:`send_to`).
    """

    __slots__ = ("_c", "_server")

    def __init__(self, c, server: "Server"):
        self._c = c
        self._server = server

    @property
    def id(self) -> int:
        """The connection's id: an int naming this connection only, for its
        whole life (a closed connection's id never reaches another)."""
        return self._c.contents.bufev or 0

    @property
    def peer(self) -> tuple:
        """The client's address, ``(host, port)``: an IPv4 dotted quad and an int."""
        c = self._c.contents
        return socket.inet_ntoa(struct.pack("=I", c.cip)), socket.ntohs(c.cport)

    @property
    def worker(self) -> int:
        """The index of the worker thread that owns the connection."""
        return self._c.contents.owner.contents.ind

    @property
    def close_reason(self) -> int:
        """Why the connection closed (in :meth:`Server.on_close` handlers);
        0 while open."""
        return self._c.contents.err_type

    def send(self, data: bytes) -> bool:
        """Queues ``data`` for the client, after everything queued before.

        Returns:
            True when queued; False when the connection takes no more output
            (it closed), or the output would pass its cap (4 MiB; the
            connection is then closed as :data:`AKG_ERROR`).
        """
        data = bytes(data)
        return _c().mario_bufferevent_write(self._c.contents.bufev, data, len(data)) == 0

    def send_packet(self, akg_id: int, body: bytes = b"") -> bool:
        """Queues the packet ``HEAD{stx, 8 + len(body), akg_id} + body``,
        with the server's stx.

        Raises:
            ValueError: the packet would be longer than 1,500 bytes.
        """
        return self.send(self._server._frame(akg_id, body))

    def close(self, reason: int = AKG_CLOSED) -> None:
        """Closes the connection gracefully: the close handler runs now (once)
        with ``reason`` (any id; :data:`AKG_CLOSED` by default), what was
        queued is delivered, then FIN."""
        lib = _c()
        if reason not in self._server._packet_handlers:
            # The library calls the close callback registered for `reason`.
            lib.regist_akg_func(reason, _trampoline("close", reason))
        lib.close_conn(self._c, reason)

    def __repr__(self) -> str:
        return f"Conn(id={self.id:#x}, peer={self.peer})"


def send_to(conn_id: int, data: bytes) -> bool:
    """Queues ``data`` for connection ``conn_id`` (a :attr:`Conn.id`), from
    any thread.

    Returns:
        True when the bytes were handed to the connection's worker (they are
        dropped if it closes first); False when the id is not one of a
        running server's connections, it has closed, or its worker already
        holds 64 MiB sent from other threads.
    """
    data = bytes(data)
    return _c().mario_bufferevent_write(conn_id, data, len(data)) == 0


def close_id(conn_id: int, reason: int = AKG_CLOSED) -> bool:
    """Closes connection ``conn_id`` gracefully from any thread; False when it
    is known to be gone."""
    return _c().mario_close_bufev(conn_id, reason) == 0


# ---------------------------------------------------------------------------
# Dispatch: C calls one trampoline per registered id; it finds the Python
# server by the connection's SERVER record.

_servers: dict = {}
_servers_lock = threading.Lock()
_trampolines: dict = {}


def _server_of(c) -> Optional["Server"]:
    return _servers.get(c.contents.owner.contents.server)


def _call(c, kind: str, akg_id: int) -> int:
    srv = _server_of(c)
    if srv is None:
        return 0
    conn = Conn(c, srv)
    # The C library runs a close with reason R as AKG_FUNC[R]: whatever is
    # registered for R is the close callback then (the record's err_type
    # says so); an id registered only for closes may also come as a packet.
    closing = c.contents.err_type == akg_id
    if closing:
        kind = "close"
    elif kind == "close" and akg_id not in (AKG_TIMEOUT, AKG_CLOSED, AKG_ERROR):
        kind = "packet"
    try:
        if kind == "packet":
            f = srv._packet_handlers.get(akg_id)
            if f is None:
                _log.warning("invalid akg_id: %d (no Python handler)", akg_id)
                return -1
            n = _c().mario_frame_len(c)
            r = f(conn, Packet(ctypes.string_at(c.contents.in_buf, n)))
            return -1 if r is False else 0
        if kind == "connect":
            if srv._connect is not None:
                srv._connect(conn)
            return 0
        if srv._close is not None:
            srv._close(conn, akg_id)
        return 0
    except Exception:  # noqa: BLE001 - a handler's error closes its connection only
        _log.exception("handler of packet %#06x raised; closing the connection as error", akg_id)
        if kind != "close":
            _c().close_conn(c, AKG_ERROR)
        return -1


def _trampoline(kind: str, akg_id: int):
    key = (kind, akg_id)
    if key not in _trampolines:
        _trampolines[key] = _FUNC(lambda c: _call(c, kind, akg_id))
    return _trampolines[key]


# ---------------------------------------------------------------------------
# The server.


class Server:
    """A MarioTCP server (libmario's ``init_server``).

    Args:
        port (int): TCP port on 0.0.0.0, 0..65535; 0 picks a free one
            (:attr:`port` then tells which, once started).
        workers (int): worker threads, 1..256.
        max_conns (int): most connections per worker, 1..1048576.
        read_timeout (int): seconds without a byte read before a connection
            is closed as :data:`AKG_TIMEOUT`; 0: never.
        write_timeout (int): seconds pending output may go without progress
            before the connection is reset as :data:`AKG_TIMEOUT`; 0: never.
        stx (int): the magic every packet head carries, 0..2**32-1.

    Raises:
        TypeError: an argument is not an int.
        ValueError: an argument is out of its range.
        LibraryNotFound: libmario cannot be loaded.
    """

    def __init__(self, port: int = 0, workers: int = 2, max_conns: int = 1024, read_timeout: int = 300,
                 write_timeout: int = 300, stx: int = 0x8EB69AF7):
        for name, v, lo, hi in (("port", port, 0, 65535), ("workers", workers, 1, 256),
                                ("max_conns", max_conns, 1, 1 << 20), ("stx", stx, 0, 0xFFFFFFFF),
                                ("read_timeout", read_timeout, 0, 2**31 - 1),
                                ("write_timeout", write_timeout, 0, 2**31 - 1)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
            if not lo <= v <= hi:
                raise ValueError(f"{name} is {v}, must be {lo}..={hi}")
        lib = _c()
        lib.start_log_thread()
        s = lib.init_server(port, workers, max_conns, read_timeout, write_timeout)
        if not s:
            raise ValueError("init_server refused the settings (see stderr)")
        self._s = s
        self._addr = ctypes.cast(s, ctypes.c_void_p).value
        self.stx = stx
        self._packet_handlers: dict = {}
        self._connect: Optional[Callable] = None
        self._close: Optional[Callable] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[str] = None
        with _servers_lock:
            _servers[self._addr] = self
        lib.regist_akg_func(AKG_CONNECTED, _trampoline("connect", AKG_CONNECTED))
        for reason in (AKG_TIMEOUT, AKG_CLOSED, AKG_ERROR):
            lib.regist_akg_func(reason, _trampoline("close", reason))

    # -- handlers ------------------------------------------------------------

    def on_packet(self, akg_id: int) -> Callable:
        """Decorator: ``handler(conn, packet)`` runs for each packet of id
        ``akg_id`` (0..0xfffb), on the connection's worker thread. Return
        None (or anything but False) to go on; False closes the connection
        as :data:`AKG_ERROR`, as an exception does (its traceback logged).

        Raises:
            ValueError: ``akg_id`` is reserved or out of range.
        """
        if not 0 <= akg_id < AKG_CONNECTED:
            raise ValueError(f"packet id {akg_id:#x} is reserved or out of range (0..0xfffb)")

        def register(f: Callable) -> Callable:
            self._packet_handlers[akg_id] = f
            _c().regist_akg_func(akg_id, _trampoline("packet", akg_id))
            return f

        return register

    def on_connect(self, f: Callable) -> Callable:
        """Decorator: ``handler(conn)`` runs once per new connection, on its
        worker, before any packet."""
        self._connect = f
        return f

    def on_close(self, f: Callable) -> Callable:
        """Decorator: ``handler(conn, reason)`` runs once per connection when
        it closes (``reason``: :data:`AKG_TIMEOUT`, :data:`AKG_CLOSED`,
        :data:`AKG_ERROR` or the id given to :meth:`Conn.close`), on its
        worker. It may still :meth:`Conn.send` a last reply."""
        self._close = f
        return f

    # -- running -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port: as given, or the one bound once the server listens."""
        return self._s.contents.port

    @property
    def listening(self) -> bool:
        """True while the server listens (started, not stopped)."""
        running = self._thread is not None and self._thread.is_alive()
        return running and self._s.contents.server_fd >= 0

    def _frame(self, akg_id: int, body: bytes) -> bytes:
        n = HEAD_SIZE + len(body)
        if n > MAX_PKG_LEN:
            raise ValueError(f"a body of {len(body)} bytes makes a {n}-byte packet, over {MAX_PKG_LEN}")
        return _HEAD.pack(self.stx, n, akg_id) + bytes(body)

    def _serve(self) -> None:
        lib = _c()
        lib.regist_stx(self.stx)
        r = lib.start_server(self._s)
        if r:
            self._error = "start_server failed (see stderr: port in use?)"

    def start(self, timeout: float = 10.0) -> "Server":
        """Starts the server on a background thread and waits until it
        listens.

        Raises:
            RuntimeError: it was started already, or could not start (port
                in use) within ``timeout`` seconds.
        """
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._serve, name="mario-server", daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        while not self.listening:
            if self._error or not self._thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(self._error or "the server did not start listening")
            time.sleep(0.005)
        return self

    def run(self) -> None:
        """Serves until :meth:`stop` (from another thread) or Ctrl-C;
        starts the server first unless :meth:`start` did.

        Raises:
            RuntimeError: as :meth:`start`.
        """
        if self._thread is None:
            self.start()
        try:
            while self._thread.is_alive():
                self._thread.join(0.2)
        except KeyboardInterrupt:
            self.stop()

    def stop(self) -> None:
        """Stops the server: closes every connection (each close handler runs
        once) and waits for the workers; at most about 5 seconds. Not from a
        handler."""
        _c().mario_stop_server(self._s)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
