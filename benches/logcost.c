/*
 * logcost: what a slog_info call costs when its level is filtered out
 * (mario_set_log_level(MARIO_LOG_WARN)), against the same line formatted
 * with snprintf (what MarioTCP 0.9.9 paid for every call: it had no
 * levels) and against a kept slog_info (formatted and queued for the log
 * thread), in the same run. Built and run by `make bench`.
 *
 *     logcost [CALLS]        (default 20,000,000)
 *
 * Prints one JSON object: ns per call for each, and the ratios.
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

static long now_ns(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* Median of three timings of `n` calls of each kind, in ns per call. */
static double med3(double a, double b, double c) {
	if (a > b) {
		double t = a;
		a = b;
		b = t;
	}
	if (b > c)
		b = c;
	return a > b ? a : b;
}

int main(int argc, char **argv) {
	long n = argc > 1 ? atol(argv[1]) : 20000000L;
	if (n <= 0)
		n = 20000000L;
	LOG_QUEUE *q = create_log_queue();
	/* The log thread drains kept lines to this file, not to the terminal. */
	if (mario_set_log_file("/dev/null") != 0 || start_log_thread() != 0)
		return 1;
	double filtered[3], formatted[3], kept[3];
	volatile int sink = 0;
	char buf[MAX_LOG_LINE_LENGTH];
	for (int r = 0; r < 3; r++) {
		mario_set_log_level(MARIO_LOG_WARN);
		long t0 = now_ns();
		for (long i = 0; i < n; i++)
			sink += slog_info(q, "user %ld logged in from %s", i, "10.0.0.1");
		filtered[r] = (double) (now_ns() - t0) / (double) n;

		long m = n / 20;
		t0 = now_ns();
		for (long i = 0; i < m; i++)
			sink += snprintf(buf, sizeof(buf), "[%ld] [INFO] user %ld logged in from %s\n", (long) time(NULL), i,
					"10.0.0.1");
		formatted[r] = (double) (now_ns() - t0) / (double) m;

		/* Kept lines: the queue (64 KiB) takes about 1,000 at a time; a
		 * full queue refuses (and counts) the rest, so pause between
		 * batches to measure accepted lines only. */
		mario_set_log_level(MARIO_LOG_INFO);
		long spent = 0, done = 0;
		for (int b = 0; b < 20; b++) {
			t0 = now_ns();
			for (int i = 0; i < 500; i++)
				sink += slog_info(q, "user %d logged in from %s", i, "10.0.0.1");
			spent += now_ns() - t0;
			done += 500;
			nsleep(20000000); /* 20 ms: the log thread drains the queue */
		}
		kept[r] = (double) spent / (double) done;
	}
	double f = med3(filtered[0], filtered[1], filtered[2]);
	double s = med3(formatted[0], formatted[1], formatted[2]);
	double k = med3(kept[0], kept[1], kept[2]);
	printf("{\"filtered_ns\": %.3f, \"snprintf_ns\": %.3f, \"kept_ns\": %.3f, "
			"\"filtered_vs_snprintf\": %.4f, \"filtered_vs_kept\": %.4f}\n",
			f, s, k, f / s, f / k);
	(void) sink;
	return 0;
}
