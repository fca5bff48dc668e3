/*
 * mario_chat: a line-based chat server on libmario's LINE framing, for
 * telnet or nc:
 *
 *     ./mario_chat [port [workers]]        (defaults: 5555, 2)
 *     telnet 127.0.0.1 5555
 *
 * Every line a client sends (ended by "\n" or "\r\n", at most 512 bytes)
 * goes to every other client as "name: text". Commands:
 *     /nick NAME   take a name (1..20 letters, digits, '_' or '-')
 *     /who         list who is here
 *     /quit        leave ("bye" is sent, then the connection closes)
 * A line longer than 512 bytes closes its connection (libmario logs a
 * warning). SIGINT or SIGTERM stops the server.
 *
 * What it shows: mario_set_framing with MARIO_FRAMING_LINE, a frame
 * handler (regist_frame_func) reading c->in_buf / mario_frame_len(c), and
 * writes to connections of other workers by their bufev handle, from a
 * handler: a handle never names another client, so a member that left
 * meanwhile just gets nothing.
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

#define MAX_LINE 512
#define MAX_NAME 20
#define MAX_MEMBERS 4096

/* One member of the room; c->user points to it. The room's list holds the
 * same pointers, under `room_lock`: a handler on one worker reads the
 * names and handles of members of other workers. */
typedef struct {
	struct bufferevent *bufev;
	char name[MAX_NAME + 1];
} MEMBER;

static pthread_mutex_t room_lock = PTHREAD_MUTEX_INITIALIZER;
static MEMBER *room[MAX_MEMBERS];
static int n_room;
static unsigned next_guest = 1;
static SERVER *server;

/* Sends `len` bytes of `msg` to every member but `except` (NULL: all).
 * Called with room_lock held. */
static void broadcast_locked(const MEMBER *except, const char *msg, size_t len) {
	for (int i = 0; i < n_room; i++) {
		if (room[i] != except)
			bufferevent_write(room[i]->bufev, msg, len);
	}
}

static void broadcast(const MEMBER *except, const char *msg, size_t len) {
	pthread_mutex_lock(&room_lock);
	broadcast_locked(except, msg, len);
	pthread_mutex_unlock(&room_lock);
}

static void say(CONN *c, const char *text) {
	bufferevent_write(c->bufev, text, strlen(text));
}

static sint32 on_connected(CONN *c) {
	MEMBER *m = (MEMBER *) calloc(1, sizeof(MEMBER));
	if (m == NULL)
		return -1;
	m->bufev = c->bufev;
	char msg[96];
	pthread_mutex_lock(&room_lock);
	if (n_room == MAX_MEMBERS) {
		pthread_mutex_unlock(&room_lock);
		free(m);
		say(c, "* the room is full\r\n");
		close_err_conn(c);
		return 0;
	}
	snprintf(m->name, sizeof(m->name), "guest%u", next_guest++);
	room[n_room++] = m;
	int n = snprintf(msg, sizeof(msg), "* %s joined\r\n", m->name);
	broadcast_locked(m, msg, (size_t) n);
	pthread_mutex_unlock(&room_lock);
	c->user = m;
	snprintf(msg, sizeof(msg), "* welcome, %s (/nick NAME, /who, /quit)\r\n", m->name);
	say(c, msg);
	return 0;
}

static sint32 on_closed(CONN *c) {
	MEMBER *m = (MEMBER *) c->user;
	if (m == NULL)
		return 0; /* refused: the room was full */
	char msg[64];
	pthread_mutex_lock(&room_lock);
	for (int i = 0; i < n_room; i++) {
		if (room[i] == m) {
			room[i] = room[--n_room];
			break;
		}
	}
	int n = snprintf(msg, sizeof(msg), "* %s left\r\n", m->name);
	broadcast_locked(NULL, msg, (size_t) n);
	pthread_mutex_unlock(&room_lock);
	free(m);
	c->user = NULL;
	return 0;
}

static int valid_name(const char *s, size_t len) {
	if (len == 0 || len > MAX_NAME)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_'
				|| ch == '-'))
			return 0;
	}
	return 1;
}

