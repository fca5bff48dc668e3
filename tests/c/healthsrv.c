/*
 * healthsrv.c: a MarioTCP application with slow handlers, for the tests of
 * the worker monitor (stalls) and the handler pool (tests/health.rs).
 *
 * It checks on every callback what libmario promises: worker handlers on
 * the connection's worker thread, pool handlers on a pool thread (never a
 * worker) with their packet in in_buf, one pool call at a time per
 * connection, exactly one close callback per connection and never while
 * its pool handler runs. Each broken promise prints a VIOLATION line; at
 * SIGTERM it prints
 *     SUMMARY connected=N closed=N pool_calls=N stalls=N violations=N
 * and exits 1 if there was any violation or connected != closed.
 *
 * Environment: TS_PORT (required), TS_WORKERS (2), TS_CONNNUM (1024),
 * TS_RTIMEOUT (0), TS_WTIMEOUT (0), TS_STALL_MS (unset: the default),
 * TS_POOL_THREADS (unset: the default), TS_LEAVE (set: do not check
 * connected == closed, for a stop that leaves a stuck worker behind),
 * TS_STOP_ON_STALL (set: the stall callback calls mario_stop_server),
 * TS_STDIN_READER (set: a thread sits in fgets(stdin), on a pipe nobody
 * writes to, while the server starts).
 *
 * Packets carry the stx 0x8eb69af7 (as maritcp's). Ids (replies carry the
 * same id):
 *   0x6101 LOGIN    worker: empty reply
 *   0x0101 WHO      worker: reply body uint16 worker index
 *   0x0102 SLEEP    worker: body uint32 ms; sleeps, then replies
 *   0x0201 PSLEEP   pool: body uint32 ms, uint32 seq; sleeps, replies seq
 *   0x0202 WSEQ     worker: body uint32 seq; replies seq
 *   0x0203 PCLOSE   pool: body uint32 ms; sleeps, then close_conn(closed);
 *                   a write after it must be refused (-1)
 *   0x0204 PSTOP    pool: mario_stop_server (it must only ask)
 *   0x0205 UNREG    worker: regist_pool_func(PSLOW, NULL)
 *   0x0206 PSLOW    pool: like PSLEEP (registered until UNREG)
 *   0x0103 FLOOD    worker: body uint32 n; n replies of 1,500 bytes
 * The stall callback prints "STALL worker=W id=I ms=M stalled=S" (S: what
 * mario_worker_stalled said); each close prints "EV close worker=W
 * reason=R".
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"
#include "tsmain.h"

#define ID_LOGIN 0x6101
#define ID_WHO 0x0101
#define ID_SLEEP 0x0102
#define ID_PSLEEP 0x0201
#define ID_WSEQ 0x0202
#define ID_PCLOSE 0x0203
#define ID_PSTOP 0x0204
#define ID_UNREG 0x0205
#define ID_PSLOW 0x0206
#define ID_FLOOD 0x0103

#define ST_MAGIC 0x600dcafeu
#define STX 0x8eb69af7u

typedef struct {
	uint32 magic;
	int in_pool;	/* __atomic: a pool handler of this connection runs */
	int closed;
} ST;

static SERVER *server;
static unsigned long n_connected, n_closed, n_pool, n_stalls, n_violations;

static void violation(const char *what) {
	__atomic_fetch_add(&n_violations, 1, __ATOMIC_RELAXED);
	fprintf(stderr, "VIOLATION %s\n", what);
}

static int on_a_worker(void) {
	for (uint16 i = 0; i < server->workers->size; i++)
		if (pthread_equal(pthread_self(), server->workers->array[i].thread_id))
			return 1;
	return 0;
}

static ST *worker_state(CONN *c) {
	if (!pthread_equal(pthread_self(), c->owner->thread_id) || !on_a_worker())
		violation("worker handler off its worker thread");
	ST *st = (ST *) c->user;
	if (st == NULL || st->magic != ST_MAGIC) {
		violation("handler without connected state");
		return NULL;
	}
	if (__atomic_load_n(&st->in_pool, __ATOMIC_ACQUIRE))
		violation("worker handler while a pool handler of the connection runs");
	return st;
}

static void reply(CONN *c, char *buf, uint16 id, const void *body, uint16 n) {
	HEAD h;
	h.stx = STX;
	h.pkglen = (uint16) (8 + n);
	h.akg_id = id;
	memcpy(buf, &h, 8);
	if (n > 0)
		memcpy(buf + 8, body, n);
	bufferevent_write(c->bufev, buf, 8 + n);
}

static void sleep_ms(uint32 ms) {
	susleep(ms / 1000, (ms % 1000) * 1000);
}

