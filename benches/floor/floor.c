/*
 * floor: the floor of the benchmarks. The maritcp protocol served by a bare
 * epoll loop with no framework at all, the least a server can ask of the
 * kernel per request and per connection; benches/run.py runs it next to
 * maritcp (libmario) and the tokio peer.
 *
 *     floor [--port P=8082] [--workers N=2] [--yield]
 *
 * Every worker thread has its own listening socket on the same port
 * (SO_REUSEPORT: the kernel spreads the connections) in its own epoll. The
 * listener is level-triggered and each of its events accepts one connection
 * (accept4, non-blocking; TCP_NODELAY is set once on the listener and Linux
 * copies it to every accepted socket), which is added with one
 * epoll_ctl(ADD), edge-triggered for input. An input event is one read into
 * the thread's stack buffer, the packets parsed and answered in place, and
 * one write of all the replies. No logging, no timeouts; a connection ends
 * with a bare close (which also takes it out of the epoll). An event with
 * EPOLLERR (the peer reset the connection) closes at once, without a read:
 * nothing it could ask can be answered any more.
 *
 * A worker blocks in epoll_wait whenever it looks for events. With
 * --yield it waits as libmario's workers do (src/worker/mod.rs, `wait`,
 * since 6003e21): after a turn that had events it calls sched_yield and
 * looks again without blocking, and blocks only if that finds nothing; a
 * yield that found nothing makes the next YIELD_SKIP busy turns block
 * directly. On a machine with fewer cores than busy threads (the
 * benchmark's: 2 cores, 2 workers and the load generator) that saves most
 * sleeps and wake-ups; the plain loop is the default, the bare minimum of
 * system calls.
 *
 * Protocol (c-examples/README.md): HEAD {u32 stx, u16 pkglen, u16 akg_id},
 * little-endian, pkglen counting the head, 8..1500; stx 0x8eb69af7.
 *   LOGIN 0x6101, pkglen 10 (u16 uid): reply HEAD {stx, 8, 0x6101}.
 *   ECHO  0x6102, any pkglen: reply the whole packet unchanged.
 * Anything else (wrong stx, pkglen out of range, a LOGIN of another length,
 * another id) closes the connection, after the replies to the packets
 * before it.
 *
 * Rare paths, still correct: a packet split across reads is carried in a
 * small per-connection state; replies the socket does not take wait there
 * (input is not read meanwhile) and go out on EPOLLOUT; a socket that still
 * has input after MAX_READS full reads is re-armed (epoll_ctl MOD) so that
 * it comes back in the next epoll_wait; out of descriptors (the soft limit
 * is raised to the hard one at start), a connection is accepted on a spare
 * descriptor and closed at once.
 *
 * Prints "--------------start server ok--------------" once every listener
 * is bound and listening. SIGTERM or SIGINT stops it: exit status 0.
 * Bad arguments: status 2; a port that cannot be bound: status 1 (a port
 * held by another SO_REUSEPORT listener of the same user is shared, not
 * refused: the kernel's rule).
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define STX 0x8eb69af7u
#define HEAD_LEN 8
#define MAX_PKG_LEN 1500
#define CMD_LOGIN 0x6101
#define CMD_ECHO 0x6102
#define LOGIN_REQ_LEN 10
#define LOGIN_RSP_LEN 8

#define BACKLOG 4096
#define MAX_WORKERS 256
/* events taken per epoll_wait */
#define MAX_EVENTS 256
/* the read buffer, on each worker's stack: a whole window of packets */
#define READ_BUF (64 * 1024)
/* full reads of one socket per event before it is re-armed */
#define MAX_READS 16
/* --yield: busy turns without a yield after one that found nothing */
#define YIELD_SKIP 8

/* epoll data: the descriptor, and what it is in the high half */
#define TAG_CONN 0ull
#define TAG_LISTEN 1ull
#define TAG_STOP 2ull

#define IN_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLET)

static const char USAGE[] = "usage: floor [--port P=8082] [--workers N=2] [--yield]\n";

/* What a connection keeps between events: nothing, usually (no state at
 * all); a packet cut by the end of a read, or replies the socket did not
 * take. Allocated on first need, freed at close. */
struct conn {
	char *out;		/* unsent replies, out_len bytes from out_off */
	uint32_t out_off, out_len;
	uint16_t carry_len;	/* bytes of an unfinished packet in carry */
	uint8_t armed_out;	/* EPOLLOUT added to the registration */
	char carry[MAX_PKG_LEN];
};

