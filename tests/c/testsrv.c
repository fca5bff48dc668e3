/*
 * testsrv.c: an instrumented MarioTCP application for the test suite.
 *
 * It is written against the unmodified MarioTCP 0.9.9 interface (plus
 * mario_stop_server / mario_set_output_limit) and checks, on every
 * callback, the promises libmario makes: connected first, packets next,
 * exactly one close callback, all on the connection's own worker thread,
 * `user`/`err_type`/`in_buf_len` cleared on a reused slot. Each broken
 * promise counts as a violation; at SIGTERM it prints
 *     SUMMARY connected=N closed=N packets=N violations=N
 * and exits 1 if there was any violation.
 *
 * Environment: TS_PORT (required), TS_WORKERS (2), TS_CONNNUM (1024),
 * TS_RTIMEOUT (0), TS_WTIMEOUT (0), TS_OUTLIMIT (bytes, optional),
 * TS_STX (hex; unset: regist_stx is never called, so DEFAULT_STX applies),
 * TS_LASTWORD (set: the close callback writes a last frame, id 0x000a,
 * body "bye", and logs what bufferevent_write returned as lastword=R).
 * Framing (mario_set_framing; unset: the classic HEAD): TS_FRAMING
 * (head|length|line|fixed|raw), TS_MAXFRAME, TS_BE, TS_LOFF, TS_LSIZE,
 * TS_LADJ, TS_DELIM, TS_FSIZE map to the mario_framing fields; settings
 * mario_set_framing refuses make the program print FRAMING_REFUSED and exit
 * 4. Each frame of a non-HEAD framing is echoed as a record: its length
 * (uint32, little-endian), then its bytes; a frame "CLOSE" (exactly) calls
 * close_err_conn, a frame "FAIL" returns -1. TS_NOFRAMEFUNC (set): no frame
 * handler is registered.
 * Statistics: TS_METRICS=addr serves /metrics there (mario_serve_metrics;
 * refused: prints METRICS_REFUSED and exits 5). Before start_server it
 * checks mario_get_stats (size-versioning, bad arguments) and
 * mario_format_prometheus (snprintf semantics); each broken promise is a
 * violation. After the stop it prints the final numbers, server-wide and
 * per worker (checking that the workers add up to the total):
 *   STATS worker=all connections=N accepted=N ... workers=N stalled_workers=N
 *   STATS worker=W connections=N ...
 *
 * Packet ids:
 *   0x0001 ECHO        reply with the whole packet
 *   0x0002 CLOSE0      close_err_conn(c), return 0
 *   0x0003 CLOSEM1     close_conn(c, closed), return -1
 *   0x0004 FAIL        return -1 without closing
 *   0x0005 INFO        reply id 0x0005, body: uint32 serial, uint32 slot,
 *                      uint16 worker, uint16 workers
 *   0x0007 SUBSCRIBE   the blaster thread starts sending this connection
 *                      frames (id 0x0007, body uint32 serial) from outside
 *                      the workers, and closes it after body[0] (uint32)
 *                      frames if body[1] (uint32) is non-zero
 *   0x0008 FLOOD       reply body uint32 n: n frames of 1500 bytes
 *   0x000b PEER        reply id 0x000b, body: text "cip=A.B.C.D:PORT
 *                      peer=ADDR pid=N" (c->cip/c->cport, then
 *                      mario_conn_peer as a.b.c.d:p or [v6]:p)
 * Close events are logged as
 *   EV close serial=S reason=R packets=P worker=W slot=I [lastword=R]
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"
#include "tsmain.h"
#include <arpa/inet.h>
#include <stddef.h>

#define ID_ECHO 0x0001
#define ID_CLOSE0 0x0002
#define ID_CLOSEM1 0x0003
#define ID_FAIL 0x0004
#define ID_INFO 0x0005
#define ID_SUB 0x0007
#define ID_FLOOD 0x0008
#define ID_BYE 0x000a
#define ID_PEER 0x000b

typedef struct {
	uint32 magic;
	uint32 serial;
	uint32 packets;
	int state;		/* 1 connected, 2 closed */
	int subscribed;
	uint32 blast_left;
	int blast_close;
} ST;

#define ST_MAGIC 0x5eed1e55u

