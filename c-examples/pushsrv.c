/*
 * pushsrv: a push server that runs as a cluster of instances behind an L4
 * balancer (HAProxy), joined by Redis pub/sub.
 *
 *     pushsrv [-a ADDR] [-p PORT] [-r HOST:PORT] [-x off|v1|v2|any]
 *             [-s CIDR]... [-w WORKERS] [-t POOL_THREADS] [-h]
 *
 *     -a  address to listen on (an IP literal; default 0.0.0.0)
 *     -p  port (default 8090)
 *     -r  Redis (default 127.0.0.1:6379; "[::1]:6379" for IPv6)
 *     -x  PROXY protocol expected from the balancer: off (default), v1
 *         (HAProxy's send-proxy), v2 (send-proxy-v2) or any
 *     -s  a network PROXY headers are trusted from (repeatable; any other
 *         peer is refused); without it, every peer may send one
 *     -w  worker threads (default 2)
 *     -t  handler pool threads, each with its own Redis connection
 *         (default 4)
 *
 * A client logs in with a user id; anyone logged in may push a message to
 * any user id, and the message reaches that user on whichever instance
 * holds its connection. SIGTERM or SIGINT stops it cleanly.
 *
 * Protocol: classic MarioTCP packets, HEAD {uint32 stx; uint16 pkglen;
 * uint16 akg_id} then the body, every field in the host's byte order
 * (little-endian on x86), stx 0x48535550, pkglen counting the HEAD, at
 * most 1500 bytes a packet:
 *
 *     LOGIN     0x0101  client -> server  uint32 uid
 *     LOGIN_OK  0x0102  server -> client  uint32 uid (echoed)
 *     PUSH      0x0201  client -> server  uint32 target uid, payload (0..1488 bytes)
 *     PUSH_OK   0x0202  server -> client  uint32 receivers: the Redis subscribers
 *                                         the message reached (PUBLISH's reply):
 *                                         the instances up (and any other
 *                                         subscriber), not the users
 *     PUSH_ERR  0x0203  server -> client  uint32 target uid: not published
 *                                         (Redis unreachable or failing)
 *     DELIVER   0x0301  server -> client  payload (as pushed)
 *
 * LOGIN may be repeated (the connection then stands for the new uid); a
 * second login of a uid on the same instance replaces the first, whose
 * connection is closed. PUSH before LOGIN, or a malformed packet, closes
 * the connection. Each PUSH gets exactly one PUSH_OK or PUSH_ERR, in the
 * order pushed. A message is delivered at most once per instance, to the
 * user logged in there when the instance reads it from Redis; a user
 * offline then never gets it (pub/sub keeps nothing). (The replacement of
 * a login is per instance: a uid logged in on two instances at once gets
 * the message on both.) Messages of one sender to one user arrive in the
 * order pushed.
 *
 * How it works:
 *
 * - Every instance holds one Redis connection on a thread of its own, the
 *   subscriber, that runs PSUBSCRIBE push.* before the server starts, so
 *   that nothing published after a LOGIN_OK can be missed. It reads the
 *   messages in a blocking loop, looks the target up in this instance's
 *   table (uid -> the connection's `struct bufferevent *`, under a mutex),
 *   and sends DELIVER with bufferevent_write, which is safe from any
 *   thread: the write becomes a command to the connection's worker, and a
 *   handle whose connection has closed meanwhile is refused, never
 *   delivered to the next client of the slot.
 *   Why a pattern and a local lookup: every instance sees every message,
 *   which is simple and has no race between a login and a subscription
 *   (no SUBSCRIBE round trip per login, nothing to unsubscribe on close).
 *   The price is that each instance reads the whole traffic. A bigger
 *   deployment would SUBSCRIBE push.<uid> per logged-in user on the
 *   instance holding it (Redis then routes, at one subscription per user),
 *   or give each instance a channel of its own and keep a user -> instance
 *   map in Redis (SET on login, a PUBLISH to the instance's channel).
 *
 * - PUSH runs on the handler pool (regist_pool_func): PUBLISH is a
 *   blocking round trip to Redis, which must not hold up a worker and its
 *   thousands of other connections. Each pool thread has its own hiredis
 *   connection (thread-specific, made on first use, dropped on an error
 *   and made again by the next PUSH). A sender's messages stay in order:
 *   the pool runs one packet of a connection at a time, PUBLISH returns
 *   only once Redis has queued the message for every subscriber (so the
 *   sender's next one is queued after it), and each subscriber reads and
 *   delivers in that order, from one thread.
 *
 * - If Redis goes away: the subscriber logs an error and tries again every
 *   100 ms (one error line per 5 seconds at most, counting the ones left
 *   out), then subscribes again; what was published meanwhile is lost. A
 *   PUSH that cannot be published within about a second gets PUSH_ERR. A
 *   PUBLISH is never sent twice: a failure after it may have reached
 *   Redis is reported, not retried, so no message is delivered twice.
 *
 * - One log line per login names the real client's address
 *   (mario_conn_peer, which with -x gives the address from the PROXY
 *   header rather than the balancer's).
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

#include <hiredis.h>
#include <stdint.h>

#define PUSH_STX 0x48535550u /* "PUSH" in memory on little-endian hosts */
#define ID_LOGIN 0x0101
#define ID_LOGIN_OK 0x0102
#define ID_PUSH 0x0201
#define ID_PUSH_OK 0x0202
#define ID_PUSH_ERR 0x0203
#define ID_DELIVER 0x0301
#define MAX_PAYLOAD (MAX_PKG_LEN - SIZE_OF_HEAD - 4) /* 1488 */

