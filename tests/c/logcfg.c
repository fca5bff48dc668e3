/*
 * logcfg.c: the configurable logging of libmario, from C. Checked by
 * tests/logging.rs. Usage: logcfg <dir>. Prints "OK" and exits 0, or
 * "FAIL <what>" and exits 1.
 *
 * 1. Levels: at MARIO_LOG_WARN, slog_info is dropped (evaluates to 0,
 *    nothing written) while slog_warn and slog_err are kept; the time of a
 *    dropped slog_info is printed as "FILTERED_NS <ns per call>".
 * 2. Log file: mario_set_log_file(<dir>/app.log); 2000 numbered lines are
 *    logged; after line 1000 the file is renamed to app.log.1 and
 *    mario_reopen_log() is called from a SIGHUP handler. The test reads both
 *    files: every line exactly once, each file in order.
 * 3. Dropped lines: a full queue's refused lines are reported by the log
 *    thread as "N log line(s) dropped" (into the log file).
 * 4. Callback: the library's own messages (here: a bad frame sent to a
 *    server) reach the callback, on a thread that is not a worker; the
 *    callback prints "CALLBACK level=L on_worker=0 line=..." at the end.
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

#include <sys/stat.h>
#include <time.h>

static void fail(const char *what) {
	printf("FAIL %s\n", what);
	fflush(stdout);
	exit(1);
}

static long now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void wait_drained(LOG_QUEUE *q) {
	for (int i = 0; i < 500 && q->producer != q->consumer; i++)
		nsleep(10000000);
	nsleep(100000000);
}

static void on_hup(int sig) {
	(void) sig;
	mario_reopen_log();
}

static pthread_mutex_t cb_lock = PTHREAD_MUTEX_INITIALIZER;
static char cb_line[512];
static int cb_level = -1, cb_calls, cb_on_worker = -1;
static SERVER *server;

static void callback(int level, const char *line, size_t len, void *user) {
	if (user != (void *) &cb_calls)
		fail("callback user pointer");
	if (strlen(line) != len)
		fail("callback line length");
	int on_worker = 0;
	if (server != NULL)
		for (int i = 0; i < server->workers->size; i++)
			if (pthread_equal(pthread_self(), server->workers->array[i].thread_id))
				on_worker = 1;
	pthread_mutex_lock(&cb_lock);
	if (strstr(line, "pkg error") != NULL) {
		cb_level = level;
		cb_on_worker = on_worker;
		snprintf(cb_line, sizeof(cb_line), "%s", line);
	}
	cb_calls++;
	pthread_mutex_unlock(&cb_lock);
}

static void *run(void *s) {
	return start_server(s);
}

int main(int argc, char **argv) {
	if (argc != 2)
		return 2;
	char path[4096], rotated[4200];
	snprintf(path, sizeof(path), "%s/app.log", argv[1]);
	snprintf(rotated, sizeof(rotated), "%s.1", path);
	LOG_QUEUE *q = create_log_queue();
	if (start_log_thread() != 0)
		fail("start_log_thread");

	/* 1. Levels. */
	mario_set_log_level(MARIO_LOG_WARN);
	/* The macros end with a semicolon, as the original's did. */
	sint32 r1 = slog_info(q, "filtered info")
	sint32 r2 = slog_warn(q, "kept warn")
	sint32 r3 = slog_err(q, "kept err")
	if (r1 != 0 || r2 != 0 || r3 != 0)
		fail("slog_* results at MARIO_LOG_WARN");
	int n = 10000000;
	long t0 = now_ns();
	for (int i = 0; i < n; i++)
		slog_info(q, "never formatted %d %s", i, "x");
	long t1 = now_ns();
	printf("FILTERED_NS %.2f\n", (double) (t1 - t0) / n);
	mario_set_log_level(MARIO_LOG_INFO);
	wait_drained(q);

	/* 2. Log file and reopen from a SIGHUP handler. */
	if (mario_set_log_file("/nonexistent-dir/x.log") != -1)
		fail("a log file that cannot be opened was accepted");
	if (mario_set_log_file(path) != 0)
		fail("mario_set_log_file");
	signal_handler(SIGHUP, on_hup);
	for (int i = 1; i <= 2000; i++) {
		while (record_log(q, STDOUT_FILENO, "[INFO] line %d\n", i) != 0)
			nsleep(1000000);
		if (i == 1000) {
			wait_drained(q);
			if (rename(path, rotated) != 0)
				fail("rename");
			raise(SIGHUP);
		}
	}
	wait_drained(q);
	struct stat st;
	if (stat(path, &st) != 0)
		fail("the log file was not reopened");
	if ((st.st_mode & 0777) != 0640)
		fail("the log file's mode is not 0640");

	/* 3. Dropped lines are reported (into the log file). */
	LOG_QUEUE *small = create_log_queue();
	char big[1900];
	memset(big, 'd', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	int refused = 0;
	for (int i = 0; i < 200; i++)
		if (record_log(small, STDOUT_FILENO, "%s\n", big) != 0)
			refused++;
	if (refused == 0)
		fail("the small queue never filled");
	printf("REFUSED %d\n", refused);
	wait_drained(small);

	/* 4. The library's own messages go to the callback. */
	mario_set_log_callback(callback, &cb_calls);
	server = init_server(0, 1, 4, 0, 0);
	if (server == NULL)
		fail("init_server");
	pthread_t t;
	pthread_create(&t, NULL, run, server);
	for (int i = 0; i < 500 && __atomic_load_n(&server->server_fd, __ATOMIC_ACQUIRE) < 0; i++)
		nsleep(10000000);
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16) server->port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *) &a, sizeof(a)) != 0)
		fail("connect");
	char bad[8] = {1, 2, 3, 4, 5, 0, 0, 0}; /* wrong stx, pkglen 5 */
	if (write(fd, bad, sizeof(bad)) != (ssize_t) sizeof(bad))
		fail("write");
	for (int i = 0; i < 300; i++) {
		pthread_mutex_lock(&cb_lock);
		int got = cb_level >= 0;
		pthread_mutex_unlock(&cb_lock);
		if (got)
			break;
		nsleep(10000000);
	}
	mario_stop_server(server);
	pthread_join(t, NULL);
	close(fd);
	mario_set_log_callback(NULL, NULL);
	mario_set_log_file(NULL);
	pthread_mutex_lock(&cb_lock);
	if (cb_level < 0)
		fail("the library's message did not reach the callback");
	printf("CALLBACK level=%d on_worker=%d line=%s\n", cb_level, cb_on_worker, cb_line);
	pthread_mutex_unlock(&cb_lock);
	printf("OK\n");
	return 0;
}