static SERVER *server;
static uint32 stx_used;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint32 next_serial = 1;
static unsigned long n_connected, n_closed, n_packets, n_violations;
static int stopping; /* accessed with __atomic builtins */
static int lastword; /* TS_LASTWORD */
static int head_be;  /* TS_FRAMING=head with TS_BE=1: HEAD fields in network order */

/* The blaster's set of subscribed connections (guarded by lock). */
#define MAX_SUBS 65536
static CONN *subs[MAX_SUBS];
static int n_subs;

static void violation(CONN *c, const char *what) {
	__atomic_fetch_add(&n_violations, 1, __ATOMIC_RELAXED);
	fprintf(stderr, "VIOLATION %s (slot %u)\n", what, c ? c->ind : 0);
}

static void check_thread(CONN *c) {
	if (!pthread_equal(pthread_self(), c->owner->thread_id))
		violation(c, "callback off the owning worker thread");
}

static ST *state_of(CONN *c) {
	ST *st = (ST *) c->user;
	if (st == NULL || st->magic != ST_MAGIC) {
		violation(c, "callback without connected state");
		return NULL;
	}
	return st;
}

static void put_head(char *p, uint16 len, uint16 id) {
	HEAD h;
	h.stx = head_be ? htonl(stx_used) : stx_used;
	h.pkglen = head_be ? htons(len) : len;
	h.akg_id = head_be ? htons(id) : id;
	memcpy(p, &h, sizeof(h));
}

static sint32 on_connected(CONN *c) {
	check_thread(c);
	if (c->user != NULL)
		violation(c, "user not cleared on a new connection");
	if (c->err_type != 0)
		violation(c, "err_type not cleared on a new connection");
	if (c->in_buf_len != 0)
		violation(c, "in_buf_len not cleared on a new connection");
	ST *st = (ST *) calloc(1, sizeof(ST));
	if (st == NULL)
		return -1;
	st->magic = ST_MAGIC;
	st->state = 1;
	pthread_mutex_lock(&lock);
	st->serial = next_serial++;
	n_connected++;
	pthread_mutex_unlock(&lock);
	c->user = st;
	return 0;
}

static void unsubscribe(CONN *c) {
	for (int i = 0; i < n_subs; i++) {
		if (subs[i] == c) {
			subs[i] = subs[--n_subs];
			return;
		}
	}
}

static sint32 on_close(CONN *c) {
	check_thread(c);
	ST *st = state_of(c);
	if (st == NULL)
		return 0;
	if (st->state != 1)
		violation(c, "second close callback");
	if (c->err_type != g_akg_timeout_id && c->err_type != g_akg_closed_id && c->err_type != g_akg_error_id)
		violation(c, "close callback with an unexpected err_type");
	st->state = 2;
	pthread_mutex_lock(&lock);
	if (st->subscribed)
		unsubscribe(c);
	n_closed++;
	pthread_mutex_unlock(&lock);
	if (lastword) {
		char bye[11];
		put_head(bye, sizeof(bye), ID_BYE);
		memcpy(bye + 8, "bye", 3);
		int r = bufferevent_write(c->bufev, bye, sizeof(bye));
		slog_info(c->owner->qlog, "EV close serial=%u reason=%u packets=%u worker=%u slot=%u lastword=%d",
				st->serial, c->err_type, st->packets, c->owner->ind, c->ind, r);
	} else {
		slog_info(c->owner->qlog, "EV close serial=%u reason=%u packets=%u worker=%u slot=%u", st->serial,
				c->err_type, st->packets, c->owner->ind, c->ind);
	}
	st->magic = 0;
	free(st);
	/* c->user is deliberately left dangling: the library must clear it. */
	return 0;
}

/* A HEAD's pkglen in the server's byte order. */
static uint16 pkg_len(const HEAD *h) {
	return head_be ? ntohs(h->pkglen) : h->pkglen;
}

static ST *packet_state(CONN *c) {
	check_thread(c);
	ST *st = state_of(c);
	if (st == NULL)
		return NULL;
	if (st->state != 1)
		violation(c, "packet after close");
	HEAD *h = (HEAD *) c->in_buf;
	if (c->in_buf_len < pkg_len(h))
		violation(c, "packet not contiguous");
	if (mario_frame_len(c) != pkg_len(h))
		violation(c, "mario_frame_len is not the packet's pkglen");
	if ((head_be ? ntohl(h->stx) : h->stx) != stx_used)
		violation(c, "packet with a wrong stx dispatched");
	st->packets++;
	__atomic_fetch_add(&n_packets, 1, __ATOMIC_RELAXED);
	return st;
}

