/*
 * collect.c
 *
 * Online-user statistics. Each worker counts the users logged in on its
 * own connections in its own slot of online[]; only that worker writes
 * the slot. The stats thread reads all slots every 60 seconds and logs
 * "online number: N" through its own log queue, and next to it the
 * server's own numbers (mario_get_stats) as one "stats: ..." line. The
 * slots are accessed with GCC's __atomic builtins, so the reads and writes
 * never race.
 */

#include "mario/mario.h"
#include "collect.h"

#ifndef COLLECT_INTERVAL_SECOND
#define COLLECT_INTERVAL_SECOND		60	/* -D to change, e.g. for tests */
#endif
#define COLLECT_TICK_USECOND		200000	/* check for stop 5 times a second */

static LOG_QUEUE *log = NULL;
static SERVER *stats_server = NULL;
static sint32 *online = NULL;
static uint16 online_size = 0;

static pthread_t collect_thread;
static int collect_started = 0;
static int collect_stop = 0;	/* set by stop_collect_thread, atomically */

sint32 init_collect(SERVER *server) {
	uint16 n = server->workers->size;

	log = create_log_queue();
	if (log == NULL) {
		fprintf(stderr, "[error] init_collect: create_log_queue failed\n");
		return -1;
	}
	online = (sint32 *) calloc(n > 0 ? n : 1, sizeof(sint32));
	if (online == NULL) {
		fprintf(stderr, "[error] init_collect: out of memory\n");
		return -1;
	}
	online_size = n;
	stats_server = server;
	return 0;
}

void online_add(uint16 worker) {
	if (online != NULL && worker < online_size)
		__atomic_fetch_add(&online[worker], 1, __ATOMIC_RELAXED);
}

void online_sub(uint16 worker) {
	if (online != NULL && worker < online_size
			&& __atomic_load_n(&online[worker], __ATOMIC_RELAXED) > 0)
		__atomic_fetch_sub(&online[worker], 1, __ATOMIC_RELAXED);
}

sint32 online_total(void) {
	sint32 sum = 0;
	uint16 i;

	for (i = 0; i < online_size; i++)
		sum += __atomic_load_n(&online[i], __ATOMIC_RELAXED);
	return sum;
}

/* one line of the server's numbers since it started (mario_get_stats) */
static void log_server_stats(void) {
	mario_stats st;

	if (stats_server == NULL || mario_get_stats(stats_server, &st, sizeof(st)) != (sint32) sizeof(st))
		return;
	slog_info_t(log, "stats: connections=%llu accepted=%llu refused=%llu closed=%llu timeouts=%llu "
			"errors=%llu packets_in=%llu bytes_in=%llu bytes_out=%llu out_queued=%llu "
			"stalls=%llu stalled_workers=%u pool_queued=%llu log_dropped=%llu",
			(unsigned long long) st.connections,
			(unsigned long long) st.accepted, (unsigned long long) st.refused,
			(unsigned long long) st.closed, (unsigned long long) st.timeouts,
			(unsigned long long) st.errors, (unsigned long long) st.packets_in,
			(unsigned long long) st.bytes_in, (unsigned long long) st.bytes_out,
			(unsigned long long) st.out_queued, (unsigned long long) st.stalls,
			(unsigned) st.stalled_workers, (unsigned long long) st.pool_queued,
			(unsigned long long) st.log_dropped);
}

static void *collect_worker_fun(void *arg) {
	time_t next = time(NULL) + COLLECT_INTERVAL_SECOND;

	(void) arg;
	while (!__atomic_load_n(&collect_stop, __ATOMIC_ACQUIRE)) {
		time_t now;

		susleep(0, COLLECT_TICK_USECOND);
		now = time(NULL);
		if (now >= next) {
			slog_info_t(log, "online number: %d", online_total());
			log_server_stats();
			next = now + COLLECT_INTERVAL_SECOND;
		}
	}
	return NULL;
}

sint32 start_collect_thread(void) {
	int err = pthread_create(&collect_thread, NULL, collect_worker_fun, NULL);

	if (err != 0)
		return err;
	collect_started = 1;
	return 0;
}

void stop_collect_thread(void) {
	if (collect_started) {
		__atomic_store_n(&collect_stop, 1, __ATOMIC_RELEASE);
		pthread_join(collect_thread, NULL);
		collect_started = 0;
	}
	free(online);
	online = NULL;
	online_size = 0;
}
