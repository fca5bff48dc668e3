/*
 * idlesrv.c: the smallest MarioTCP application, for measuring what the
 * framework itself costs while idle (tests/logging.rs). Unlike testsrv it
 * runs no thread of its own that polls (testsrv's blaster wakes every
 * 200 us), so the process's CPU time is the library's.
 *
 * Environment: TS_PORT (required), TS_WORKERS (2), TS_CONNNUM (1024),
 * TS_RTIMEOUT (0), TS_WTIMEOUT (0).
 * Packet 0x0001 ECHO replies with the whole packet (stx DEFAULT_STX).
 * SIGTERM / SIGINT stop the server (a thread blocked in sigwait).
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"
#include "tsmain.h"

static SERVER *server;

static sint32 on_echo(CONN *c) {
	HEAD *h = (HEAD *) c->in_buf;
	return bufferevent_write(c->bufev, c->in_buf, h->pkglen) == 0 ? 0 : -1;
}

static sint32 on_close(CONN *c) {
	(void) c;
	return 0;
}

int main(void) {
	sigset_t set;
	server = ts_init_server(&set);
	if (server == NULL)
		return 2;
	regist_akg_func(0x0001, on_echo);
	regist_disconnected_func(on_close);
	int r = ts_serve(server, &set, NULL);
	if (r != 0)
		return r;
	printf("STOPPED\n");
	fflush(stdout);
	return 0;
}