static sint32 on_echo(CONN *c) {
	if (packet_state(c) == NULL)
		return -1;
	HEAD *h = (HEAD *) c->in_buf;
	if (bufferevent_write(c->bufev, c->in_buf, pkg_len(h)) != 0)
		return -1;
	return 0;
}

/* The frame handler of the non-HEAD framings: echo as a record. */
static sint32 on_frame(CONN *c) {
	check_thread(c);
	ST *st = state_of(c);
	if (st == NULL)
		return -1;
	if (st->state != 1)
		violation(c, "frame after close");
	size_t len = mario_frame_len(c);
	if (c->in_buf_len != (len > 65535 ? 65535 : len))
		violation(c, "in_buf_len is not the frame's length (capped to 65535)");
	st->packets++;
	__atomic_fetch_add(&n_packets, 1, __ATOMIC_RELAXED);
	if (len == 5 && memcmp(c->in_buf, "CLOSE", 5) == 0) {
		close_err_conn(c);
		return 0;
	}
	if (len == 4 && memcmp(c->in_buf, "FAIL", 4) == 0)
		return -1;
	unsigned char rec[4] = {(unsigned char) len, (unsigned char) (len >> 8), (unsigned char) (len >> 16),
		(unsigned char) (len >> 24)};
	if (bufferevent_write(c->bufev, rec, sizeof(rec)) != 0 || bufferevent_write(c->bufev, c->in_buf, len) != 0)
		return -1;
	return 0;
}

/* Applies TS_FRAMING and its fields; 0, or -1 if mario_set_framing refused. */
static int set_framing(void) {
	const char *k = getenv("TS_FRAMING");
	if (k == NULL || *k == 0)
		return 0;
	mario_framing f;
	memset(&f, 0, sizeof(f));
	if (strcmp(k, "head") == 0)
		f.kind = MARIO_FRAMING_HEAD;
	else if (strcmp(k, "length") == 0)
		f.kind = MARIO_FRAMING_LENGTH;
	else if (strcmp(k, "line") == 0)
		f.kind = MARIO_FRAMING_LINE;
	else if (strcmp(k, "fixed") == 0)
		f.kind = MARIO_FRAMING_FIXED;
	else if (strcmp(k, "raw") == 0)
		f.kind = MARIO_FRAMING_RAW;
	else
		f.kind = (uint32) atoi(k);
	f.max_frame = (uint32) strtoul(getenv("TS_MAXFRAME") ? getenv("TS_MAXFRAME") : "0", NULL, 10);
	f.big_endian = (uint32) env_int("TS_BE", 0);
	f.length_offset = (uint32) env_int("TS_LOFF", 0);
	f.length_size = (uint32) env_int("TS_LSIZE", 0);
	f.length_adjust = (sint32) env_int("TS_LADJ", 0);
	f.delimiter = getenv("TS_DELIM");
	f.frame_size = (uint32) env_int("TS_FSIZE", 0);
	if (mario_set_framing(server, &f) != 0)
		return -1;
	head_be = f.kind == MARIO_FRAMING_HEAD && f.big_endian;
	return 0;
}

static sint32 on_close0(CONN *c) {
	packet_state(c);
	close_err_conn(c);
	close_err_conn(c); /* a second close is a no-op */
	return 0;
}

static sint32 on_closem1(CONN *c) {
	packet_state(c);
	close_conn(c, g_akg_closed_id);
	return -1;
}

static sint32 on_fail(CONN *c) {
	packet_state(c);
	return -1;
}

static sint32 on_info(CONN *c) {
	ST *st = packet_state(c);
	if (st == NULL)
		return -1;
	char *o = c->out_buf;
	uint32 slot = c->ind;
	uint16 w = c->owner->ind, nw = server->workers->size;
	put_head(o, 20, ID_INFO);
	memcpy(o + 8, &st->serial, 4);
	memcpy(o + 12, &slot, 4);
	memcpy(o + 16, &w, 2);
	memcpy(o + 18, &nw, 2);
	return bufferevent_write(c->bufev, o, 20) == 0 ? 0 : -1;
}