#define CHANNEL_PREFIX "push."
#define CHANNEL_PATTERN "push.*"
#define CONNNUM 10000        /* connections per worker */
#define WRITE_TIMEOUT 30     /* seconds: a client that stops reading is reset */
#define RETRY_MS 100         /* between attempts to reach Redis */
#define PUBLISH_WAIT_MS 1000 /* how long a PUSH waits for Redis */
#define ERROR_LOG_EVERY_MS 5000

/* ---- settings ------------------------------------------------------- */

static const char *listen_addr = "0.0.0.0";
static int listen_port = 8090;
static char redis_host[256] = "127.0.0.1";
static int redis_port = 6379;
static uint32 proxy_mode = MARIO_PROXY_OFF;
static int workers = 2;
static int pool_threads = 4;

/* ---- counters (atomic; printed at the end) ---------------------------- */

static unsigned long n_logins, n_pushes, n_push_errors, n_delivered;

static void count(unsigned long *c) {
	__atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

static long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* ---- Redis errors, one line per ERROR_LOG_EVERY_MS at most ----------- */

static pthread_mutex_t errlog_lock = PTHREAD_MUTEX_INITIALIZER;
static long long errlog_last = -1;
static unsigned long errlog_left_out;

static void redis_error(LOG_QUEUE *q, const char *what, const char *detail) {
	long long now = now_ms();
	unsigned long left_out = 0;
	int log_it = 0;
	pthread_mutex_lock(&errlog_lock);
	if (errlog_last < 0 || now - errlog_last >= ERROR_LOG_EVERY_MS) {
		log_it = 1;
		left_out = errlog_left_out;
		errlog_left_out = 0;
		errlog_last = now;
	} else {
		errlog_left_out++;
	}
	pthread_mutex_unlock(&errlog_lock);
	/* braces: the slog_* macros end in ';' (as in 0.9.9) */
	if (log_it && left_out > 0) {
		slog_err_t(q, "redis %s:%d: %s: %s (%lu similar errors not logged)", redis_host, redis_port, what,
				detail, left_out);
	} else if (log_it) {
		slog_err_t(q, "redis %s:%d: %s: %s", redis_host, redis_port, what, detail);
	}
}

/* A blocking connection to Redis, or NULL (the error logged). */
static redisContext *redis_connect(LOG_QUEUE *q, const char *who) {
	struct timeval tv = {1, 0};
	redisContext *ctx = redisConnectWithTimeout(redis_host, redis_port, tv);
	if (ctx == NULL) {
		redis_error(q, who, "out of memory");
		return NULL;
	}
	if (ctx->err) {
		redis_error(q, who, ctx->errstr);
		redisFree(ctx);
		return NULL;
	}
	redisEnableKeepAlive(ctx);
	return ctx;
}

/* ---- who is logged in here: uid -> connection ------------------------ */

/* One per logged-in connection, c->user. In the table while it holds its
 * uid on this instance. */
typedef struct session {
	uint32 uid;
	int in_table;
	struct bufferevent *bufev;
	struct session *next;
} SESSION;

#define BUCKETS 4096 /* a power of two */
static SESSION *table[BUCKETS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static SESSION **bucket(uint32 uid) {
	return &table[(uid * 2654435761u) & (BUCKETS - 1)];
}

static SESSION *find_locked(uint32 uid) {
	SESSION *s;
	for (s = *bucket(uid); s != NULL; s = s->next) {
		if (s->uid == uid)
			return s;
	}
	return NULL;
}

static void unlink_locked(SESSION *s) {
	SESSION **p;
	for (p = bucket(s->uid); *p != NULL; p = &(*p)->next) {
		if (*p == s) {
			*p = s->next;
			break;
		}
	}
	s->next = NULL;
	s->in_table = 0;
}

static void link_locked(SESSION *s) {
	SESSION **b = bucket(s->uid);
	s->next = *b;
	*b = s;
	s->in_table = 1;
}

/* "a.b.c.d:port" or "[v6]:port": the real client's address. */
static void peer_text(const CONN *c, char *out, size_t n) {
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];
	memset(&ss, 0, sizeof(ss));
	if (mario_conn_peer(c, &ss, &len) != 0) {
		snprintf(out, n, "?");
	} else if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *) &ss;
		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(out, n, "%s:%u", ip, (unsigned) ntohs(a->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) &ss;
		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		snprintf(out, n, "[%s]:%u", ip, (unsigned) ntohs(a->sin6_port));
	} else {
		snprintf(out, n, "?");
	}
}

