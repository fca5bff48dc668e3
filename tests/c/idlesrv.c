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

static SERVER *server;

static sint32 on_echo(CONN *c) {
	HEAD *h = (HEAD *) c->in_buf;
	return bufferevent_write(c->bufev, c->in_buf, h->pkglen) == 0 ? 0 : -1;
}

static sint32 on_close(CONN *c) {
	(void) c;
	return 0;
}

static int env_int(const char *name, int def) {
	const char *v = getenv(name);
	return v && *v ? atoi(v) : def;
}

static void *stopper(void *arg) {
	sigset_t *set = (sigset_t *) arg;
	int sig;
	sigwait(set, &sig);
	mario_stop_server(server);
	return NULL;
}

int main(void) {
	int port = env_int("TS_PORT", 0);
	if (port <= 0) {
		fprintf(stderr, "TS_PORT is required\n");
		return 2;
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	server = init_server(port, (uint16) env_int("TS_WORKERS", 2), (uint32) env_int("TS_CONNNUM", 1024),
			env_int("TS_RTIMEOUT", 0), env_int("TS_WTIMEOUT", 0));
	if (server == NULL)
		return 2;
	regist_akg_func(0x0001, on_echo);
	regist_disconnected_func(on_close);
	if (start_log_thread() != 0)
		return 2;
	pthread_t st;
	pthread_create(&st, NULL, stopper, &set);
	void *r = start_server(server);
	if (r != NULL) {
		fprintf(stderr, "start_server failed\n");
		return 3;
	}
	pthread_join(st, NULL);
	printf("STOPPED\n");
	fflush(stdout);
	return 0;
}