static sint32 on_peer(CONN *c) {
	if (packet_state(c) == NULL)
		return -1;
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	char host[INET6_ADDRSTRLEN] = "?", addr[80] = "?";
	if (mario_conn_peer(c, &ss, &len) != 0) {
		violation(c, "mario_conn_peer failed");
	} else if (ss.ss_family == AF_INET && len == sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *a = (const struct sockaddr_in *) &ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
		snprintf(addr, sizeof addr, "%s:%u", host, (unsigned) ntohs(a->sin_port));
	} else if (ss.ss_family == AF_INET6 && len == sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) &ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
		snprintf(addr, sizeof addr, "[%s]:%u", host, (unsigned) ntohs(a->sin6_port));
	} else {
		violation(c, "mario_conn_peer: bad family or length");
	}
	/* a room too small gets a truncated address and the whole size */
	struct sockaddr_storage small;
	socklen_t slen = 2;
	if (mario_conn_peer(c, &small, &slen) != 0 || slen != len || small.ss_family != ss.ss_family)
		violation(c, "mario_conn_peer with 2 bytes of room");
	if (mario_conn_peer(NULL, &ss, &len) != -1 || mario_conn_peer(c, NULL, &len) != -1
			|| mario_conn_peer(c, &ss, NULL) != -1)
		violation(c, "mario_conn_peer accepted NULL");
	const unsigned char *ip = (const unsigned char *) &c->cip;
	char *o = c->out_buf;
	int n = snprintf(o + 8, 1400, "cip=%u.%u.%u.%u:%u peer=%s pid=%ld", ip[0], ip[1], ip[2], ip[3],
			(unsigned) ntohs(c->cport), addr, (long) getpid());
	put_head(o, (uint16) (8 + n), ID_PEER);
	return bufferevent_write(c->bufev, o, (uint16) (8 + n)) == 0 ? 0 : -1;
}

static sint32 on_sub(CONN *c) {
	ST *st = packet_state(c);
	HEAD *h = (HEAD *) c->in_buf;
	if (st == NULL || h->pkglen != 16)
		return -1;
	uint32 n, cl;
	memcpy(&n, c->in_buf + 8, 4);
	memcpy(&cl, c->in_buf + 12, 4);
	pthread_mutex_lock(&lock);
	if (!st->subscribed && n_subs < MAX_SUBS) {
		st->subscribed = 1;
		st->blast_left = n;
		st->blast_close = cl != 0;
		subs[n_subs++] = c;
	}
	pthread_mutex_unlock(&lock);
	return 0;
}

static sint32 on_flood(CONN *c) {
	if (packet_state(c) == NULL)
		return -1;
	HEAD *h = (HEAD *) c->in_buf;
	uint32 n = 0;
	if (h->pkglen >= 12)
		memcpy(&n, c->in_buf + 8, 4);
	char *o = c->out_buf;
	memset(o, 'x', MAX_PKG_LEN);
	put_head(o, MAX_PKG_LEN, ID_FLOOD);
	for (uint32 i = 0; i < n; i++)
		if (bufferevent_write(c->bufev, o, MAX_PKG_LEN) != 0)
			return -1; /* over the output cap: the library closed it */
	return 0;
}

/* Sends frames to subscribed connections from a thread that is not a
 * worker, and closes some of them from here too. */
static void *blaster(void *arg) {
	(void) arg;
	unsigned int seed = 12345;
	while (!__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&lock);
		for (int k = 0; k < 64 && n_subs > 0; k++) {
			int i = (int) (rand_r(&seed) % (unsigned) n_subs);
			CONN *c = subs[i];
			ST *st = (ST *) c->user;
			char f[12];
			put_head(f, 12, ID_SUB);
			memcpy(f + 8, &st->serial, 4);
			if (st->blast_left > 0) {
				bufferevent_write(c->bufev, f, sizeof(f));
				st->blast_left--;
			}
			if (st->blast_left == 0) {
				subs[i] = subs[--n_subs];
				st->subscribed = 0;
				if (st->blast_close)
					close_conn(c, g_akg_closed_id);
			}
		}
		int idle = n_subs == 0;
		pthread_mutex_unlock(&lock);
		/* 0.2 ms between bursts while someone is subscribed; 20 ms when
		 * idle, so the process's CPU time is the library's */
		nsleep(idle ? 20000000 : 200000);
	}
	return NULL;
}


/* mario_get_stats, mario_get_worker_stats and mario_format_prometheus
 * before the server starts: every number 0, sizes as documented. */
