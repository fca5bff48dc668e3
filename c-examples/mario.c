/*
 * mario.c
 *
 * maritcp: the MarioTCP sample server. Reads ./init.conf, answers LOGIN
 * packets (0x6101) and ECHO packets (0x6102, sent back unchanged), counts the users online and logs their number every
 * 60 seconds (with the server's statistics), and serves those statistics
 * for Prometheus on the address METRICS names, if set.
 *
 * By default it daemonizes like the original. With "-f", or with the
 * environment variable MARITCP_FOREGROUND set to anything but "" or "0",
 * it stays in the foreground and stops cleanly on SIGTERM or SIGINT.
 */

/* for sigwait() and pthread_sigmask() under -std=c99 */
#define _POSIX_C_SOURCE 200809L

#include "mario/mario.h"
#include "protocol.h"
#include "config.h"
#include "function.h"
#include "collect.h"

static sigset_t stop_signals;

/* "-f" on the command line or MARITCP_FOREGROUND=<not empty, not 0> */
static int want_foreground(int argc, char *argv[]) {
	const char *env = getenv("MARITCP_FOREGROUND");
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-f") == 0)
			return 1;
	}
	if (env != NULL && env[0] != '\0' && strcmp(env, "0") != 0)
		return 1;
	return 0;
}

/* foreground only: waits for SIGTERM or SIGINT and stops the server */
static void *signal_thread_fun(void *arg) {
	SERVER *server = (SERVER *) arg;
	int sig = 0;

	while (sigwait(&stop_signals, &sig) != 0)
		;
	fprintf(stdout, "maritcp: got %s, stopping\n",
			sig == SIGINT ? "SIGINT" : "SIGTERM");
	fflush(stdout);
	mario_stop_server(server);
	return NULL;
}

int main(int argc, char *argv[]) {
	SERVER *server;
	pthread_t signal_thread;
	int foreground = want_foreground(argc, argv);
	int err;
	void *ret;

	if (foreground) {
		/* block the stop signals before any thread exists: every thread
		 * inherits the mask, so only signal_thread_fun receives them */
		sigemptyset(&stop_signals);
		sigaddset(&stop_signals, SIGTERM);
		sigaddset(&stop_signals, SIGINT);
		err = pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
		if (err != 0) {
			fprintf(stderr, "[error] pthread_sigmask: %s\n", strerror(err));
			return EXIT_FAILURE;
		}
		/* a shell starts background jobs with SIGINT ignored, and an
		 * ignored signal never reaches sigwait(): restore the default */
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
	} else {
		run_daemon();
	}

	if (init_conf() < 0)
		return EXIT_FAILURE;

	if (conf.bind[0] != '\0')
		server = mario_init_server_addr(strcmp(conf.bind, "any") == 0 ? NULL : conf.bind,
				conf.port, (int) conf.workernum, (int) conf.connnum, conf.timeout, conf.timeout);
	else
		server = init_server(conf.port, (uint16) conf.workernum, conf.connnum,
				conf.timeout, conf.timeout);
	if (server == NULL) {
		fprintf(stderr, "[error] init_server failed (port %d, workernum %u, "
				"connnum %u)\n", conf.port, conf.workernum, conf.connnum);
		return EXIT_FAILURE;
	}
	if (conf.backlog != 0 && mario_set_backlog(server, conf.backlog) != 0)
		return EXIT_FAILURE;
	mario_set_reuseport(server, conf.reuseport);
	if (mario_set_proxy_protocol(server, conf.proxy) != 0)
		return EXIT_FAILURE;
	for (int i = 0; i < conf.n_proxy_sources; i++)
		if (mario_add_proxy_source(server, conf.proxy_sources[i]) != 0)
			return EXIT_FAILURE;
	if (init_collect(server) < 0)
		return EXIT_FAILURE;
	if (conf.metrics[0] != '\0' && mario_serve_metrics(server, conf.metrics) != 0) {
		fprintf(stderr, "[error] cannot serve metrics on %s\n", conf.metrics);
		return EXIT_FAILURE;
	}

	regist_akg_func(CMD_FUNCTION_LOGIN, login);
	regist_akg_func(CMD_FUNCTION_ECHO, echo);
	regist_disconnected_func(logout);
	if (conf.log_connections)
		regist_connected_func(log_connection);

	if (start_log_thread() != 0) {
		fprintf(stderr, "[error] start_log_thread failed\n");
		return EXIT_FAILURE;
	}
	err = start_collect_thread();
	if (err != 0) {
		fprintf(stderr, "[error] start_collect_thread: %s\n", strerror(err));
		return EXIT_FAILURE;
	}

	/* every packet must carry this magic in HEAD.stx */
	regist_stx(MARITCP_STX);

	if (foreground) {
		err = pthread_create(&signal_thread, NULL, signal_thread_fun, server);
		if (err != 0) {
			fprintf(stderr, "[error] start signal thread: %s\n", strerror(err));
			return EXIT_FAILURE;
		}
	}

	/* runs the server; returns only when stopped or when it cannot
	 * start (for example the port is in use) */
	ret = start_server((void *) server);
	if (ret != (void *) 0) {
		fprintf(stderr, "[error] start_server failed on port %d\n", conf.port);
		return EXIT_FAILURE;
	}

	/* stopped: the workers are joined, every connection is closed */
	if (foreground)
		pthread_join(signal_thread, NULL);
	stop_collect_thread();
	fprintf(stdout, "maritcp stopped\n");
	fflush(stdout);
	return EXIT_SUCCESS;
}
