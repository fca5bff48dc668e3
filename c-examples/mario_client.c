/*
 * mario_client.c
 *
 * Test client for maritcp: connects, sends one LOGIN packet, reads the
 * 8-byte reply and checks it.
 *
 *     mario_client HOST PORT [UID]
 *
 * Exit status 0 if the reply is a HEAD with stx 0x8eb69af7, pkglen 8 and
 * akg_id 0x6101; 1 otherwise. Needs only the C library, not libmario.
 */

#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netdb.h>

#define CLIENT_STX			0x8eb69af7u
#define CLIENT_LOGIN_ID		0x6101
#define CLIENT_TIMEOUT_S	5

/* the wire format: host byte order, packed, like mario.h's HEAD */
#pragma pack(1)
typedef struct _PKG_HEAD {
	unsigned int stx;
	unsigned short pkglen;
	unsigned short akg_id;
} PKG_HEAD;

typedef struct _LOGIN_PKG {
	PKG_HEAD head;
	unsigned short uid;
} LOGIN_PKG;
#pragma pack()

static void usage(const char *prog) {
	fprintf(stderr, "usage: %s HOST PORT [UID]\n", prog);
}

/* connect to host:port (IPv4 or IPv6); the socket, or -1 */
static int connect_to(const char *host, const char *port) {
	struct addrinfo hints, *res = NULL, *ai;
	int fd = -1;
	int err;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	err = getaddrinfo(host, port, &hints, &res);
	if (err != 0) {
		fprintf(stderr, "mario_client: %s:%s: %s\n", host, port,
				gai_strerror(err));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		fprintf(stderr, "mario_client: cannot connect to %s:%s: %s\n", host,
				port, strerror(errno));
	freeaddrinfo(res);
	return fd;
}

static int write_all(int fd, const void *data, size_t len) {
	const char *p = (const char *) data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t) n;
	}
	return 0;
}

/* 0 when len bytes were read; -1 on error, timeout or early EOF */
static int read_all(int fd, void *data, size_t len) {
	char *p = (char *) data;

	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = 0;
			return -1;
		}
		p += n;
		len -= (size_t) n;
	}
	return 0;
}

int main(int argc, char *argv[]) {
	LOGIN_PKG req;
	PKG_HEAD rsp;
	unsigned long uid = 1;
	struct timeval tv;
	int fd;
	int ok;

	if (argc < 3 || argc > 4) {
		usage(argv[0]);
		return 1;
	}
	if (argc == 4) {
		char *end = NULL;

		errno = 0;
		uid = strtoul(argv[3], &end, 10);
		if (errno != 0 || end == argv[3] || *end != '\0' || uid > 65535) {
			fprintf(stderr, "mario_client: bad UID %s (0..65535)\n", argv[3]);
			return 1;
		}
	}

	fd = connect_to(argv[1], argv[2]);
	if (fd < 0)
		return 1;

	/* do not wait forever for a reply */
	tv.tv_sec = CLIENT_TIMEOUT_S;
	tv.tv_usec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

	memset(&req, 0, sizeof(req));
	req.head.stx = CLIENT_STX;
	req.head.pkglen = (unsigned short) sizeof(req);
	req.head.akg_id = CLIENT_LOGIN_ID;
	req.uid = (unsigned short) uid;
	if (write_all(fd, &req, sizeof(req)) < 0) {
		fprintf(stderr, "mario_client: send failed: %s\n", strerror(errno));
		close(fd);
		return 1;
	}

	if (read_all(fd, &rsp, sizeof(rsp)) < 0) {
		if (errno == 0)
			fprintf(stderr, "mario_client: connection closed before the reply\n");
		else if (errno == EAGAIN || errno == EWOULDBLOCK)
			fprintf(stderr, "mario_client: no reply within %d seconds\n",
					CLIENT_TIMEOUT_S);
		else
			fprintf(stderr, "mario_client: receive failed: %s\n",
					strerror(errno));
		close(fd);
		return 1;
	}
	close(fd);

	printf("reply: stx=0x%08x pkglen=%u akg_id=0x%04x\n", rsp.stx,
			(unsigned) rsp.pkglen, (unsigned) rsp.akg_id);
	ok = rsp.stx == CLIENT_STX && rsp.pkglen == sizeof(PKG_HEAD)
			&& rsp.akg_id == CLIENT_LOGIN_ID;
	if (!ok)
		fprintf(stderr, "mario_client: unexpected reply\n");
	return ok ? 0 : 1;
}