struct worker {
	pthread_t thread;
	int ep;
	int lfd;
	int yield;	/* --yield: sched_yield and look again before blocking */
	int spare;	/* a descriptor kept for refusing connections at the limit */
	/* per-descriptor state, indexed by fd, NULL when none; this thread's own */
	struct conn **tab;
	size_t tab_len;
};

static uint32_t get32(const unsigned char *p) {
	return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static uint16_t get16(const unsigned char *p) {
	return (uint16_t) (p[0] | p[1] << 8);
}

static void put_head(unsigned char *p, uint32_t stx, uint16_t len, uint16_t id) {
	p[0] = (unsigned char) stx;
	p[1] = (unsigned char) (stx >> 8);
	p[2] = (unsigned char) (stx >> 16);
	p[3] = (unsigned char) (stx >> 24);
	p[4] = (unsigned char) len;
	p[5] = (unsigned char) (len >> 8);
	p[6] = (unsigned char) id;
	p[7] = (unsigned char) (id >> 8);
}

static struct conn *state_of(struct worker *w, int fd) {
	return (size_t) fd < w->tab_len ? w->tab[fd] : NULL;
}

/* The state of fd, created if it has none; NULL when out of memory. */
static struct conn *state_for(struct worker *w, int fd) {
	struct conn *c = state_of(w, fd);

	if (c != NULL)
		return c;
	if ((size_t) fd >= w->tab_len) {
		size_t n = w->tab_len ? w->tab_len : 1024;
		struct conn **t;

		while (n <= (size_t) fd)
			n *= 2;
		t = realloc(w->tab, n * sizeof(*t));
		if (t == NULL)
			return NULL;
		memset(t + w->tab_len, 0, (n - w->tab_len) * sizeof(*t));
		w->tab = t;
		w->tab_len = n;
	}
	c = calloc(1, sizeof(*c));
	w->tab[fd] = c;
	return c;
}

static void drop(struct worker *w, int fd) {
	struct conn *c = state_of(w, fd);

	if (c != NULL) {
		free(c->out);
		free(c);
		w->tab[fd] = NULL;
	}
	close(fd);
}

/* Writes the waiting replies: 0 all gone, 1 some still wait, -1 error. */
static int flush(struct conn *c, int fd) {
	ssize_t n = write(fd, c->out + c->out_off, c->out_len);

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 1 : -1;
	c->out_off += (uint32_t) n;
	c->out_len -= (uint32_t) n;
	if (c->out_len > 0)
		return 1;
	free(c->out);
	c->out = NULL;
	c->out_off = 0;
	return 0;
}

/* Writes `len` bytes of replies; what the socket does not take waits in the
 * connection's state, watched for EPOLLOUT. 0 all gone, 1 some wait, -1
 * error (or out of memory). */
static int reply(struct worker *w, int fd, const char *buf, size_t len) {
	ssize_t n = write(fd, buf, len);
	struct conn *c;

	if (n == (ssize_t) len)
		return 0;
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			return -1;
		n = 0;
	}
	c = state_for(w, fd);
	if (c == NULL || (c->out = malloc(len - (size_t) n)) == NULL)
		return -1;
	memcpy(c->out, buf + n, len - (size_t) n);
	c->out_off = 0;
	c->out_len = (uint32_t) (len - (size_t) n);
	if (!c->armed_out) {
		struct epoll_event ev;

		ev.events = IN_EVENTS | EPOLLOUT;
		ev.data.u64 = TAG_CONN << 32 | (uint32_t) fd;
		if (epoll_ctl(w->ep, EPOLL_CTL_MOD, fd, &ev) != 0)
			return -1;
		c->armed_out = 1;
	}
	return 1;
}

/*
 * Answers the whole packets at the start of buf[0..have) in place: a reply
 * is never longer than its request, so replies are written over the
 * requests from the start of the buffer. *used: the bytes of whole packets;
 * returns the bytes of replies, or -(that + 1) when a bad packet follows.
 */
static long answer(unsigned char *buf, size_t have, size_t *used) {
	size_t pos = 0, out = 0;

	while (have - pos >= HEAD_LEN) {
		const unsigned char *h = buf + pos;
		uint32_t stx = get32(h);
		uint16_t len = get16(h + 4), id = get16(h + 6);

		if (stx != STX || len < HEAD_LEN || len > MAX_PKG_LEN)
			break;
		if (have - pos < len) {
			*used = pos;
			return (long) out;
		}
		if (id == CMD_LOGIN) {
			if (len != LOGIN_REQ_LEN)
				break;
			put_head(buf + out, stx, LOGIN_RSP_LEN, id);
			out += LOGIN_RSP_LEN;
		} else if (id == CMD_ECHO) {
			if (out != pos)
				memmove(buf + out, h, len);
			out += len;
		} else {
			break;
		}
		pos += len;
	}
	*used = pos;
	return have - pos >= HEAD_LEN ? -(long) out - 1 : (long) out;
}

