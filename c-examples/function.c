/*
 * function.c
 *
 * Packet handlers of the maritcp sample server. They run on the worker
 * thread that owns the connection.
 */

#include "mario/mario.h"
#include "function.h"
#include "protocol.h"
#include "collect.h"

/* c->user points here while the connection is logged in */
static char logged_in_marker;

sint32 login(CONN *c) {
	HEAD *h = (HEAD *) c->in_buf;
	HEAD *rsp;

	if (h->pkglen != LOGIN_REQ_LEN) {
		const ubyte *ip = (const ubyte *) &c->cip;	/* network byte order */

		slog_err_t(c->owner->qlog,
				"invalid login packet: pkglen %u from %u.%u.%u.%u:%u",
				(unsigned) h->pkglen, ip[0], ip[1], ip[2], ip[3],
				(unsigned) ntohs(c->cport));
		close_err_conn(c);
		return -1;
	}

	/* a second LOGIN on the same connection is answered but not counted */
	if (c->user == NULL) {
		online_add(c->owner->ind);
		c->user = &logged_in_marker;
	}

	rsp = (HEAD *) c->out_buf;
	rsp->stx = h->stx;
	rsp->akg_id = h->akg_id;
	rsp->pkglen = LOGIN_RSP_LEN;
	bufferevent_write(c->bufev, c->out_buf, LOGIN_RSP_LEN);
	return 0;
}

sint32 echo(CONN *c) {
	const HEAD *h = (const HEAD *) c->in_buf;

	/* the framework checked stx and 8 <= pkglen <= MAX_PKG_LEN, and
	 * in_buf holds the whole packet */
	bufferevent_write(c->bufev, c->in_buf, h->pkglen);
	return 0;
}

sint32 log_connection(CONN *c) {
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (mario_conn_peer(c, &ss, &len) != 0) {
		/* only for a NULL argument */
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) &ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
	} else if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *) &ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
	}
	slog_info_t(c->owner->qlog, "connection from %s port %u on worker %u", host, port,
			(unsigned) c->owner->ind);
	return 0;
}

sint32 logout(CONN *c) {
	if (c->user == &logged_in_marker) {
		online_sub(c->owner->ind);
		c->user = NULL;
	}
	return 0;
}