static void reply(CONN *c, uint16 id, uint32 value) {
	char pkt[SIZE_OF_HEAD + 4];
	HEAD h;
	h.stx = PUSH_STX;
	h.pkglen = (uint16) sizeof(pkt);
	h.akg_id = id;
	memcpy(pkt, &h, SIZE_OF_HEAD);
	memcpy(pkt + SIZE_OF_HEAD, &value, 4);
	bufferevent_write(c->bufev, pkt, sizeof(pkt));
}

/* LOGIN, on the connection's worker (nothing in it blocks). */
static sint32 on_login(CONN *c) {
	const HEAD *h = (const HEAD *) c->in_buf;
	SESSION *s = (SESSION *) c->user;
	struct bufferevent *kick = NULL;
	char peer[INET6_ADDRSTRLEN + 8];
	uint32 uid;

	if (h->pkglen != SIZE_OF_HEAD + 4) {
		slog_warn_t(c->owner->qlog, "LOGIN of %u bytes, expected 12: closing", (unsigned) h->pkglen);
		return -1;
	}
	memcpy(&uid, c->in_buf + SIZE_OF_HEAD, 4);
	if (s == NULL) {
		s = (SESSION *) calloc(1, sizeof(SESSION));
		if (s == NULL)
			return -1;
		s->bufev = c->bufev;
		c->user = s;
	}
	pthread_mutex_lock(&table_lock);
	if (s->in_table && s->uid != uid)
		unlink_locked(s);
	if (!s->in_table) {
		SESSION *old = find_locked(uid);
		if (old != NULL) {
			unlink_locked(old);
			kick = old->bufev; /* old is its connection's: not used after the unlock */
		}
		s->uid = uid;
		link_locked(s);
	}
	pthread_mutex_unlock(&table_lock);
	/* Not under the lock: on this worker, the close callback (which takes
	 * the lock) may run at once. */
	if (kick != NULL)
		mario_close_bufev(kick, g_akg_closed_id);

	count(&n_logins);
	peer_text(c, peer, sizeof(peer));
	slog_info_t(c->owner->qlog, "login uid=%u peer=%s%s", uid, peer, kick ? " (replaces an earlier login)" : "");
	reply(c, ID_LOGIN_OK, uid);
	return 0;
}