static void check_stats_api(void) {
	mario_stats st;
	unsigned char small[sizeof(mario_stats)], big[sizeof(mario_stats) + 16];
	const size_t pre = offsetof(mario_stats, refused);
	uint32 nw = server->workers->size;
	size_t i, n;
	char tiny[10], *full;

	memset(&st, 0xab, sizeof(st));
	if (mario_get_stats(server, &st, sizeof(st)) != (sint32) sizeof(st))
		violation(NULL, "mario_get_stats: not sizeof(mario_stats) for the full size");
	if (st.workers != nw || st.stalled_workers != 0 || st.connections != 0 || st.accepted != 0
			|| st.bytes_out != 0 || st.log_dropped != 0)
		violation(NULL, "mario_get_stats before start: not zeros with workers set");
	/* a program built against an older, smaller struct: its prefix only */
	memset(small, 0xab, sizeof(small));
	if (mario_get_stats(server, (mario_stats *) (void *) small, pre) != (sint32) pre)
		violation(NULL, "mario_get_stats: a smaller size is not what it returns");
	for (i = 0; i < sizeof(small); i++)
		if (small[i] != (i < pre ? 0 : 0xab))
			violation(NULL, "mario_get_stats: wrote past a smaller size (or not zeros)");
	/* a newer, larger struct: the bytes past ours are zeroed */
	memset(big, 0xab, sizeof(big));
	if (mario_get_stats(server, (mario_stats *) (void *) big, sizeof(big)) != (sint32) sizeof(mario_stats))
		violation(NULL, "mario_get_stats: a larger size does not return sizeof(mario_stats)");
	for (i = sizeof(mario_stats); i < sizeof(big); i++)
		if (big[i] != 0)
			violation(NULL, "mario_get_stats: the rest of a larger struct is not zeroed");
	/* size 0 writes nothing; NULLs and a worker that does not exist are -1 */
	memset(&st, 0xab, sizeof(st));
	if (mario_get_stats(server, &st, 0) != 0 || ((unsigned char *) &st)[0] != 0xab)
		violation(NULL, "mario_get_stats: size 0 is not 0 with nothing written");
	if (mario_get_stats(NULL, &st, sizeof(st)) != -1 || mario_get_stats(server, NULL, sizeof(st)) != -1)
		violation(NULL, "mario_get_stats: NULL is not -1");
	if (mario_get_worker_stats(server, nw, &st, sizeof(st)) != -1
			|| mario_get_worker_stats(NULL, 0, &st, sizeof(st)) != -1
			|| mario_get_worker_stats(server, 0, NULL, sizeof(st)) != -1)
		violation(NULL, "mario_get_worker_stats: bad arguments are not -1");
	if (mario_get_worker_stats(server, nw - 1, &st, sizeof(st)) != (sint32) sizeof(st) || st.workers != 1
			|| st.accepted != 0)
		violation(NULL, "mario_get_worker_stats: not one worker's zeros");
	/* snprintf semantics */
	n = mario_format_prometheus(server, NULL, 0);
	memset(tiny, 'x', sizeof(tiny));
	if (n < 100 || mario_format_prometheus(server, tiny, sizeof(tiny)) != n || tiny[9] != 0
			|| strncmp(tiny, "# HELP ma", 9) != 0)
		violation(NULL, "mario_format_prometheus: not cut like snprintf");
	full = (char *) malloc(n + 1);
	if (full == NULL || mario_format_prometheus(server, full, n + 1) != n || strlen(full) != n
			|| strstr(full, "mario_connections_accepted_total{worker=\"0\"} 0\n") == NULL)
		violation(NULL, "mario_format_prometheus: not the whole text");
	free(full);
	if (mario_format_prometheus(NULL, tiny, sizeof(tiny)) != 0 || tiny[0] != 0)
		violation(NULL, "mario_format_prometheus: NULL server is not an empty text");
	if (mario_serve_metrics(NULL, "127.0.0.1:0") != -1 || mario_serve_metrics(server, NULL) != -1
			|| mario_serve_metrics(server, "not an address") != -1)
		violation(NULL, "mario_serve_metrics: bad arguments are not -1");
}