static uint32 body_u32(CONN *c, int k) {
	uint32 v = 0;
	if (((HEAD *) c->in_buf)->pkglen >= 8 + 4 * (k + 1))
		memcpy(&v, c->in_buf + 8 + 4 * k, 4);
	return v;
}

static sint32 on_connected(CONN *c) {
	ST *st = (ST *) calloc(1, sizeof(ST));
	if (st == NULL)
		return -1;
	st->magic = ST_MAGIC;
	c->user = st;
	__atomic_fetch_add(&n_connected, 1, __ATOMIC_RELAXED);
	return 0;
}

static sint32 on_close(CONN *c) {
	ST *st = worker_state(c);
	if (st == NULL)
		return 0;
	if (st->closed++)
		violation("second close callback");
	/* in_buf, if set, still points to readable memory (never to a freed
	 * pool copy): ASan checks this read. */
	if (c->in_buf != NULL) {
		volatile char first = c->in_buf[0];
		(void) first;
	}
	printf("EV close worker=%u reason=%u\n", (unsigned) c->owner->ind, (unsigned) c->err_type);
	fflush(stdout);
	st->magic = 0;
	free(st);
	c->user = NULL;
	__atomic_fetch_add(&n_closed, 1, __ATOMIC_RELAXED);
	return 0;
}

static sint32 on_login(CONN *c) {
	if (worker_state(c) == NULL)
		return -1;
	reply(c, c->out_buf, ID_LOGIN, NULL, 0);
	return 0;
}

static sint32 on_who(CONN *c) {
	if (worker_state(c) == NULL)
		return -1;
	uint16 w = c->owner->ind;
	reply(c, c->out_buf, ID_WHO, &w, 2);
	return 0;
}

static sint32 on_sleep(CONN *c) {
	if (worker_state(c) == NULL)
		return -1;
	sleep_ms(body_u32(c, 0));
	reply(c, c->out_buf, ID_SLEEP, NULL, 0);
	return 0;
}

static sint32 on_wseq(CONN *c) {
	if (worker_state(c) == NULL)
		return -1;
	uint32 seq = body_u32(c, 0);
	reply(c, c->out_buf, ID_WSEQ, &seq, 4);
	return 0;
}

/* Checks a pool call's promises; returns its state, NULL on a violation. */
static ST *pool_enter(CONN *c, uint16 id) {
	if (on_a_worker())
		violation("pool handler on a worker thread");
	if (!pthread_equal(pthread_self(), c->owner->thread_id))
		violation("pool handler: c->owner is not the pool thread's record");
	if (c->owner->server != server)
		violation("pool handler: c->owner->server is not the server");
	HEAD *h = (HEAD *) c->in_buf;
	if (h == NULL || h->akg_id != id || h->stx != STX || c->in_buf_len != h->pkglen)
		violation("pool handler: in_buf is not the packet");
	ST *st = (ST *) c->user;
	if (st == NULL || st->magic != ST_MAGIC) {
		violation("pool handler without connected state");
		return NULL;
	}
	if (__atomic_exchange_n(&st->in_pool, 1, __ATOMIC_ACQ_REL))
		violation("two pool handlers of one connection at once");
	__atomic_fetch_add(&n_pool, 1, __ATOMIC_RELAXED);
	return st;
}

static void pool_leave(ST *st) {
	__atomic_store_n(&st->in_pool, 0, __ATOMIC_RELEASE);
}

static sint32 on_psleep(CONN *c) {
	ST *st = pool_enter(c, ID_PSLEEP);
	if (st == NULL)
		return -1;
	uint32 ms = body_u32(c, 0), seq = body_u32(c, 1);
	sleep_ms(ms);
	/* The packet is still there after the sleep. */
	if (body_u32(c, 1) != seq)
		violation("pool handler: in_buf changed during the call");
	slog_info_t(c->owner->qlog, "pool seq %u", (unsigned) seq);
	reply(c, c->out_buf, ID_PSLEEP, &seq, 4);
	pool_leave(st);
	return 0;
}

static sint32 on_pclose(CONN *c) {
	ST *st = pool_enter(c, ID_PCLOSE);
	if (st == NULL)
		return -1;
	sleep_ms(body_u32(c, 0));
	close_conn(c, g_akg_closed_id);
	close_conn(c, g_akg_closed_id); /* a second close is a no-op */
	if (bufferevent_write(c->bufev, "late", 4) != -1)
		violation("pool handler: a write after close_conn was taken");
	pool_leave(st);
	return 0;
}

static sint32 on_pstop(CONN *c) {
	ST *st = pool_enter(c, ID_PSTOP);
	if (st == NULL)
		return -1;
	printf("PSTOP asking\n");
	fflush(stdout);
	mario_stop_server(server); /* from a pool thread: only asks */
	printf("PSTOP asked\n");
	fflush(stdout);
	pool_leave(st);
	return 0;
}