/* Closed, error or timeout, on the worker: forget the login. */
static sint32 on_closed(CONN *c) {
	SESSION *s = (SESSION *) c->user;
	if (s == NULL)
		return 0;
	pthread_mutex_lock(&table_lock);
	if (s->in_table)
		unlink_locked(s);
	pthread_mutex_unlock(&table_lock);
	free(s);
	c->user = NULL;
	return 0;
}

/* ---- PUSH, on a pool thread ------------------------------------------ */

static pthread_key_t publisher_key;

static void publisher_free(void *ctx) {
	redisFree((redisContext *) ctx);
}

/* PUBLISH push.<target> <payload> on this pool thread's connection, made
 * if needed within PUBLISH_WAIT_MS. 0 and the subscribers reached in
 * *receivers, or -1 (logged). Never sends a PUBLISH twice. */
static int publish(LOG_QUEUE *q, uint32 target, const char *payload, size_t len, long long *receivers) {
	redisContext *ctx = (redisContext *) pthread_getspecific(publisher_key);
	long long give_up = now_ms() + PUBLISH_WAIT_MS;
	char channel[32];
	redisReply *r;

	while (ctx == NULL) {
		ctx = redis_connect(q, "publisher");
		if (ctx != NULL) {
			struct timeval tv = {2, 0}; /* a PUBLISH waits this long for its reply */
			redisSetTimeout(ctx, tv);
			pthread_setspecific(publisher_key, ctx);
		} else if (now_ms() + RETRY_MS > give_up) {
			return -1;
		} else {
			sleep_ms(RETRY_MS);
		}
	}
	snprintf(channel, sizeof(channel), CHANNEL_PREFIX "%u", (unsigned) target);
	r = (redisReply *) redisCommand(ctx, "PUBLISH %b %b", channel, strlen(channel), payload, len);
	if (r == NULL) {
		/* The connection is broken: the next PUSH makes another. */
		redis_error(q, "PUBLISH", ctx->errstr);
		pthread_setspecific(publisher_key, NULL);
		redisFree(ctx);
		return -1;
	}
	if (r->type != REDIS_REPLY_INTEGER) {
		redis_error(q, "PUBLISH", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		freeReplyObject(r);
		return -1;
	}
	*receivers = r->integer;
	freeReplyObject(r);
	return 0;
}

static sint32 on_push(CONN *c) {
	const HEAD *h = (const HEAD *) c->in_buf;
	long long receivers = 0;
	uint32 target;

	if (c->user == NULL) {
		slog_warn_t(c->owner->qlog, "PUSH before LOGIN: closing");
		return -1;
	}
	if (h->pkglen < SIZE_OF_HEAD + 4) {
		slog_warn_t(c->owner->qlog, "PUSH of %u bytes, expected 12 or more: closing", (unsigned) h->pkglen);
		return -1;
	}
	memcpy(&target, c->in_buf + SIZE_OF_HEAD, 4);
	count(&n_pushes);
	if (publish(c->owner->qlog, target, c->in_buf + SIZE_OF_HEAD + 4, h->pkglen - SIZE_OF_HEAD - 4U,
			&receivers) == 0) {
		reply(c, ID_PUSH_OK, receivers < 0 ? 0 : receivers > (long long) UINT32_MAX ? UINT32_MAX : (uint32) receivers);
	} else {
		count(&n_push_errors);
		reply(c, ID_PUSH_ERR, target);
	}
	return 0;
}

/* ---- the subscriber thread ------------------------------------------- */

static pthread_mutex_t sub_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sub_cond = PTHREAD_COND_INITIALIZER;
static int sub_ready;       /* subscribed at least once */
static int stop_requested;  /* by a signal, or start_server returned */
static int sub_fd = -1;     /* the subscriber's socket while it reads */

/* Stops the subscriber: wakes it from its read or its pause. */
static void request_stop(void) {
	pthread_mutex_lock(&sub_lock);
	stop_requested = 1;
	if (sub_fd >= 0)
		shutdown(sub_fd, SHUT_RDWR);
	pthread_cond_broadcast(&sub_cond);
	pthread_mutex_unlock(&sub_lock);
}

static int stopping(void) {
	int s;
	pthread_mutex_lock(&sub_lock);
	s = stop_requested;
	pthread_mutex_unlock(&sub_lock);
	return s;
}

/* Sleeps RETRY_MS unless a stop comes first. */
static void pause_unless_stopping(void) {
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += RETRY_MS * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&sub_lock);
	while (!stop_requested && pthread_cond_timedwait(&sub_cond, &sub_lock, &until) == 0)
		;
	pthread_mutex_unlock(&sub_lock);
}

