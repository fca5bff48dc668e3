// The LOGIN server of MarioTCP's sample maritcp, in Node.js:
//   node login.js [port]
'use strict';
const mario = require('./index.js');

const LOGIN = 0x6101;
const LOGIN_REQ_LEN = 10;

/** A LOGIN server on `port` (0: any free one), not started. */
function makeServer(port = 8082) {
  const server = new mario.Server({ port, workers: 2, readTimeout: 8, writeTimeout: 8, stx: 0x8eb69af7 });
  server.onPacket(LOGIN, (conn, packet) => {
    if (packet.length !== LOGIN_REQ_LEN) {
      console.error(`invalid login packet: pkglen ${packet.length} from ${conn.peer.host}:${conn.peer.port}`);
      conn.close();
      return false;
    }
    conn.sendPacket(packet.id);
    return true;
  });
  return server;
}

module.exports = { makeServer, LOGIN };

if (require.main === module) {
  const server = makeServer(Number(process.argv[2] || 8082));
  server.start().then(() => {
    console.log(`LOGIN server on port ${server.port} (libmario ${mario.libraryVersion()}); Ctrl-C stops it`);
    process.on('SIGINT', () => server.stop().then(() => process.exit(0)));
  });
}
