/*
 * logtest.c: exercises MarioTCP's logging API (create_log_queue,
 * record_log, the slog_* macros, start_log_thread) from a plain C program,
 * the way applications use it. Checked by tests/logging.rs.
 *
 * Phase 1 (before start_log_thread): a fresh queue is filled with
 *     [INFO] full <i>
 * lines in a tight loop until record_log returns -1; then 1000 more calls
 * must all return -1 quickly. It prints (stdout, directly)
 *     FULL fit=<n> rejected=<k of the 1000> reject_us=<t>
 * After phase 3 it logs one more line to that queue and prints
 *     FULL again=<record_log's return>
 * Phase 2: start_log_thread(); the phase-1 lines must now all appear.
 * Phase 3: LT_QUEUES (4) queues, each written by its own pthread with
 * LT_LINES (20000) lines "q<k> line <i>" through six macro forms (by i % 6:
 * slog_err, slog_info, slog_warn, slog_err_t, slog_info_t_w, slog_warn_t),
 * retrying when the queue is full. Queue 0 also logs, after line 100, one
 * line of 5000 'x' ("q0 long xxx..."), which must arrive cut.
 * Each thread prints "THREAD q<k> retries=<r>" when done.
 * Phase 4: waits until every queue is drained (producer == consumer), then
 * gives the log thread one second to finish its writes, prints "DONE" and
 * exits 0.
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

#include <time.h>

#define NQ_MAX 16

static int n_lines = 20000;
static int n_queues = 4;
static LOG_QUEUE *queues[NQ_MAX + 1];

static long now_us(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

static int env_int(const char *name, int def) {
	const char *v = getenv(name);
	return v && *v ? atoi(v) : def;
}

static char long_body[5001];

static sint32 log_one(LOG_QUEUE *q, int k, int i) {
	sint32 r = -1;
	switch (i % 6) {
	case 0:
		r = slog_err(q, "q%d line %d", k, i);
		break;
	case 1:
		r = slog_info(q, "q%d line %d", k, i);
		break;
	case 2:
		r = slog_warn(q, "q%d line %d", k, i);
		break;
	case 3:
		r = slog_err_t(q, "q%d line %d", k, i);
		break;
	case 4:
		r = slog_info_t_w(q, "q%d line %d", k, i);
		break;
	default:
		r = slog_warn_t(q, "q%d line %d", k, i);
		break;
	}
	return r;
}

static void *producer(void *arg) {
	int k = (int) (long) arg;
	LOG_QUEUE *q = queues[k];
	unsigned long retries = 0;
	for (int i = 0; i < n_lines; i++) {
		while (log_one(q, k, i) != 0) {
			retries++;
			nsleep(100000);
		}
		if (k == 0 && i == 100) {
			for (;;) {
				sint32 r = slog_info(q, "q0 long %s", long_body);
				if (r == 0)
					break;
				retries++;
				nsleep(100000);
			}
		}
	}
	printf("THREAD q%d retries=%lu\n", k, retries);
	fflush(stdout);
	return NULL;
}

static int drained(LOG_QUEUE *q) {
	return __atomic_load_n(&q->producer, __ATOMIC_ACQUIRE) == __atomic_load_n(&q->consumer, __ATOMIC_ACQUIRE);
}

int main(void) {
	n_lines = env_int("LT_LINES", n_lines);
	n_queues = env_int("LT_QUEUES", n_queues);
	if (n_queues < 1 || n_queues > NQ_MAX)
		return 2;
	memset(long_body, 'x', 5000);
	long_body[5000] = '\0';

	/* Phase 1: fill a queue nobody drains yet. */
	LOG_QUEUE *full = create_log_queue();
	if (full == NULL)
		return 2;
	queues[NQ_MAX] = full;
	int fit = 0;
	long t0 = now_us();
	for (;;) {
		sint32 r = slog_info(full, "full %d", fit);
		if (r != 0) {
			if (r != -1) {
				printf("FULL bad return %d\n", r);
				return 3;
			}
			break;
		}
		fit++;
		if (now_us() - t0 > 10000000L) {
			printf("FULL never full after %d lines\n", fit);
			return 3;
		}
	}
	int rejected = 0;
	long t1 = now_us();
	for (int i = 0; i < 1000; i++) {
		sint32 r = slog_info(full, "full extra %d", i);
		if (r == -1)
			rejected++;
	}
	long t2 = now_us();
	printf("FULL fit=%d rejected=%d reject_us=%ld\n", fit, rejected, t2 - t1);
	fflush(stdout);

	/* Phase 2: the log thread writes the backlog. */
	if (start_log_thread() != 0)
		return 4;

	/* Phase 3: one producer thread per queue. */
	for (int k = 0; k < n_queues; k++) {
		queues[k] = create_log_queue();
		if (queues[k] == NULL)
			return 2;
	}
	pthread_t th[NQ_MAX];
	for (int k = 0; k < n_queues; k++)
		if (pthread_create(&th[k], NULL, producer, (void *) (long) k) != 0)
			return 5;
	for (int k = 0; k < n_queues; k++)
		pthread_join(th[k], NULL);

	/* The drained queue takes lines again. */
	long t3 = now_us();
	while (!drained(full) && now_us() - t3 < 10000000L)
		nsleep(1000000);
	sint32 again = slog_info(full, "full after drain");
	printf("FULL again=%d\n", again);
	fflush(stdout);

	/* Phase 4: wait for the queues to drain, then for the last writes. */
	long t4 = now_us();
	for (;;) {
		int all = drained(full);
		for (int k = 0; k < n_queues; k++)
			all = all && drained(queues[k]);
		if (all)
			break;
		if (now_us() - t4 > 20000000L) {
			printf("NOT DRAINED\n");
			fflush(stdout);
			return 6;
		}
		nsleep(1000000);
	}
	sleep(1);
	printf("DONE\n");
	fflush(stdout);
	return 0;
}
