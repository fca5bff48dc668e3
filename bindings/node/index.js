// libmario from Node.js: a MarioTCP server whose packet handlers are JS
// functions, through libmario's C interface with koffi (a well-kept FFI
// package with prebuilt binaries: nothing to compile).
//
// Threads: JS runs on the main thread only. libmario calls handlers on its
// own threads; koffi forwards such a call to the main thread's event loop
// and the calling thread waits for it. So every JS packet handler is
// registered as a libmario *pool* handler (regist_pool_func): the thread
// that waits for the event loop is a pool thread, never a worker, and the
// workers go on serving meanwhile (the connection's later packets wait, in
// order). No connected or close callback is registered, since those run on
// the workers. The server runs through koffi's async calls (start_server,
// mario_stop_server on koffi's own threads), so the event loop keeps
// turning; do not block it for long while connections are active.
//
// The library is looked for at $MARIO_LIBRARY, then as the installed
// libmario.so.0, then as this repository's target/release/libmario.so.

'use strict';

const koffi = require('koffi');
const path = require('path');
const util = require('util');

const AKG_CLOSED = 0xfffe;
const AKG_ERROR = 0xffff;
const HEAD_SIZE = 8;
const MAX_PKG_LEN = 1500;

function load() {
  const tried = [];
  const candidates = [
    process.env.MARIO_LIBRARY,
    'libmario.so.0',
    path.join(__dirname, '..', '..', 'target', 'release', 'libmario.so'),
  ].filter(Boolean);
  for (const p of candidates) {
    try {
      return koffi.load(p);
    } catch (e) {
      tried.push(`${p}: ${e.message}`);
    }
  }
  throw new Error('libmario not found; set MARIO_LIBRARY, install it (make install) or build it (make). Tried:\n  '
    + tried.join('\n  '));
}

const lib = load();

const CONN = koffi.struct('CONN', {
  fd: 'int', bufev: 'void *', ind: 'uint32_t', in_buf: 'void *', in_buf_len: 'uint16_t', out_buf: 'void *',
  out_buf_len: 'uint16_t', next: 'void *', owner: 'void *', cip: 'uint32_t', cport: 'uint16_t',
  err_type: 'uint16_t', user: 'void *',
});
const SERVER = koffi.struct('SERVER', {
  server_fd: 'int', port: 'int', workers: 'void *', qlog: 'void *', ret: 'int', conn_count: 'uint64_t',
  mario_private: 'void *',
});
const FuncPtr = koffi.proto('int32_t FUNC_PTR(void *c)');

const c = {
  init_server: lib.func('void *init_server(int port, uint16_t workers, uint32_t conns, int rt, int wt)'),
  start_server: lib.func('void *start_server(void *arg)'),
  stop_server: lib.func('void mario_stop_server(void *s)'),
  regist_pool_func: lib.func('void regist_pool_func(uint16_t id, FUNC_PTR *f)'),
  regist_stx: lib.func('void regist_stx(uint32_t stx)'),
  set_pool_threads: lib.func('void mario_set_pool_threads(void *s, uint32_t n)'),
  write: lib.func('int mario_bufferevent_write(void *bufev, const uint8_t *data, size_t size)'),
  close_bufev: lib.func('int32_t mario_close_bufev(void *bufev, uint16_t akg_id)'),
  frame_len: lib.func('size_t mario_frame_len(void *c)'),
  start_log_thread: lib.func('int32_t start_log_thread(void)'),
  version: lib.func('const char *mario_version(void)'),
};

/** The loaded libmario's version, "MAJOR.MINOR.PATCH". */
function libraryVersion() {
  return c.version();
}

/**
 * Queues `data` (a Buffer) for the connection whose id this is (a conn.id),
 * from anywhere. Returns true when handed to its worker; false when the
 * connection or its server is gone.
 */
function sendTo(connId, data) {
  return c.write(connId, data, data.length) === 0;
}

/** A connection as a packet handler sees it; keep conn.id to reach it later. */
class Conn {
  constructor(rec, server) {
    this._rec = rec;
    this._server = server;
    /** The connection's id (an opaque handle valid for its whole life). */
    this.id = rec.bufev;
  }

  /** The client's address: { host: 'a.b.c.d', port }. */
  get peer() {
    const ip = this._rec.cip;
    const host = [ip & 0xff, (ip >>> 8) & 0xff, (ip >>> 16) & 0xff, ip >>> 24].join('.');
    const port = ((this._rec.cport & 0xff) << 8) | (this._rec.cport >>> 8);
    return { host, port };
  }

