/*
 * sdrestart.c: systemd socket activation across servers of one process.
 * It makes a listening socket on 127.0.0.1, puts it on descriptor 3 and
 * sets LISTEN_PID / LISTEN_FDS as systemd would, then runs two servers
 * one after the other on that socket's port. The first must serve the
 * passed socket, the second (which finds it taken and closed) must bind
 * its own. Prints "ROUND r served=0|1 ret=P" per round (served: it
 * listened and took a connection within 2 s); exits 0.
 * Checked by tests/listening.rs.
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

static void *run(void *arg) {
	return start_server(arg);
}

/* 1 if a TCP connection to 127.0.0.1:port succeeds. */
static int served(int port) {
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16) port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int ok = connect(fd, (struct sockaddr *) &sin, sizeof sin) == 0;
	close(fd);
	return ok;
}

int main(void) {
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	/* A port below the ephemeral range (32768 and up by default): once the
	 * first server closes the passed socket, no other test's client can
	 * take the port before the second server binds it. */
	int bound = -1;
	srand((unsigned) getpid());
	for (int i = 0; i < 200 && bound != 0; i++) {
		sin.sin_port = htons((uint16) (20000 + rand() % 12000));
		bound = bind(l, (struct sockaddr *) &sin, sizeof sin);
	}
	if (bound != 0 || listen(l, 16) != 0 || getsockname(l, (struct sockaddr *) &sin, &len) != 0) {
		perror("listen");
		return 2;
	}
	int port = ntohs(sin.sin_port);
	if (l != 3 && (dup2(l, 3) != 3 || close(l) != 0)) {
		perror("dup2");
		return 2;
	}
	char pid[32];
	snprintf(pid, sizeof pid, "%ld", (long) getpid());
	setenv("LISTEN_PID", pid, 1);
	setenv("LISTEN_FDS", "1", 1);
	if (start_log_thread() != 0)
		return 2;
	for (int round = 0; round < 2; round++) {
		SERVER *s = init_server(port, 1, 16, 0, 0);
		if (s == NULL)
			return 2;
		pthread_t t;
		pthread_create(&t, NULL, run, s);
		int ok = 0;
		for (int i = 0; i < 200 && !ok; i++) {
			ok = __atomic_load_n(&s->server_fd, __ATOMIC_ACQUIRE) >= 0 && served(port);
			if (!ok)
				nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
		}
		mario_stop_server(s);
		void *ret;
		pthread_join(t, &ret);
		printf("ROUND %d served=%d ret=%p\n", round, ok, ret);
		fflush(stdout);
	}
	return 0;
}