/* One message from Redis: DELIVER it if its user is logged in here. */
static void deliver(LOG_QUEUE *q, const redisReply *m) {
	const redisReply *channel, *payload;
	struct bufferevent *bufev = NULL;
	char pkt[MAX_PKG_LEN];
	unsigned long long uid = 0;
	size_t i, plen = sizeof(CHANNEL_PREFIX) - 1;
	HEAD h;

	/* ["pmessage", pattern, channel, message] */
	if (m->type != REDIS_REPLY_ARRAY || m->elements != 4 || m->element[0]->type != REDIS_REPLY_STRING
			|| strcmp(m->element[0]->str, "pmessage") != 0 || m->element[2]->type != REDIS_REPLY_STRING
			|| m->element[3]->type != REDIS_REPLY_STRING)
		return;
	channel = m->element[2];
	payload = m->element[3];
	/* push.<decimal uid, at most 2^32 - 1> */
	if (channel->len <= plen || channel->len > plen + 10 || memcmp(channel->str, CHANNEL_PREFIX, plen) != 0)
		return;
	for (i = plen; i < channel->len; i++) {
		if (channel->str[i] < '0' || channel->str[i] > '9')
			return;
		uid = uid * 10 + (unsigned) (channel->str[i] - '0');
	}
	if (uid > UINT32_MAX)
		return;
	if (payload->len > MAX_PAYLOAD) {
		redis_error(q, "subscriber", "a message over 1488 bytes: dropped");
		return;
	}

	pthread_mutex_lock(&table_lock);
	{
		SESSION *s = find_locked((uint32) uid);
		if (s != NULL)
			bufev = s->bufev;
	}
	pthread_mutex_unlock(&table_lock);
	if (bufev == NULL)
		return; /* not logged in here */

	h.stx = PUSH_STX;
	h.pkglen = (uint16) (SIZE_OF_HEAD + payload->len);
	h.akg_id = ID_DELIVER;
	memcpy(pkt, &h, SIZE_OF_HEAD);
	memcpy(pkt + SIZE_OF_HEAD, payload->str, payload->len);
	/* -1: the connection closed meanwhile (a stale handle is refused) or
	 * the server is stopping; the message is then lost, as for a user not
	 * logged in. */
	if (bufferevent_write(bufev, pkt, SIZE_OF_HEAD + payload->len) == 0)
		count(&n_delivered);
}

