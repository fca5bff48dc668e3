// The Node.js binding against the protocol tests of the C sample server:
// LOGIN, a wrong length, pipelining, split packets, sends from outside a
// handler, and a handler that throws. Real sockets on loopback, bounded.
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const net = require('node:net');
const mario = require('../index.js');
const { makeServer, LOGIN } = require('../login.js');

const STX = 0x8eb69af7;

function head(len, id) {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(STX, 0);
  h.writeUInt16LE(len, 4);
  h.writeUInt16LE(id, 6);
  return h;
}
const loginReq = () => Buffer.concat([head(10, LOGIN), Buffer.from([7, 0])]);

/** A client: resolves to { sock, read(n), closed() }, everything with a 5 s bound. */
function connect(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let ended = false;
    const waiters = [];
    const kick = () => waiters.splice(0).forEach((w) => w());
    sock.on('data', (d) => { buf = Buffer.concat([buf, d]); kick(); });
    sock.on('close', () => { ended = true; kick(); });
    sock.on('error', () => { ended = true; kick(); });
    const until = (ok, what) => new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), 5000);
      const check = () => (ok() ? (clearTimeout(t), res()) : waiters.push(check));
      check();
    });
    const api = {
      sock,
      async read(n) {
        await until(() => buf.length >= n || ended, `${n} bytes`);
        assert.ok(buf.length >= n, `closed after ${buf.length} of ${n} bytes`);
        const out = buf.subarray(0, n);
        buf = buf.subarray(n);
        return out;
      },
      async closed() { await until(() => ended, 'the close'); return true; },
    };
    sock.on('connect', () => resolve(api));
    sock.on('error', reject);
  });
}

test('the LOGIN server of c-examples, in Node.js', async (t) => {
  const server = makeServer(0);
  await server.start();
  t.after(() => server.stop());

  await t.test('LOGIN is answered exactly', async () => {
    const c = await connect(server.port);
    c.sock.write(loginReq());
    assert.deepStrictEqual(await c.read(8), head(8, LOGIN));
    c.sock.end();
  });

  await t.test('a LOGIN of the wrong length closes the connection', async () => {
    for (const n of [8, 9, 11]) {
      const c = await connect(server.port);
      c.sock.write(Buffer.concat([head(n, LOGIN), Buffer.alloc(n - 8)]));
      assert.ok(await c.closed());
    }
  });

  await t.test('pipelined LOGINs are answered in order', async () => {
    const c = await connect(server.port);
    c.sock.write(Buffer.concat(Array(200).fill(loginReq())));
    assert.deepStrictEqual(await c.read(8 * 200), Buffer.concat(Array(200).fill(head(8, LOGIN))));
    c.sock.end();
  });

  await t.test('a LOGIN split at every byte is answered once', async () => {
    const c = await connect(server.port);
    const req = loginReq();
    for (let cut = 1; cut < req.length; cut++) {
      c.sock.write(req.subarray(0, cut));
      await new Promise((r) => setTimeout(r, 2));
      c.sock.write(req.subarray(cut));
      assert.deepStrictEqual(await c.read(8), head(8, LOGIN));
    }
    c.sock.end();
  });
});

test('sendTo reaches a connection later, and a throwing handler closes only its own', async (t) => {
  const server = new mario.Server({ port: 0, workers: 2, readTimeout: 0, writeTimeout: 0, stx: STX });
  const ids = [];
  server.onPacket(0x0101, (conn) => { ids.push(conn.id); });
  server.onPacket(0x0001, (conn, packet) => {
    if (packet.body.toString() === 'boom') throw new Error('boom');
    conn.send(packet.data);
  });
  await server.start();
  t.after(() => server.stop());
  const a = await connect(server.port);
  a.sock.write(head(8, 0x0101));
  for (let i = 0; i < 500 && ids.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.strictEqual(ids.length, 1);
  for (let i = 0; i < 50; i++) {
    const f = Buffer.concat([head(12, 0x0202), Buffer.alloc(4)]);
    f.writeUInt32LE(i, 8);
    assert.ok(mario.sendTo(ids[0], f));
  }
  const got = await a.read(12 * 50);
  for (let i = 0; i < 50; i++) assert.strictEqual(got.readUInt32LE(12 * i + 8), i);

  const bad = await connect(server.port);
  const good = await connect(server.port);
  bad.sock.write(Buffer.concat([head(12, 1), Buffer.from('boom')]));
  assert.ok(await bad.closed());
  good.sock.write(Buffer.concat([head(10, 1), Buffer.from('ok')]));
  assert.deepStrictEqual(await good.read(10), Buffer.concat([head(10, 1), Buffer.from('ok')]));
  a.sock.end();
  good.sock.end();
});

test('bad packet ids are refused, and a port in use fails the start at once', async () => {
  const a = new mario.Server({ port: 0 });
  assert.throws(() => a.onPacket(0xfffd, () => {}), RangeError);
  assert.throws(() => a.onPacket(0x10000, () => {}), RangeError);
  await a.start();
  const b = new mario.Server({ port: a.port });
  const t0 = Date.now();
  await assert.rejects(b.start(), /start_server failed/);
  assert.ok(Date.now() - t0 < 2000, `the failed start took ${Date.now() - t0} ms`);
  await a.stop();
});

test('the library version is reported', () => {
  assert.match(mario.libraryVersion(), /^\d+\.\d+\.\d+$/);
});