static void nick(CONN *c, MEMBER *m, const char *name, size_t len) {
	if (!valid_name(name, len)) {
		say(c, "* a name is 1..20 letters, digits, '_' or '-'\r\n");
		return;
	}
	char msg[96];
	pthread_mutex_lock(&room_lock);
	for (int i = 0; i < n_room; i++) {
		if (room[i] != m && strlen(room[i]->name) == len && memcmp(room[i]->name, name, len) == 0) {
			pthread_mutex_unlock(&room_lock);
			say(c, "* that name is taken\r\n");
			return;
		}
	}
	char old[MAX_NAME + 1];
	memcpy(old, m->name, sizeof(old));
	memcpy(m->name, name, len);
	m->name[len] = 0;
	int n = snprintf(msg, sizeof(msg), "* %s is now %s\r\n", old, m->name);
	broadcast_locked(NULL, msg, (size_t) n);
	pthread_mutex_unlock(&room_lock);
}

/* "* here: a b c", in lines of at most MAX_LINE bytes. */
static void who(CONN *c) {
	char msg[MAX_LINE];
	size_t n = (size_t) snprintf(msg, sizeof(msg), "* here:");
	pthread_mutex_lock(&room_lock);
	for (int i = 0; i < n_room; i++) {
		if (n + 1 + MAX_NAME + 2 > sizeof(msg)) {
			memcpy(msg + n, "\r\n", 2);
			bufferevent_write(c->bufev, msg, n + 2);
			n = (size_t) snprintf(msg, sizeof(msg), "* here:");
		}
		n += (size_t) snprintf(msg + n, sizeof(msg) - n, " %s", room[i]->name);
	}
	pthread_mutex_unlock(&room_lock);
	memcpy(msg + n, "\r\n", 2);
	bufferevent_write(c->bufev, msg, n + 2);
}

/* One line, without its "\n" or "\r\n", at c->in_buf. */
static sint32 on_line(CONN *c) {
	MEMBER *m = (MEMBER *) c->user;
	const char *line = c->in_buf;
	size_t len = mario_frame_len(c);
	if (m == NULL)
		return -1;
	if (len == 0)
		return 0;
	if (len == 5 && memcmp(line, "/quit", 5) == 0) {
		say(c, "* bye\r\n");
		close_conn(c, g_akg_closed_id); /* graceful: "bye" is delivered */
		return 0;
	}
	if (len == 4 && memcmp(line, "/who", 4) == 0) {
		who(c);
		return 0;
	}
	if (len >= 5 && memcmp(line, "/nick", 5) == 0 && (len == 5 || line[5] == ' ')) {
		nick(c, m, line + (len > 6 ? 6 : len), len > 6 ? len - 6 : 0);
		return 0;
	}
	/* "name: text\r\n", control characters shown as '?' */
	char msg[MAX_NAME + 2 + MAX_LINE + 2];
	size_t n = strlen(m->name);
	memcpy(msg, m->name, n);
	msg[n++] = ':';
	msg[n++] = ' ';
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char) line[i];
		msg[n++] = (ch < 0x20 && ch != '\t') || ch == 0x7f ? '?' : (char) ch;
	}
	msg[n++] = '\r';
	msg[n++] = '\n';
	broadcast(m, msg, n);
	return 0;
}

static void *stopper(void *arg) {
	sigset_t *set = (sigset_t *) arg;
	int sig;
	if (sigwait(set, &sig) == 0) {
		printf("mario_chat: got %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
		fflush(stdout);
		mario_stop_server(server);
	}
	return NULL;
}

int main(int argc, char **argv) {
	int port = argc > 1 ? atoi(argv[1]) : 5555;
	int workers = argc > 2 ? atoi(argv[2]) : 2;
	if (port <= 0 || port > 65535 || workers < 1 || workers > 256) {
		fprintf(stderr, "usage: %s [port (1..65535) [workers (1..256)]]\n", argv[0]);
		return 2;
	}
	/* SIGINT/SIGTERM go to the stopper thread only. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	server = init_server(port, (uint16) workers, 1024, 0, 0);
	if (server == NULL)
		return 1;
	mario_framing f;
	memset(&f, 0, sizeof(f));
	f.kind = MARIO_FRAMING_LINE;
	f.max_frame = MAX_LINE; /* delimiter NULL: "\n", with a "\r" before it dropped */
	if (mario_set_framing(server, &f) != 0)
		return 1;
	regist_connected_func(on_connected);
	regist_disconnected_func(on_closed); /* closed, error and timeout */
	regist_frame_func(on_line);
	if (start_log_thread() != 0)
		return 1;

	pthread_t st;
	pthread_create(&st, NULL, stopper, &set);
	/* Returns once the stopper has stopped the server, or at once if it
	 * could not start (the reason is on stderr). */
	if (start_server(server) != NULL) {
		fprintf(stderr, "mario_chat: the server did not start\n");
		return 1;
	}
	pthread_join(st, NULL);
	return 0;
}