static sint32 on_pslow(CONN *c) {
	ST *st = pool_enter(c, ID_PSLOW);
	if (st == NULL)
		return -1;
	uint32 ms = body_u32(c, 0), seq = body_u32(c, 1);
	sleep_ms(ms);
	reply(c, c->out_buf, ID_PSLOW, &seq, 4);
	pool_leave(st);
	return 0;
}

static sint32 on_unreg(CONN *c) {
	if (worker_state(c) == NULL)
		return -1;
	regist_pool_func(ID_PSLOW, NULL);
	reply(c, c->out_buf, ID_UNREG, NULL, 0);
	return 0;
}

static sint32 on_flood(CONN *c) {
	if (worker_state(c) == NULL)
		return -1;
	static char big[1500];
	uint32 n = body_u32(c, 0);
	for (uint32 i = 0; i < n; i++) {
		HEAD h;
		h.stx = STX;
		h.pkglen = sizeof(big);
		h.akg_id = ID_FLOOD;
		memcpy(big, &h, 8);
		if (bufferevent_write(c->bufev, big, sizeof(big)) != 0)
			return -1;
	}
	return 0;
}

static void on_stall(WORKER *w, uint16 id, uint32 ms) {
	if (on_a_worker())
		violation("stall callback on a worker thread");
	if (getenv("TS_STOP_ON_STALL") != NULL)
		mario_stop_server(server); /* from the monitor: only asks */
	__atomic_fetch_add(&n_stalls, 1, __ATOMIC_RELAXED);
	printf("STALL worker=%u id=%u ms=%u stalled=%d\n", (unsigned) w->ind, (unsigned) id, (unsigned) ms,
			(int) mario_worker_stalled(w));
	fflush(stdout);
}

/* Blocks in fgets(stdin) for good, holding stdin's lock. */
static void *stdin_reader(void *arg) {
	char line[64];
	(void) arg;
	if (fgets(line, sizeof line, stdin) != NULL)
		violation("a line came in on a pipe nobody writes to");
	return NULL;
}

static void on_signal(void) {
	printf("STOPPING\n");
	fflush(stdout);
}

int main(void) {
	sigset_t set;
	server = ts_init_server(&set);
	if (server == NULL)
		return 2;
	if (mario_worker_stalled(NULL) != -1)
		violation("mario_worker_stalled(NULL) is not -1");
	if (getenv("TS_STALL_MS"))
		mario_set_stall_threshold(server, (uint32) env_int("TS_STALL_MS", 1000));
	if (getenv("TS_POOL_THREADS"))
		mario_set_pool_threads(server, (uint32) env_int("TS_POOL_THREADS", 0));
	regist_stx(STX);
	regist_connected_func(on_connected);
	regist_disconnected_func(on_close);
	regist_akg_func(ID_LOGIN, on_login);
	regist_akg_func(ID_WHO, on_who);
	regist_akg_func(ID_SLEEP, on_sleep);
	regist_akg_func(ID_WSEQ, on_wseq);
	regist_pool_func(ID_PSLEEP, on_psleep);
	regist_pool_func(ID_PCLOSE, on_pclose);
	regist_pool_func(ID_PSTOP, on_pstop);
	regist_pool_func(ID_PSLOW, on_pslow);
	regist_akg_func(ID_UNREG, on_unreg);
	regist_akg_func(ID_FLOOD, on_flood);
	regist_stall_func(on_stall);
	if (getenv("TS_STDIN_READER") != NULL) {
		int fds[2];
		pthread_t rt;
		if (pipe(fds) != 0 || dup2(fds[0], 0) < 0)
			return 2;
		pthread_create(&rt, NULL, stdin_reader, NULL);
		pthread_detach(rt);
		nsleep(50000000); /* it is in fgets by now */
	}
	int r = ts_serve(server, &set, on_signal);
	if (r != 0)
		return r;
	printf("SUMMARY connected=%lu closed=%lu pool_calls=%lu stalls=%lu violations=%lu\n",
			__atomic_load_n(&n_connected, __ATOMIC_RELAXED), __atomic_load_n(&n_closed, __ATOMIC_RELAXED),
			__atomic_load_n(&n_pool, __ATOMIC_RELAXED), __atomic_load_n(&n_stalls, __ATOMIC_RELAXED),
			__atomic_load_n(&n_violations, __ATOMIC_RELAXED));
	fflush(stdout);
	if (getenv("TS_LEAVE") == NULL && n_connected != n_closed) {
		fprintf(stderr, "VIOLATION connected %lu != closed %lu\n", n_connected, n_closed);
		return 1;
	}
	if (getenv("TS_LEAVE") != NULL)
		_exit(n_violations ? 1 : 0); /* a worker is stuck: skip exit handlers */
	return n_violations ? 1 : 0;
}