static void on_conn(struct worker *w, int fd, uint32_t events, unsigned char *buf) {
	struct conn *c = state_of(w, fd);
	/* the peer is going: read on to its end of stream */
	int ending = (events & (EPOLLRDHUP | EPOLLHUP)) != 0;
	int r;

	if (events & EPOLLERR) {
		drop(w, fd);
		return;
	}
	if (c != NULL && c->out_len > 0) {
		/* replies wait: no input is taken until they are gone */
		if (!(events & (EPOLLOUT | EPOLLHUP)))
			return;
		r = flush(c, fd);
		if (r < 0) {
			drop(w, fd);
			return;
		}
		if (r > 0)
			return;
		ending = 1;	/* input edges were missed meanwhile: read to EAGAIN */
	} else if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
		return;
	}

	for (r = 0; r < MAX_READS; r++) {
		size_t have = 0, used, space;
		ssize_t n;
		long out;
		int bad;

		c = state_of(w, fd);
		if (c != NULL && c->carry_len > 0) {
			have = c->carry_len;
			memcpy(buf, c->carry, have);
		}
		space = READ_BUF - have;
		n = read(fd, buf + have, space);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;	/* the carry, if any, stays where it was */
		if (n <= 0) {
			drop(w, fd);
			return;
		}
		have += (size_t) n;
		out = answer(buf, have, &used);
		bad = out < 0;
		if (bad)
			out = -out - 1;
		if (!bad) {
			/* keep an unfinished packet (shorter than MAX_PKG_LEN) for the next read */
			size_t rest = have - used;

			if (rest > 0 || (c != NULL && c->carry_len > 0)) {
				if (c == NULL && (c = state_for(w, fd)) == NULL) {
					drop(w, fd);
					return;
				}
				memcpy(c->carry, buf + used, rest);
				c->carry_len = (uint16_t) rest;
			}
		}
		if (out > 0) {
			int wr = reply(w, fd, (const char *) buf, (size_t) out);

			if (wr < 0 || bad) {
				drop(w, fd);
				return;
			}
			if (wr > 0)
				return;	/* EPOLLOUT brings us back */
		} else if (bad) {
			drop(w, fd);
			return;
		}
		/* edge-triggered: a short read took everything there was */
		if ((size_t) n < space && !ending)
			return;
	}
	/* still input after MAX_READS full reads: come back after the others */
	{
		struct epoll_event ev;

		c = state_of(w, fd);
		ev.events = IN_EVENTS | (c != NULL && c->armed_out ? EPOLLOUT : 0);
		ev.data.u64 = TAG_CONN << 32 | (uint32_t) fd;
		if (epoll_ctl(w->ep, EPOLL_CTL_MOD, fd, &ev) != 0)
			drop(w, fd);
	}
}

static void on_accept(struct worker *w) {
	struct epoll_event ev;
	int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0) {
		if ((errno == EMFILE || errno == ENFILE) && w->spare >= 0) {
			/* out of descriptors: take the connection with the spare
			 * one and close it, or the level-triggered listener would
			 * report it again at once, for as long as the limit lasts */
			close(w->spare);
			fd = accept4(w->lfd, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0)
				close(fd);
			w->spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
		}
		return;
	}
	ev.events = IN_EVENTS;
	ev.data.u64 = TAG_CONN << 32 | (uint32_t) fd;
	if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
		close(fd);
}

static void *worker_main(void *arg) {
	struct worker *w = arg;
	struct epoll_event evs[MAX_EVENTS];
	unsigned char buf[READ_BUF];
	int running = 1, busy = 0, skip = 0;
	size_t i;

	while (running) {
		int n = 0, k;

		if (busy && skip > 0) {
			skip--;
		} else if (busy) {
			sched_yield();
			n = epoll_wait(w->ep, evs, MAX_EVENTS, 0);
			if (n <= 0)
				skip = YIELD_SKIP;	/* the yield bought nothing */
		}
		if (n <= 0)
			n = epoll_wait(w->ep, evs, MAX_EVENTS, -1);
		busy = w->yield && n > 0;

		for (k = 0; k < n; k++) {
			uint64_t d = evs[k].data.u64;
			int fd = (int) (uint32_t) d;

			switch (d >> 32) {
			case TAG_CONN:
				on_conn(w, fd, evs[k].events, buf);
				break;
			case TAG_LISTEN:
				on_accept(w);
				break;
			default:
				running = 0;
				break;
			}
		}
	}
	for (i = 0; i < w->tab_len; i++) {
		if (w->tab[i] != NULL)
			drop(w, (int) i);
	}
	free(w->tab);
	return NULL;
}