static void print_stats(const char *who, const mario_stats *st) {
	printf("STATS worker=%s connections=%llu accepted=%llu refused=%llu closed=%llu timeouts=%llu "
			"errors=%llu packets_in=%llu bytes_in=%llu bytes_out=%llu out_queued=%llu stalls=%llu "
			"pool_queued=%llu log_dropped=%llu workers=%u stalled_workers=%u\n",
			who, (unsigned long long) st->connections, (unsigned long long) st->accepted,
			(unsigned long long) st->refused, (unsigned long long) st->closed,
			(unsigned long long) st->timeouts, (unsigned long long) st->errors,
			(unsigned long long) st->packets_in, (unsigned long long) st->bytes_in,
			(unsigned long long) st->bytes_out, (unsigned long long) st->out_queued,
			(unsigned long long) st->stalls, (unsigned long long) st->pool_queued,
			(unsigned long long) st->log_dropped, st->workers, st->stalled_workers);
}

/* The final numbers, after the stop; the workers must add up to the total. */
static void report_stats(void) {
	mario_stats total, w, sum;
	char who[16];
	uint32 i;

	memset(&sum, 0, sizeof(sum));
	if (mario_get_stats(server, &total, sizeof(total)) != (sint32) sizeof(total)) {
		violation(NULL, "mario_get_stats after the stop");
		return;
	}
	print_stats("all", &total);
	for (i = 0; i < server->workers->size; i++) {
		if (mario_get_worker_stats(server, i, &w, sizeof(w)) != (sint32) sizeof(w)) {
			violation(NULL, "mario_get_worker_stats after the stop");
			return;
		}
		snprintf(who, sizeof(who), "%u", i);
		print_stats(who, &w);
		sum.accepted += w.accepted;
		sum.refused += w.refused;
		sum.closed += w.closed;
		sum.timeouts += w.timeouts;
		sum.errors += w.errors;
		sum.packets_in += w.packets_in;
		sum.bytes_in += w.bytes_in;
		sum.bytes_out += w.bytes_out;
		sum.workers += w.workers;
	}
	if (sum.accepted != total.accepted || sum.refused != total.refused || sum.closed != total.closed
			|| sum.timeouts != total.timeouts || sum.errors != total.errors
			|| sum.packets_in != total.packets_in || sum.bytes_in != total.bytes_in
			|| sum.bytes_out != total.bytes_out || sum.workers != total.workers)
		violation(NULL, "the workers' statistics do not add up to the server's");
}

static void on_signal(void) {
	__atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
}

int main(void) {
	sigset_t set;
	server = ts_init_server(&set);
	if (server == NULL)
		return 2;
	lastword = getenv("TS_LASTWORD") != NULL;
	if (set_framing() != 0) {
		fprintf(stderr, "FRAMING_REFUSED\n");
		return 4;
	}
	if (getenv("TS_OUTLIMIT"))
		mario_set_output_limit(server, (size_t) atol(getenv("TS_OUTLIMIT")));
	const char *sx = getenv("TS_STX");
	if (sx && *sx) {
		stx_used = (uint32) strtoul(sx, NULL, 16);
		regist_stx(stx_used);
	} else {
		stx_used = DEFAULT_STX;
	}
	regist_connected_func(on_connected);
	regist_disconnected_func(on_close);
	regist_akg_func(ID_ECHO, on_echo);
	regist_akg_func(ID_PEER, on_peer);
	regist_akg_func(ID_CLOSE0, on_close0);
	regist_akg_func(ID_CLOSEM1, on_closem1);
	regist_akg_func(ID_FAIL, on_fail);
	regist_akg_func(ID_INFO, on_info);
	regist_akg_func(ID_SUB, on_sub);
	regist_akg_func(ID_FLOOD, on_flood);
	if (getenv("TS_NOFRAMEFUNC") == NULL)
		regist_frame_func(on_frame);
	if (start_log_thread() != 0)
		return 2;
	check_stats_api();
	const char *maddr = getenv("TS_METRICS");
	if (maddr && *maddr && mario_serve_metrics(server, maddr) != 0) {
		fprintf(stderr, "METRICS_REFUSED\n");
		return 5;
	}

	pthread_t bt;
	pthread_create(&bt, NULL, blaster, NULL);
	int r = ts_serve(server, &set, on_signal);
	if (r != 0)
		return r;
	__atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
	pthread_join(bt, NULL);
	report_stats();
	printf("SUMMARY connected=%lu closed=%lu packets=%lu violations=%lu\n", n_connected, n_closed, n_packets,
			n_violations);
	fflush(stdout);
	if (n_connected != n_closed) {
		fprintf(stderr, "VIOLATION connected %lu != closed %lu\n", n_connected, n_closed);
		return 1;
	}
	return n_violations ? 1 : 0;
}
