/*
 * restart.c: connection handles (c->bufev) never name another connection,
 * across servers started and stopped one after another in one process and
 * across slot reuse. Checked by tests/handles.rs; prints "OK" and exits 0,
 * or prints "FAIL <what>" and exits 1.
 *
 * 1. Server A starts; a client connects; its bufev is kept. A is stopped.
 * 2. Server B starts (a new port); a client connects (B's first slot, like
 *    A's). A's stale bufev must be refused (-1) and nothing may reach B's
 *    client; B's client still gets what is written to its own bufev.
 * 3. On B, a client connects, its bufev is kept, it disconnects; the next
 *    client gets the same slot. In that client's connected callback (on
 *    the owning worker) a write to the old bufev must return -1; from the
 *    main thread it may only be queued (0: the worker drops it) or refused;
 *    either way nothing reaches the new client. The same for
 *    mario_close_bufev: the stale handle closes nothing, the live one
 *    closes its connection.
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

#include <poll.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct bufferevent *last_bev;
static uint32 last_slot;
static int n_connected, n_closed;
/* Section 3: the stale handle, and what a write to it returned on the
 * owning worker (1: not tried yet). */
static struct bufferevent *stale_bev;
static int stale_on_worker = 1;

static sint32 on_connected(CONN *c) {
	pthread_mutex_lock(&lock);
	if (stale_bev != NULL && stale_on_worker == 1)
		stale_on_worker = bufferevent_write(stale_bev, "stale", 5);
	last_bev = c->bufev;
	last_slot = c->ind;
	n_connected++;
	pthread_mutex_unlock(&lock);
	return 0;
}

static sint32 on_closed(CONN *c) {
	(void) c;
	pthread_mutex_lock(&lock);
	n_closed++;
	pthread_mutex_unlock(&lock);
	return 0;
}

static void fail(const char *what) {
	printf("FAIL %s\n", what);
	fflush(stdout);
	exit(1);
}

static int wait_count(int *counter, int want) {
	for (int i = 0; i < 500; i++) {
		pthread_mutex_lock(&lock);
		int n = *counter;
		pthread_mutex_unlock(&lock);
		if (n >= want)
			return 1;
		nsleep(10000000);
	}
	return 0;
}

static void *run(void *s) {
	return start_server(s);
}

static int client(int port) {
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16) port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *) &a, sizeof(a)) != 0)
		fail("connect");
	return fd;
}

/* 1 if fd has something to read (or EOF) within ms milliseconds. */
static int readable(int fd, int ms) {
	struct pollfd p = {fd, POLLIN, 0};
	return poll(&p, 1, ms) > 0;
}

static SERVER *start(pthread_t *t) {
	SERVER *s = init_server(0, 1, 16, 0, 0);
	if (s == NULL)
		fail("init_server");
	pthread_create(t, NULL, run, s);
	for (int i = 0; i < 500 && __atomic_load_n(&s->server_fd, __ATOMIC_ACQUIRE) < 0; i++)
		nsleep(10000000);
	if (s->server_fd < 0)
		fail("server did not start");
	return s;
}

int main(void) {
	regist_connected_func(on_connected);
	regist_disconnected_func(on_closed);

	pthread_t ta, tb;
	SERVER *a = start(&ta);
	int ca = client(a->port);
	if (!wait_count(&n_connected, 1))
		fail("A: no connection");
	struct bufferevent *bev_a = last_bev;
	uint32 slot_a = last_slot;
	mario_stop_server(a);
	pthread_join(ta, NULL);
	close(ca);
	if (bufferevent_write(bev_a, "x", 1) != -1)
		fail("write to a stopped server's connection accepted");
	if (mario_close_bufev(bev_a, g_akg_closed_id) != -1)
		fail("close of a stopped server's connection accepted");

	SERVER *b = start(&tb);
	int cb = client(b->port);
	if (!wait_count(&n_connected, 2))
		fail("B: no connection");
	struct bufferevent *bev_b = last_bev;
	if (last_slot != slot_a)
		fail("B's client is not on A's slot (the test needs the same slot)");
	if (bev_b == bev_a)
		fail("B's handle equals A's stale handle");
	if (bufferevent_write(bev_a, "stale", 5) != -1)
		fail("A's stale handle accepted on B");
	if (readable(cb, 200))
		fail("A's stale handle reached B's client");
	if (bufferevent_write(bev_b, "live", 4) != 0)
		fail("B's own handle refused");
	char buf[8];
	if (!readable(cb, 2000) || read(cb, buf, sizeof(buf)) != 4 || memcmp(buf, "live", 4) != 0)
		fail("B's client did not get its own bytes");

	/* Slot reuse on B. */
	int c2 = client(b->port);
	if (!wait_count(&n_connected, 3))
		fail("B: no second connection");
	struct bufferevent *bev_2 = last_bev;
	uint32 slot_2 = last_slot;
	close(c2);
	if (!wait_count(&n_closed, 2))
		fail("B: second connection not closed");
	pthread_mutex_lock(&lock);
	stale_bev = bev_2;
	pthread_mutex_unlock(&lock);
	int c3 = client(b->port);
	if (!wait_count(&n_connected, 4))
		fail("B: no third connection");
	if (last_slot != slot_2)
		fail("the third client is not on the second's slot");
	pthread_mutex_lock(&lock);
	int on_worker = stale_on_worker;
	pthread_mutex_unlock(&lock);
	if (on_worker != -1)
		fail("a closed connection's handle accepted on its worker");
	int r = bufferevent_write(bev_2, "stale", 5);
	if (r != 0 && r != -1)
		fail("bufferevent_write returned neither 0 nor -1");
	if (readable(c3, 200))
		fail("a closed connection's handle reached the slot's next client");
	r = mario_close_bufev(bev_2, g_akg_closed_id);
	if (r != 0 && r != -1)
		fail("mario_close_bufev returned neither 0 nor -1");
	if (readable(c3, 200))
		fail("a closed connection's handle closed the slot's next client");
	if (mario_close_bufev(bev_b, g_akg_closed_id) != 0)
		fail("mario_close_bufev refused a live handle");
	if (!readable(cb, 2000) || read(cb, buf, sizeof(buf)) != 0)
		fail("mario_close_bufev did not close its connection");

	mario_stop_server(b);
	pthread_join(tb, NULL);
	close(cb);
	close(c3);
	printf("OK\n");
	return 0;
}