static void *subscriber(void *arg) {
	LOG_QUEUE *q = create_log_queue(); /* this thread's own */
	(void) arg;
	while (!stopping()) {
		redisContext *ctx = redis_connect(q, "subscriber");
		redisReply *r;
		int ok;
		if (ctx == NULL) {
			pause_unless_stopping();
			continue;
		}
		r = (redisReply *) redisCommand(ctx, "PSUBSCRIBE %s", CHANNEL_PATTERN);
		ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 3;
		if (!ok)
			redis_error(q, "PSUBSCRIBE", r == NULL ? ctx->errstr : r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		if (r != NULL)
			freeReplyObject(r);
		if (!ok) {
			redisFree(ctx);
			pause_unless_stopping();
			continue;
		}
		pthread_mutex_lock(&sub_lock);
		if (stop_requested) {
			pthread_mutex_unlock(&sub_lock);
			redisFree(ctx);
			break;
		}
		sub_fd = ctx->fd;
		sub_ready = 1;
		pthread_cond_broadcast(&sub_cond);
		pthread_mutex_unlock(&sub_lock);
		slog_info_t(q, "subscribed to %s on redis %s:%d", CHANNEL_PATTERN, redis_host, redis_port);

		for (;;) {
			void *msg = NULL;
			if (redisGetReply(ctx, &msg) != REDIS_OK)
				break;
			deliver(q, (const redisReply *) msg);
			freeReplyObject(msg);
		}

		pthread_mutex_lock(&sub_lock);
		sub_fd = -1;
		pthread_mutex_unlock(&sub_lock);
		if (!stopping()) {
			redis_error(q, "subscriber connection lost", ctx->errstr);
			pause_unless_stopping();
		}
		redisFree(ctx);
	}
	return NULL;
}

/* ---- main ------------------------------------------------------------ */

static sigset_t stop_signals;

/* Waits for SIGTERM or SIGINT, then stops the subscriber and the server
 * (before start_server, mario_stop_server makes it return at once). */
static void *stopper(void *arg) {
	SERVER *server = (SERVER *) arg;
	int sig = 0;
	while (sigwait(&stop_signals, &sig) != 0)
		;
	/* main cancels this thread in sigwait only; never inside the library */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	request_stop();
	printf("pushsrv: got %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
	fflush(stdout);
	mario_stop_server(server);
	return NULL;
}

/* The usage line: on stdout and exit 0 when asked for (-h), else on
 * stderr and exit 2. */
static void usage(const char *argv0, int asked) {
	fprintf(asked ? stdout : stderr,
			"usage: %s [-a ADDR] [-p PORT] [-r HOST:PORT] [-x off|v1|v2|any] [-s CIDR]... [-w WORKERS] "
			"[-t POOL_THREADS]\n"
			"  (defaults: -a 0.0.0.0 -p 8090 -r 127.0.0.1:6379 -x off -w 2 -t 4; see the top of pushsrv.c)\n",
			argv0);
	exit(asked ? 0 : 2);
}

static int parse_int(const char *s, int lo, int hi, int *out) {
	char *end = NULL;
	long v;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = (int) v;
	return 0;
}

/* HOST:PORT or [V6]:PORT */
static int parse_redis(const char *s) {
	const char *colon = strrchr(s, ':');
	size_t hlen;
	if (colon == NULL || parse_int(colon + 1, 1, 65535, &redis_port) != 0)
		return -1;
	hlen = (size_t) (colon - s);
	if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']') {
		s++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= sizeof(redis_host))
		return -1;
	memcpy(redis_host, s, hlen);
	redis_host[hlen] = '\0';
	return 0;
}

int main(int argc, char *argv[]) {
	const char *sources[16];
	int n_sources = 0, opt, i, err;
	SERVER *server;
	pthread_t stop_thread, sub_thread;
	void *ret;

	while ((opt = getopt(argc, argv, "a:p:r:x:s:w:t:h")) != -1) {
		switch (opt) {
		case 'h':
			usage(argv[0], 1);
			break;
		case 'a':
			listen_addr = optarg;
			break;
		case 'p':
			if (parse_int(optarg, 0, 65535, &listen_port) != 0)
				usage(argv[0], 0);
			break;
		case 'r':
			if (parse_redis(optarg) != 0)
				usage(argv[0], 0);
			break;
		case 'x':
			if (strcmp(optarg, "off") == 0)
				proxy_mode = MARIO_PROXY_OFF;
			else if (strcmp(optarg, "v1") == 0)
				proxy_mode = MARIO_PROXY_V1;
			else if (strcmp(optarg, "v2") == 0)
				proxy_mode = MARIO_PROXY_V2;
			else if (strcmp(optarg, "any") == 0)
				proxy_mode = MARIO_PROXY_ANY;
			else
				usage(argv[0], 0);
			break;
		case 's':
			if (n_sources == (int) (sizeof(sources) / sizeof(sources[0])))
				usage(argv[0], 0);
			sources[n_sources++] = optarg;
			break;
		case 'w':
			if (parse_int(optarg, 1, 256, &workers) != 0)
				usage(argv[0], 0);
			break;
		case 't':
			if (parse_int(optarg, 1, 1024, &pool_threads) != 0)
				usage(argv[0], 0);
			break;
		default:
			usage(argv[0], 0);
		}
	}
	if (optind != argc)
		usage(argv[0], 0);
	if (n_sources > 0 && proxy_mode == MARIO_PROXY_OFF) {
		fprintf(stderr, "[error] -s (a trusted PROXY source) needs -x v1, v2 or any\n");
		return 2;
	}

	/* Block the stop signals before any thread exists (every thread
	 * inherits the mask): only the stopper receives them. A shell starts
	 * background jobs with SIGINT ignored, and an ignored signal never
	 * reaches sigwait: restore the default. */
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);

	/* read timeout 0: a push client is idle by nature (the balancer's
	 * client timeout, or TCP keepalive, bounds a dead one). */
	server = mario_init_server_addr(listen_addr, listen_port, workers, CONNNUM, 0, WRITE_TIMEOUT);
	if (server == NULL)
		return EXIT_FAILURE;
	if (mario_set_proxy_protocol(server, proxy_mode) != 0)
		return EXIT_FAILURE;
	for (i = 0; i < n_sources; i++) {
		if (mario_add_proxy_source(server, sources[i]) != 0)
			return EXIT_FAILURE;
	}
	mario_set_pool_threads(server, (uint32) pool_threads);
	regist_stx(PUSH_STX);
	regist_akg_func(ID_LOGIN, on_login);
	regist_pool_func(ID_PUSH, on_push);
	regist_disconnected_func(on_closed);
	err = pthread_key_create(&publisher_key, publisher_free);
	if (err != 0) {
		fprintf(stderr, "[error] pthread_key_create: %s\n", strerror(err));
		return EXIT_FAILURE;
	}
	if (start_log_thread() != 0) {
		fprintf(stderr, "[error] start_log_thread failed\n");
		return EXIT_FAILURE;
	}
	printf("pushsrv: %s port %d, redis %s:%d, proxy %s, %d workers, %d pool threads\n", listen_addr,
			listen_port, redis_host, redis_port,
			proxy_mode == MARIO_PROXY_OFF ? "off" : proxy_mode == MARIO_PROXY_V1 ? "v1"
					: proxy_mode == MARIO_PROXY_V2 ? "v2" : "any",
			workers, pool_threads);
	fflush(stdout);

	err = pthread_create(&stop_thread, NULL, stopper, server);
	if (err == 0) {
		err = pthread_create(&sub_thread, NULL, subscriber, NULL);
		if (err != 0) {
			pthread_cancel(stop_thread); /* sigwait is a cancellation point */
			pthread_join(stop_thread, NULL);
		}
	}
	if (err != 0) {
		fprintf(stderr, "[error] pthread_create: %s\n", strerror(err));
		return EXIT_FAILURE;
	}

	/* Serve only once subscribed: a user told LOGIN_OK then misses nothing
	 * published after it. */
	pthread_mutex_lock(&sub_lock);
	while (!sub_ready && !stop_requested)
		pthread_cond_wait(&sub_cond, &sub_lock);
	pthread_mutex_unlock(&sub_lock);

	ret = start_server(server);

	/* Stopped by the stopper, or the server could not start. */
	if (!stopping())
		pthread_cancel(stop_thread); /* still in sigwait, a cancellation point */
	pthread_join(stop_thread, NULL);
	request_stop();
	pthread_join(sub_thread, NULL);
	if (ret != (void *) 0) {
		fprintf(stderr, "[error] start_server failed on %s port %d\n", listen_addr, listen_port);
		return EXIT_FAILURE;
	}
	printf("pushsrv stopped: logins=%lu pushes=%lu push_errors=%lu delivered=%lu\n", n_logins, n_pushes,
			n_push_errors, n_delivered);
	fflush(stdout);
	return EXIT_SUCCESS;
}