  /** Queues `data` (a Buffer); false when the connection takes no more output. */
  send(data) {
    return sendTo(this.id, data);
  }

  /** Queues HEAD{stx, 8 + body.length, akgId} + body (body: a Buffer, at most 1,492 bytes). */
  sendPacket(akgId, body = Buffer.alloc(0)) {
    return this.send(this._server._frame(akgId, body));
  }

  /** Closes the connection gracefully once this handler returns. */
  close(reason = AKG_CLOSED) {
    return c.close_bufev(this.id, reason) === 0;
  }
}

/** A packet: { stx, length, id, data (the whole packet, a Buffer), body }. */
function packetOf(data) {
  return {
    stx: data.readUInt32LE(0),
    length: data.readUInt16LE(4),
    id: data.readUInt16LE(6),
    data,
    body: data.subarray(HEAD_SIZE),
  };
}

class Server {
  /**
   * A MarioTCP server (libmario's init_server): port (0: any free one; see
   * server.port once started), workers (1..256), maxConns per worker,
   * readTimeout / writeTimeout in seconds (0: none), stx (the packets'
   * magic), poolThreads (threads that wait for JS handlers; default: as
   * many as workers). Throws on bad settings.
   */
  constructor({ port = 0, workers = 2, maxConns = 1024, readTimeout = 300, writeTimeout = 300,
    stx = 0x8eb69af7, poolThreads = 0 } = {}) {
    c.start_log_thread();
    this._s = c.init_server(port, workers, maxConns, readTimeout, writeTimeout);
    if (!this._s) throw new Error('init_server refused the settings (see stderr)');
    if (poolThreads) c.set_pool_threads(this._s, poolThreads);
    this.stx = stx;
    this._callbacks = [];
    this._done = null;
  }

  /**
   * Registers `fn(conn, packet)` for packets of id `akgId`. It runs on the
   * main thread (a pool thread of libmario waits for it). Return false or
   * throw to close the connection as error.
   */
  onPacket(akgId, fn) {
    if (!Number.isInteger(akgId) || akgId < 0 || akgId >= 0xfffc) {
      throw new RangeError(`packet id ${akgId} is reserved or out of range (0..0xfffb)`);
    }
    const cb = koffi.register((ptr) => {
      const rec = koffi.decode(ptr, CONN);
      const conn = new Conn(rec, this);
      try {
        const n = Number(c.frame_len(ptr));
        const data = Buffer.from(koffi.decode(rec.in_buf, koffi.array('uint8_t', n, 'Typed')));
        return fn(conn, packetOf(data)) === false ? -1 : 0;
      } catch (e) {
        console.error(`mario: the handler of packet 0x${akgId.toString(16)} threw; closing as error:`, e);
        conn.close(AKG_ERROR);
        return -1;
      }
    }, koffi.pointer(FuncPtr));
    this._callbacks.push(cb);
    c.regist_pool_func(akgId, cb);
    return this;
  }

  _frame(akgId, body) {
    const n = HEAD_SIZE + body.length;
    if (n > MAX_PKG_LEN) throw new RangeError(`a ${n}-byte packet is over ${MAX_PKG_LEN} bytes`);
    const head = Buffer.alloc(HEAD_SIZE);
    head.writeUInt32LE(this.stx, 0);
    head.writeUInt16LE(n, 4);
    head.writeUInt16LE(akgId, 6);
    return Buffer.concat([head, body]);
  }

  /** The port: as given, or the one bound once listening. */
  get port() {
    return koffi.decode(this._s, SERVER).port;
  }

  /** Starts serving (in the background); resolves once it listens. */
  async start(timeoutMs = 10000) {
    if (this._done) throw new Error('server already started');
    c.regist_stx(this.stx);
    let ended = false;
    this._done = util.promisify(c.start_server.async)(this._s).finally(() => { ended = true; });
    const t0 = Date.now();
    while (koffi.decode(this._s, SERVER).server_fd < 0) {
      if (ended) throw new Error('start_server failed (see stderr: port in use?)');
      if (Date.now() - t0 > timeoutMs) throw new Error('the server did not start listening');
      await new Promise((r) => setTimeout(r, 5));
    }
    return this;
  }

  /** Stops: closes every connection, waits for the workers (5 s at most). */
  async stop() {
    await util.promisify(c.stop_server.async)(this._s);
    if (this._done) await this._done;
    for (const cb of this._callbacks) koffi.unregister(cb);
    this._callbacks = [];
  }
}

module.exports = { Server, Conn, sendTo, libraryVersion, AKG_CLOSED, AKG_ERROR, HEAD_SIZE };
