/*
 * tsmain.h: what the C test servers share: their settings from TS_*
 * environment variables and a server created from them, stopped on
 * SIGTERM or SIGINT by a thread blocked in sigwait.
 *
 *   int main(void) {
 *       sigset_t set;
 *       SERVER *s = ts_init_server(&set);    // NULL: exit 2
 *       ...register handlers...
 *       int r = ts_serve(s, &set, NULL);     // until stopped
 *   }
 *
 * Settings: TS_PORT (required), TS_WORKERS (2), TS_CONNNUM (1024),
 * TS_RTIMEOUT (0), TS_WTIMEOUT (0). Listening: TS_BIND (an address for
 * mario_init_server_addr, "any" for NULL; unset: init_server),
 * TS_BACKLOG (mario_set_backlog), TS_REUSEPORT (1: mario_set_reuseport),
 * TS_PROXY (v1|v2|any: mario_set_proxy_protocol), TS_PROXY_SOURCE (one
 * network, or several separated by commas: mario_add_proxy_source). A
 * setting the library refuses prints SETTING_REFUSED and gives NULL.
 */
#ifndef TSMAIN_H
#define TSMAIN_H

#include "mario/mario.h"

/* The integer in environment variable `name`, or `def` when unset or empty. */
static inline int env_int(const char *name, int def) {
	const char *v = getenv(name);
	return v && *v ? atoi(v) : def;
}

/* Blocks SIGTERM and SIGINT in this thread and those it creates (call it
 * first in main), fills `set` with them for the stopper's sigwait, and
 * creates the server from the TS_* settings. NULL, with a message, when
 * TS_PORT is missing or init_server fails. */
static inline SERVER *ts_init_server(sigset_t *set) {
	int port = env_int("TS_PORT", 0);
	if (port <= 0) {
		fprintf(stderr, "TS_PORT is required\n");
		return NULL;
	}
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	pthread_sigmask(SIG_BLOCK, set, NULL);
	const char *bind = getenv("TS_BIND");
	SERVER *s;
	if (bind != NULL && *bind != '\0')
		s = mario_init_server_addr(strcmp(bind, "any") == 0 ? NULL : bind, port, env_int("TS_WORKERS", 2),
				env_int("TS_CONNNUM", 1024), env_int("TS_RTIMEOUT", 0), env_int("TS_WTIMEOUT", 0));
	else
		s = init_server(port, (uint16) env_int("TS_WORKERS", 2), (uint32) env_int("TS_CONNNUM", 1024),
				env_int("TS_RTIMEOUT", 0), env_int("TS_WTIMEOUT", 0));
	if (s == NULL)
		return NULL;
	int refused = 0;
	if (getenv("TS_BACKLOG") != NULL)
		refused |= mario_set_backlog(s, env_int("TS_BACKLOG", 0)) != 0;
	mario_set_reuseport(s, env_int("TS_REUSEPORT", 0));
	const char *proxy = getenv("TS_PROXY");
	if (proxy != NULL && *proxy != '\0') {
		uint32 mode = strcmp(proxy, "v1") == 0 ? MARIO_PROXY_V1
				: strcmp(proxy, "v2") == 0 ? MARIO_PROXY_V2
				: strcmp(proxy, "any") == 0 ? MARIO_PROXY_ANY : (uint32) atoi(proxy);
		refused |= mario_set_proxy_protocol(s, mode) != 0;
	}
	const char *src = getenv("TS_PROXY_SOURCE");
	if (src != NULL && *src != '\0') {
		char list[512];
		snprintf(list, sizeof list, "%s", src);
		for (char *save = NULL, *net = strtok_r(list, ",", &save); net != NULL; net = strtok_r(NULL, ",", &save))
			refused |= mario_add_proxy_source(s, net) != 0;
	}
	if (refused) {
		printf("SETTING_REFUSED\n");
		fflush(stdout);
		return NULL;
	}
	return s;
}

static SERVER *ts_server;
static void (*ts_on_signal)(void);

/* The stopper: waits for SIGTERM or SIGINT, then stops the server. */
static void *ts_stopper(void *arg) {
	int sig;
	sigwait((sigset_t *) arg, &sig);
	if (ts_on_signal != NULL)
		ts_on_signal();
	mario_stop_server(ts_server);
	return NULL;
}

/* Starts the log thread and the stopper (which runs `on_signal`, if not
 * NULL, before it stops the server), then runs `s` until it stops: on a
 * signal, or when a callback asked. 0, or 2 / 3 when the log thread / the
 * server cannot start. */
static inline int ts_serve(SERVER *s, sigset_t *set, void (*on_signal)(void)) {
	ts_server = s;
	ts_on_signal = on_signal;
	if (start_log_thread() != 0)
		return 2;
	pthread_t st;
	pthread_create(&st, NULL, ts_stopper, set);
	if (start_server(s) != NULL) {
		fprintf(stderr, "start_server failed\n");
		return 3;
	}
	/* Stopped by a callback: the stopper still waits for a signal. */
	pthread_kill(st, SIGTERM);
	pthread_join(st, NULL);
	return 0;
}

#endif