static int listener(int port) {
	struct sockaddr_in a;
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t) port);
	a.sin_addr.s_addr = htonl(INADDR_ANY);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0
			|| setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0
			|| setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0
			|| bind(fd, (struct sockaddr *) &a, sizeof(a)) != 0
			|| listen(fd, BACKLOG) != 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int add(int ep, int fd, uint64_t tag) {
	struct epoll_event ev;

	ev.events = EPOLLIN;	/* level-triggered */
	ev.data.u64 = tag << 32 | (uint32_t) fd;
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* A decimal number in lo..hi, or -1. */
static long number(const char *s, long lo, long hi) {
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		return -1;
	return v;
}

int main(int argc, char *argv[]) {
	static struct worker workers[MAX_WORKERS];
	long port = 8082, nworkers = 2;
	int yield = 0;
	sigset_t stop;
	int stopfd, sig = 0, i, err;
	uint64_t one = 1;
	struct rlimit nofile;

	for (i = 1; i < argc; i++) {
		long *dst, lo, hi;

		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			fputs(USAGE, stdout);
			return 0;
		}
		if (strcmp(argv[i], "--yield") == 0) {
			yield = 1;
			continue;
		}
		if (strcmp(argv[i], "--port") == 0) {
			dst = &port;
			lo = 1;
			hi = 65535;
		} else if (strcmp(argv[i], "--workers") == 0) {
			dst = &nworkers;
			lo = 1;
			hi = MAX_WORKERS;
		} else {
			fprintf(stderr, "floor: unknown argument %s\n%s", argv[i], USAGE);
			return 2;
		}
		if (i + 1 >= argc || (*dst = number(argv[i + 1], lo, hi)) < 0) {
			fprintf(stderr, "floor: %s needs a number in %ld..%ld\n%s", argv[i], lo, hi, USAGE);
			return 2;
		}
		i++;
	}

	/* every thread inherits the mask: only sigwait below sees the stop
	 * signals (restored to their defaults: a shell starts background jobs
	 * with SIGINT ignored, and an ignored signal never reaches sigwait) */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGPIPE, SIG_IGN);
	err = pthread_sigmask(SIG_BLOCK, &stop, NULL);
	if (err != 0) {
		fprintf(stderr, "floor: pthread_sigmask: %s\n", strerror(err));
		return 1;
	}

	/* as many connections as the hard limit allows */
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
		nofile.rlim_cur = nofile.rlim_max;
		setrlimit(RLIMIT_NOFILE, &nofile);
	}

	stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (stopfd < 0) {
		perror("floor: eventfd");
		return 1;
	}
	for (i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];

		w->yield = yield;
		w->spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
		w->lfd = listener((int) port);
		if (w->lfd < 0) {
			fprintf(stderr, "floor: port %ld: %s\n", port, strerror(errno));
			return 1;
		}
		w->ep = epoll_create1(EPOLL_CLOEXEC);
		if (w->ep < 0 || add(w->ep, w->lfd, TAG_LISTEN) != 0 || add(w->ep, stopfd, TAG_STOP) != 0) {
			perror("floor: epoll");
			return 1;
		}
	}
	for (i = 0; i < nworkers; i++) {
		err = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
		if (err != 0) {
			fprintf(stderr, "floor: pthread_create: %s\n", strerror(err));
			return 1;
		}
	}
	fputs("--------------start server ok--------------\n", stdout);
	fflush(stdout);

	err = sigwait(&stop, &sig);
	if (err != 0) {
		fprintf(stderr, "floor: sigwait: %s\n", strerror(err));
		return 1;
	}
	/* the eventfd stays readable: every worker's epoll reports it */
	if (write(stopfd, &one, sizeof(one)) != (ssize_t) sizeof(one)) {
		perror("floor: eventfd write");
		return 1;
	}
	for (i = 0; i < nworkers; i++) {
		pthread_join(workers[i].thread, NULL);
		close(workers[i].ep);
		close(workers[i].lfd);
		if (workers[i].spare >= 0)
			close(workers[i].spare);
	}
	close(stopfd);
	return 0;
}
