#!/usr/bin/env python3
"""Writes the hand-made seed inputs (fuzz/corpus/<target>/seed-*).

The encodings are those documented in src/harness/fuzzing.rs (`frames`, `ops`,
`proxy`).
Run from anywhere: python3 fuzz/seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
STX = 0x8EB69AF7
DEFAULT_STX = 0xFFFFFFFF


def frame(stx, akg_id, body=b"", pkglen=None):
    n = 8 + len(body) if pkglen is None else pkglen
    return struct.pack("<IHH", stx, n, akg_id) + body


def body(n, tag=0):
    return bytes((tag + i) & 0xFF for i in range(n))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(bytes(data))


# --- frames: [stx sel (+u32 if 3)] [stop] [repeat] [nsteps] [steps...] stream


def frames(name, stream, sel=1, stop=0, repeat=0, steps=(), stx=None, kind=0, settings=b""):
    """sel: the stx choice (low 2 bits); kind: the framing ((b0 >> 2) % 6:
    HEAD, HEAD big-endian, LENGTH, LINE, FIXED, RAW), whose settings bytes
    follow the stx (see pick_framing)."""
    head = bytes([(sel & 3) | (kind << 2)])
    if sel & 3 == 3:
        head += struct.pack("<I", stx)
    head += bytes(settings)
    write("frames", name, head + bytes([stop, repeat, len(steps)]) + bytes(steps) + stream)


HEAD_BE, LENGTH, LINE, FIXED, RAW = 1, 2, 3, 4, 5


def length_settings(offset, size_index, adjust, big_endian, max_extra):
    """LENGTH: offset % 8, size [1, 2, 4, 8][i], adjust (i8), byte order,
    max_frame = offset + size + max_extra (u16)."""
    return bytes([offset, size_index, adjust & 0xFF, big_endian]) + struct.pack("<H", max_extra)


pk = [frame(STX, 0x6101, body(2)), frame(STX, 0x0102, body(0)), frame(STX, 0x0203, body(40, 7))]
frames("empty", b"")
frames("three", b"".join(pk))
frames("three-bytewise", b"".join(pk), steps=[1])
frames("three-mixed", b"".join(pk), steps=[7, 0, 8, 9, 3])
frames("stop", b"".join(pk), stop=0x02, steps=[5])
frames("partial-tail", b"".join(pk) + pk[2][:20], steps=[11])
frames("partial-head", b"".join(pk) + pk[2][:5], steps=[2, 0])
frames("bad-stx-mid", pk[0] + frame(0x12345678, 1, body(4)) + pk[1], steps=[3])
for n in (0, 7, 1501, 0xFFFF):
    frames("len-%d" % n, pk[0] + frame(STX, 1, body(8), pkglen=n), steps=[4, 1])
for i in (0xFFFC, 0xFFFF):
    frames("reserved-%x" % i, pk[0] + frame(STX, i, body(3)), steps=[9])
frames("reserved-partial", pk[0] + frame(STX, 0xFFFD, body(30))[:12], steps=[9])
frames("default-stx", frame(DEFAULT_STX, 1, body(3)) * 3, sel=0, steps=[6])
frames("zero-stx", frame(0, 1, body(3)) * 3, sel=2, steps=[6])
frames("custom-stx", frame(0xA5A55A5A, 1, body(3)) * 3, sel=3, stx=0xA5A55A5A, steps=[5])
big = frame(STX, 0x0707, body(1492, 3))
frames("max-repeat", big + pk[1], repeat=63, steps=[0xFF, 0xE3, 0x01])
frames("max-repeat-whole", big, repeat=63)
frames("max-repeat-stop", big + pk[0], repeat=63, stop=0x01, steps=[0xF0])
frames("cross-buffer-small", pk[2] + pk[0], repeat=63, steps=[0xFF, 0xFE, 0x13])

# The other framings.
pk_be = [struct.pack(">IHH", STX, 8 + len(b), i) + b for i, b in ((1, body(3)), (2, body(0)), (3, body(90, 5)))]
frames("head-be", b"".join(pk_be), kind=HEAD_BE, steps=[5])
frames("head-be-host-order", b"".join(pk), kind=HEAD_BE, steps=[5])


def lf(payload, offset=2):
    return b"ab"[:offset] + struct.pack(">H", len(payload)) + payload


lstream = lf(body(0)) + lf(body(3, 1)) + lf(body(300, 2))
frames("length-be16", lstream, kind=LENGTH, settings=length_settings(2, 1, 0, 1, 400), steps=[3, 0])
frames("length-be16-repeat", lstream, kind=LENGTH, settings=length_settings(2, 1, 0, 1, 400), repeat=63,
       steps=[0xFF, 0x21])
frames("length-too-long", lstream + lf(body(500)), kind=LENGTH, settings=length_settings(2, 1, 0, 1, 400))
# A 4-byte little-endian field counting the whole frame (adjust -4).
whole = b"".join(struct.pack("<I", 4 + len(b)) + b for b in (body(1), body(17, 3), body(0)))
frames("length-whole-le32", whole, kind=LENGTH, settings=length_settings(0, 2, -4, 0, 100), steps=[1, 9])
frames("length-negative", whole + struct.pack("<I", 3), kind=LENGTH, settings=length_settings(0, 2, -4, 0, 100))
frames("length-u64-max", b"\xff" * 8, kind=LENGTH, settings=length_settings(0, 3, 0, 1, 1000))
lines = b"hello\r\nworld\n\nlast"
frames("line-lf", lines, kind=LINE, settings=bytes([0]) + b"\n" + struct.pack("<H", 100), steps=[1, 4])
frames("line-lf-too-long", b"x" * 120 + b"\n", kind=LINE, settings=bytes([0]) + b"\n" + struct.pack("<H", 100))
frames("line-multi", b"a<=>bb<=><=>ccc<=", kind=LINE, settings=bytes([2]) + b"<=>" + struct.pack("<H", 50),
       steps=[2, 1, 3])
frames("line-multi-repeat", b"abc<=>d<", kind=LINE, settings=bytes([2]) + b"<=>" + struct.pack("<H", 50),
       repeat=40, steps=[0xFF, 7])
frames("fixed-7", body(7 * 5, 9), kind=FIXED, settings=struct.pack("<H", 6), steps=[3, 11])
frames("fixed-big", body(250, 1), kind=FIXED, settings=struct.pack("<H", 19999), repeat=63, steps=[0xFF, 0xF0])
frames("raw", body(100, 4), kind=RAW, steps=[1, 30, 7])
frames("raw-repeat", body(200, 4), kind=RAW, repeat=63, steps=[0xFF])

# --- ops: see Op::decode. op byte: conn << 4 | kind
ECHO, CLOSE, CLOSE_STOP, STOP, UNREG, ID0 = 0, 6, 7, 8, 9, 10
WHOLE, HOLD = 0, 1


def split(at, pause=False):
    return (at << 2) | (3 if pause else 2)


def f(conn=0, id_sel=ECHO, n=4, mode=WHOLE, raw_id=None):
    v = [conn << 4 | 0, id_sel]
    if id_sel == 15:
        v += list(struct.pack("<H", raw_id))
    return v + [n, mode]


SYNC = lambda conn=0: [conn << 4 | 5]
RESET = lambda conn=0, sync=1: [conn << 4 | 6, sync]
REOPEN = lambda conn=0: [conn << 4 | 7]


def ops(name, *parts):
    data = []
    for p in parts:
        data += p
    write("ops", name, data)


ops("echo-sync", f(n=10), SYNC())
ops("echo-eof", f(n=10))
ops("hold-three", f(n=5, mode=HOLD), f(n=6, mode=HOLD), f(n=7), SYNC())
ops("split", f(n=20, mode=split(5)), SYNC())
ops("split-pause", f(n=20, mode=split(3, True)), f(n=0, mode=split(1, True)), SYNC())
ops("split-head", f(n=20, mode=split(4)), SYNC())
ops("close", f(n=3), f(id_sel=CLOSE, n=4))
ops("close-stop", f(n=3), f(id_sel=CLOSE_STOP, n=4))
ops("stop", f(n=3, mode=HOLD), f(id_sel=STOP, n=4))
ops("stop-synced", f(n=3), SYNC(), f(id_sel=STOP, n=4))
ops("stop-then-more", f(id_sel=STOP, n=4, mode=HOLD), f(n=8, mode=split(2)))
ops("unregistered", f(n=3, mode=HOLD), f(id_sel=UNREG, n=3))
ops("id-zero", f(id_sel=ID0, n=0))
for k in range(4):
    ops("reserved-%x" % (0xFFFC + k), f(n=2, mode=HOLD), f(id_sel=11 + k, n=2))
ops("reserved-split", f(id_sel=12, n=30, mode=split(3)))
ops("raw-id", f(id_sel=15, raw_id=0x1234, n=3))
ops("raw-id-echo", f(id_sel=15, raw_id=1, n=3), SYNC())
ops("stx-default", f(n=2, mode=HOLD), [0x01, ECHO, 0, 4, WHOLE])
ops("stx-flip", [0x01, ECHO, 0x80, 2, 4, WHOLE])
ops("stx-flip-split", f(n=1), [0x01, ECHO, 0x01, 0, 4, split(2)])
for i, n in enumerate([0, 7, 8, 9, 1499, 1500, 1501, 0xFFFF]):
    valid = 8 <= n <= 1500
    ops("len-%d" % n, f(n=1, mode=HOLD), [0x02, i, ECHO] + ([] if valid else [5]) + [WHOLE], SYNC())
ops("len-1500-split", [0x02, 5, ECHO, split(40, True)], SYNC())
ops("raw-garbage", [0x03, 8] + list(b"\x00\x11\x22\x33\x44\x55\x66\x77") + [WHOLE])
ops("raw-frame", [0x03, 12] + list(frame(STX, 1, body(4))) + [WHOLE], SYNC())
ops("head-eof", [0x04, ECHO, 10, WHOLE])
ops("head-body", [0x04, ECHO, 4, WHOLE], [0x03, 4] + list(body(4)) + [WHOLE], SYNC())
ops("head-unregistered-eof", [0x04, UNREG, 4, WHOLE])
ops("head-then-frame", [0x04, ECHO, 4, WHOLE], f(n=4), SYNC())
ops("reset-synced", f(n=4), RESET(sync=1))
ops("reset-unsynced", f(n=4), f(n=9, mode=split(3)), RESET(sync=0))
ops("reset-fresh", RESET(sync=0), f(n=2))
ops("reset-partial", [0x04, ECHO, 30, WHOLE], RESET(sync=0))
ops("reopen", f(n=4), REOPEN(), f(n=4), SYNC())
ops("three-conns", f(0, n=3), f(1, n=4), f(2, id_sel=CLOSE, n=5), f(1, id_sel=STOP), SYNC(0))
ops("conns-mixed", f(0, n=3, mode=HOLD), f(1, n=4, mode=split(2)), RESET(0, 0), f(1, id_sel=UNREG), REOPEN(2))


def burst(conn=0, count=3, len6=10, last=ECHO, mode=WHOLE):
    return [conn << 4 | 8, count - 1, len6, last, mode]


CLOSE_ID = lambda conn=0, sel=0, raw=None: [conn << 4 | 9, sel] + (list(struct.pack("<H", raw)) if sel == 4 else [])


def SEND_TO(conn=0, n=4, id_byte=1, raw=b""):
    return [conn << 4 | 10, n, id_byte] + (list(raw[:n]) if id_byte == 0 else [])


ops("burst-small", burst(count=5, len6=3), SYNC())
ops("burst-64k", burst(count=64, len6=255), SYNC())
ops("burst-64k-split", burst(count=64, len6=250, mode=split(50)), SYNC())
ops("burst-then-close", burst(count=20, len6=100, last=CLOSE))
ops("burst-then-stop", burst(count=20, len6=100, last=STOP))
ops("burst-then-unregistered", burst(count=40, len6=200, last=UNREG))
ops("burst-then-reserved", burst(count=10, len6=20, last=11))
ops("burst-reset", burst(count=64, len6=255), RESET(sync=0))
ops("burst-eof", burst(count=64, len6=255, mode=HOLD), f(n=1))
for sel, name in enumerate(["closed", "timeout", "error", "custom"]):
    ops("close-id-" + name, f(n=3), CLOSE_ID(sel=sel))
ops("close-id-raw", CLOSE_ID(sel=4, raw=0x4242))
ops("close-id-partial", [0x04, ECHO, 10, WHOLE], CLOSE_ID(sel=0))
ops("send-to-frame", f(n=2), SEND_TO(n=5, id_byte=1), f(n=3), SYNC())
ops("send-to-raw", SEND_TO(n=3, id_byte=0, raw=b"abc"))
ops("send-to-then-close", SEND_TO(n=5, id_byte=7), f(id_sel=CLOSE, n=1))


# --- proxy: byte 0 bit 7 clear: the rest is parsed as it is; set: the rest
# builds a header (see `proxy_encode`). Bits 0-6: extra mode bits.
V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"
HTTP = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
FULL6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def raw(name, data, extra=0):
    write("proxy", name, bytes([extra & 0x7F]) + data)


def v2(ver_cmd, fam, rest, length=None):
    n = len(rest) if length is None else length
    return V2SIG + bytes([ver_cmd, fam]) + struct.pack(">H", n) + rest


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def inet(src, dst, sport, dport):
    return bytes(src) + bytes(dst) + struct.pack(">HH", sport, dport)


raw("empty", b"")
raw("http", HTTP)
raw("v1-spec", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + HTTP)
raw("v1-tcp4-max", b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n")
raw("v1-tcp4-zero", b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\nx", extra=0x7F)
raw("v1-tcp6-full", ("PROXY TCP6 %s %s 65535 65535\r\n" % (FULL6, FULL6)).encode())
raw("v1-tcp6-mapped", b"PROXY TCP6 ::ffff:192.168.0.1 2001:db8::11 56324 443\r\n" + HTTP)
raw("v1-tcp6-dotted", b"PROXY TCP6 1:2:3:4:5:6:1.2.3.4 1::255.255.255.255 1 2\r\n")
raw("v1-tcp6-gaps", b"PROXY TCP6 1:2:3:4:5:6:7:: ::2:3:4:5:6:7:8 1 2\r\n")
raw("v1-tcp6-long", b"PROXY TCP6 0000:0000:0000:0000:0000:ffff:255.255.255.255 ::1 1 1\r\n")
raw("v1-tcp6-too-long", b"PROXY TCP6 0000:0000:0000:0000:0000:ffff:255.255.255.255 "
    b"0000:0000:0000:0000:0000:ffff:255.255.255.255 1 1\r\n")
raw("v1-unknown", b"PROXY UNKNOWN\r\n")
raw("v1-unknown-tail", b"PROXY UNKNOWN \r\r\x00\n\r\n" + HTTP)
raw("v1-unknown-worst", ("PROXY UNKNOWN %s %s 65535 65535\r\n" % (FULL6, FULL6)).encode())
raw("v1-unknown-too-long", b"PROXY UNKNOWN " + b"x" * 100)
raw("v1-bad-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n")
raw("v1-leading-zero", b"PROXY TCP4 1.2.3.04 5.6.7.8 1 1\r\n")
raw("v1-lf-only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")
# Whole lines breaking one rule each (the harness's reference refuses them).
raw("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n")
raw("v1-port-plus", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n")
raw("v1-port-over", b"PROXY TCP6 ::1 ::2 1 65536\r\n")
raw("v1-double-space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n")
raw("v1-trailing-space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n")
raw("v1-six-fields", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n")
raw("v1-nine-groups", b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n")
raw("v1-gap-nine-groups", b"PROXY TCP6 1::2:3:4:5:6:7:8 ::1 1 2\r\n")
raw("v1-five-digits", b"PROXY TCP6 12345:: ::1 1 2\r\n")
raw("v1-octet-over", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n")
raw("v1-three-octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n")
raw("v1-lowercase", b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n")
raw("v1-unknownx", b"PROXY UNKNOWNX\r\n")
raw("v1-cr-only", b"PROXY UNKNOWN\r\r\n")
raw("v1-family", b"PROXY TCP4 ::1 ::1 1 2\r\n")
raw("v1-partial", b"PROXY TCP6 2001:db8::")
# What HAProxy's send-proxy-v2 sends for a TCP/IPv4 client, and for its
# health checks (LOCAL).
raw("v2-haproxy-ipv4", v2(0x21, 0x11, inet([192, 168, 0, 1], [192, 168, 0, 11], 56324, 443)) + HTTP)
raw("v2-haproxy-local", v2(0x20, 0x00, b""))
raw("v2-local-crc", v2(0x20, 0x00, tlv(0x03, b"\x01\x02\x03\x04")))
raw("v2-local-any", v2(0x20, 0x11, b"\xff" * 13), extra=0x7F)
mapped = bytes(10) + b"\xff\xff" + bytes([192, 168, 0, 1])
raw("v2-ipv6-mapped", v2(0x21, 0x21, mapped + b"\x20\x01\x0d\xb8" + bytes(11) + b"\x11" + struct.pack(">HH", 56324, 443)))
ssl = b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
tlvs = (tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x03, b"\xde\xad\xbe\xef") + tlv(0x04, b"")
        + tlv(0x20, ssl) + tlv(0xEA, b"\x01vpc-123") + tlv(0xFF, bytes(40)))
raw("v2-tlvs", v2(0x21, 0x11, inet([10, 0, 0, 1], [10, 0, 0, 2], 12345, 80) + tlvs) + HTTP)
raw("v2-max", v2(0x21, 0x11, bytes(12) + tlv(0x04, bytes(1024 - 16 - 12 - 3))))
raw("v2-unix", v2(0x21, 0x31, b"/" * 216 + tlv(0xEE, b"x")))
raw("v2-unspec", v2(0x21, 0x00, b"\xff" * 7))
raw("v2-udp", v2(0x21, 0x12, inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)))
raw("v2-too-long", v2(0x21, 0x11, b"", length=0xFFFF))
raw("v2-short-block", v2(0x21, 0x11, bytes(11)))
raw("v2-tlv-overrun", v2(0x21, 0x11, bytes(12) + b"\x04\x00\x05ab"))
raw("v2-tlv-left-1", v2(0x21, 0x21, bytes(36) + b"\x04\x00\x00\x00"))
raw("v2-bad-version", v2(0x11, 0x11, bytes(12)))
raw("v2-bad-command", v2(0x22, 0x11, bytes(12)))
raw("v2-bad-family", v2(0x21, 0x41, bytes(12)))
raw("v2-partial", v2(0x21, 0x11, inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2))[:20])


def built(name, kind, fields, client=b"", extra=0):
    write("proxy", "built-" + name, bytes([0x80 | (extra & 0x7F), kind]) + bytes(fields) + client)


def six(groups, form, zero=0):
    """A v1 IPv6 address for `proxy_encode`: the zero mask, the other
    groups (little-endian u16), the form byte."""
    out = [zero]
    for i, g in enumerate(groups):
        if not zero & (1 << i):
            out += list(struct.pack("<H", g))
    return out + [form]


PORTS = list(struct.pack(">HH", 56324, 443))
G = [0x2001, 0x0DB8, 0, 0, 0, 0, 0xABCD, 0x0001]
built("v1-tcp4", 0, list(struct.pack("<II", 0xC0A80001, 0xC0A8000B)) + PORTS, HTTP)
for form in (0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 24, 25):
    built("v1-tcp6-form-%d" % form, 1, six(G, form, zero=0x3C) + six([0xFFFF] * 8, form) + PORTS, HTTP)
built("v1-tcp6-padded-dotted", 1, six([0] * 5 + [0xFFFF, 0xFFFF, 0xFFFF], 9) * 2 + PORTS)
built("v1-unknown", 2, [0])
built("v1-unknown-tail", 2, [0x80 | 40] + list(b"anything\r at all\n") + [0] * 22, HTTP)
built("v1-unknown-too-long", 2, [0xFF] + [0x41] * 127)
built("v2-ipv4", 3, list(struct.pack("<II", 0xC0A80001, 0xC0A8000B)) + PORTS + [0], HTTP)
built("v2-ipv4-tlvs", 3, [1] * 12 + [3, 0x01, 2] + list(b"h2") + [0xEA, 4] + list(b"vpc1") + [0x04, 0])
built("v2-ipv6", 4, list(range(32)) + PORTS + [1, 0x20, 5] + [1, 0, 0, 0, 0])
built("v2-ipv6-too-long", 4, [0] * 36 + [2, 0x04, 0xC0, 0x04, 0x80])
built("v2-local", 5, [0x11, 13] + [0xFF] * 13)
built("v2-unspec", 6, [3, 5] + [0xAB] * 5)
built("v2-unix", 7, [1] + [0x2F] * 216 + [1, 0xEE, 1, 0x78])
built("v2-udp", 8, [1] + [0] * 36)
