"""The LOGIN server of MarioTCP's sample ``maritcp``, in Python.

Run it with ``python -m mario.examples.login --port 8082``. A LOGIN request
(id 0x6101, 10 bytes: the head and a uint16 user id) is answered with a bare
head of the same stx and id; a LOGIN of another length is logged and closes
the connection.
"""

import argparse
import logging

import mario

LOGIN = 0x6101
LOGIN_REQ_LEN = 10
STX = 0x8EB69AF7


def make_server(port: int = 8082, workers: int = 2, timeout: int = 8) -> mario.Server:
    """A LOGIN server on ``port`` (0: any free port), not started."""
    server = mario.Server(port=port, workers=workers, read_timeout=timeout, write_timeout=timeout, stx=STX)

    @server.on_packet(LOGIN)
    def login(conn: mario.Conn, packet: mario.Packet):
        if packet.length != LOGIN_REQ_LEN:
            logging.getLogger("mario.examples.login").error(
                "invalid login packet: pkglen %d from %s:%d", packet.length, *conn.peer)
            conn.close()
            return False
        # The reply is a bare head: same stx (the server's) and id.
        conn.send_packet(packet.id)
        return None

    return server


def main(argv=None) -> None:
    """Parses ``--port``, ``--workers`` and ``--timeout`` and serves until
    Ctrl-C."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8082, help="TCP port (0: any free one)")
    ap.add_argument("--workers", type=int, default=2, help="worker threads")
    ap.add_argument("--timeout", type=int, default=8, help="read and write timeout, seconds (0: none)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    server = make_server(a.port, a.workers, a.timeout)
    server.start()
    # Ctrl-C may come as soon as the line is out, before `run` is inside
    # its own `try` (a LOGIN handled meanwhile holds the GIL): catch it
    # here too, so it always stops the server instead of killing Python.
    try:
        print(f"LOGIN server on port {server.port} (libmario {mario.library_version()}); Ctrl-C stops it",
              flush=True)
        server.run()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
