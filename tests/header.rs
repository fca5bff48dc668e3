//! The C header `include/mario/mario.h`: it is fresh (matches what build.rs
//! generates), compiles warning-free as C99 (with `-DLINUX32`, `-DLINUX64`,
//! neither, and `_GNU_SOURCE`) and as C++, declares every name of
//! docs/C-API.md (Types, Constants, Structures, Functions) with its exact
//! type and value, gives applications the standard headers of its
//! "Building" section but not `<math.h>`, and a program using all
//! of it links against `libmario.a` with the documented link line and runs.

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A program that uses every element of docs/C-API.md by name (and one
/// function or macro of each standard header it promises). Its
/// compile-time checks are `_Static_assert` / `static_assert` and `#error`;
/// its run-time checks print `CHECK FAILED` and make it exit non-zero. It
/// logs through every `slog_*` macro, prints `LOGGED`, waits for EOF on
/// stdin (so the test can read the log thread's output meanwhile), then
/// prints `OK`.
const HDR_ALL: &str = r##"
#include "mario/mario.h"

#ifdef __cplusplus
template <class A, class B> struct hdr_same { enum { value = 0 }; };
template <class A> struct hdr_same<A, A> { enum { value = 1 }; };
template <class T> struct hdr_noref { typedef T type; };
template <class T> struct hdr_noref<T &> { typedef T type; };
#define SAME(a, b) (hdr_same<a, b>::value == 1)
#define TYPEOF(x) hdr_noref<decltype(x)>::type
#define SA(c, m) static_assert(c, m)
#else
#define SAME(a, b) __builtin_types_compatible_p(a, b)
#define TYPEOF(x) __typeof__(x)
#define SA(c, m) _Static_assert(c, m)
#endif
#define OFFSET(T, f) __builtin_offsetof(T, f)
#define FIELD(T, f, ty) SA(SAME(TYPEOF(((T *)0)->f), ty), #T "." #f " has type " #ty)
#define ELEM(T, f, ty) SA(SAME(TYPEOF(((T *)0)->f[0]), ty), #T "." #f " holds " #ty)

/* ---- 2. types ---- */
SA(SAME(sint32, int), "sint32");
SA(SAME(uint32, unsigned int), "uint32");
SA(SAME(sint16, short), "sint16");
SA(SAME(uint16, unsigned short), "uint16");
SA(SAME(ubyte, unsigned char), "ubyte");
SA(SAME(u_char, unsigned char), "u_char");
#if defined(LINUX32)
SA(SAME(sint64, long long), "sint64 is long long with LINUX32");
SA(SAME(uint64, unsigned long long), "uint64 is unsigned long long with LINUX32");
#elif defined(LINUX64)
SA(SAME(sint64, long), "sint64 is long with LINUX64");
SA(SAME(uint64, unsigned long), "uint64 is unsigned long with LINUX64");
#endif
SA(sizeof(sint64) == 8 && sizeof(uint64) == 8, "64-bit types have 8 bytes");
SA(sizeof(sint32) == 4 && sizeof(uint32) == 4, "32-bit types have 4 bytes");
SA(sizeof(sint16) == 2 && sizeof(uint16) == 2 && sizeof(ubyte) == 1, "small types");
SA((sint64)-1 < (sint64)0, "sint64 is signed");
SA((uint64)-1 == 0xffffffffffffffffULL, "uint64 is unsigned");
SA(SAME(FUNC_PTR, sint32 (*)(CONN *)), "FUNC_PTR");
SA(SAME(sighandler_t, void (*)(int)), "sighandler_t");

/* ---- 3. constants: macros usable in #if, with their exact values ---- */
#if !defined(MAX_CONN_ARRAY_SIZE) || MAX_CONN_ARRAY_SIZE != 131072
#error "MAX_CONN_ARRAY_SIZE"
#endif
#if !defined(CONN_BUF_LEN) || CONN_BUF_LEN != 2048
#error "CONN_BUF_LEN"
#endif
#if !defined(MAX_BUF_READ_LEN) || MAX_BUF_READ_LEN != 1791
#error "MAX_BUF_READ_LEN"
#endif
#if !defined(MAX_PKG_LEN) || MAX_PKG_LEN != 1500
#error "MAX_PKG_LEN"
#endif
#if !defined(CONN_READ_TIMEOUT) || CONN_READ_TIMEOUT != 300
#error "CONN_READ_TIMEOUT"
#endif
#if !defined(CONN_WRITE_TIMEOUT) || CONN_WRITE_TIMEOUT != 300
#error "CONN_WRITE_TIMEOUT"
#endif
#if !defined(MAX_PKG_TYPE) || MAX_PKG_TYPE != 0xffff
#error "MAX_PKG_TYPE"
#endif
#if !defined(DEFAULT_STX) || DEFAULT_STX != 0xffffffff
#error "DEFAULT_STX"
#endif
#if !defined(MAX_LOG_LINE_LENGTH) || MAX_LOG_LINE_LENGTH != 2048
#error "MAX_LOG_LINE_LENGTH"
#endif
#ifndef SIZE_OF_HEAD
#error "SIZE_OF_HEAD"
#endif
SA(MAX_CONN_ARRAY_SIZE == 131072, "MAX_CONN_ARRAY_SIZE");
SA(CONN_BUF_LEN == 2048, "CONN_BUF_LEN");
SA(MAX_BUF_READ_LEN == 1791, "MAX_BUF_READ_LEN");
SA(MAX_PKG_LEN == 1500, "MAX_PKG_LEN");
SA(CONN_READ_TIMEOUT == 300 && CONN_WRITE_TIMEOUT == 300, "timeouts");
SA(MAX_PKG_TYPE == 0xffff, "MAX_PKG_TYPE");
SA(DEFAULT_STX == 0xffffffffu, "DEFAULT_STX");
SA(MAX_LOG_LINE_LENGTH == 2048, "MAX_LOG_LINE_LENGTH");
SA(SIZE_OF_HEAD == 8, "SIZE_OF_HEAD");
SA(SAME(TYPEOF(SIZE_OF_HEAD), uint16), "SIZE_OF_HEAD is a uint16");
SA(SAME(TYPEOF(g_akg_connected_id), const uint16), "g_akg_connected_id");
SA(SAME(TYPEOF(g_akg_timeout_id), const uint16), "g_akg_timeout_id");
SA(SAME(TYPEOF(g_akg_closed_id), const uint16), "g_akg_closed_id");
SA(SAME(TYPEOF(g_akg_error_id), const uint16), "g_akg_error_id");
SA(SAME(TYPEOF(g_stx), uint32), "g_stx");
SA(SAME(TYPEOF(AKG_FUNC[0]), FUNC_PTR), "AKG_FUNC");

/* ---- 4. the wire format ---- */
SA(SAME(HEAD, struct _HEAD), "HEAD is struct _HEAD");
SA(sizeof(HEAD) == 8, "sizeof(HEAD)");
FIELD(HEAD, stx, uint32);
FIELD(HEAD, pkglen, uint16);
FIELD(HEAD, akg_id, uint16);
SA(OFFSET(HEAD, stx) == 0 && OFFSET(HEAD, pkglen) == 4 && OFFSET(HEAD, akg_id) == 6, "HEAD layout");
struct hdr_after_head { char c; HEAD h; };
SA(sizeof(struct hdr_after_head) == 9, "HEAD is packed");
struct hdr_unpacked { char c; int i; };
SA(sizeof(struct hdr_unpacked) == 8, "#pragma pack is restored after the header");

/* ---- 5. structures ---- */
SA(SAME(CONN, struct _CONN), "CONN is struct _CONN");
SA(SAME(WORKER, struct _WORKER), "WORKER is struct _WORKER");
FIELD(CONN, fd, int);
FIELD(CONN, bufev, struct bufferevent *);
FIELD(CONN, ind, uint32);
ELEM(CONN, in_buf, char);
FIELD(CONN, in_buf_len, uint16);
ELEM(CONN, out_buf, char);
FIELD(CONN, out_buf_len, uint16);
FIELD(CONN, next, CONN *);
FIELD(CONN, owner, WORKER *);
FIELD(CONN, cip, uint32);
FIELD(CONN, cport, uint16);
FIELD(CONN, err_type, uint16);
FIELD(CONN, user, void *);
FIELD(WORKER, thread_id, pthread_t);
FIELD(WORKER, ind, uint16);
FIELD(WORKER, qlog, LOG_QUEUE *);
FIELD(WORKER, server, SERVER *);
FIELD(SERVER, port, int);
FIELD(SERVER, workers, WORKER_ARRAY *);
FIELD(SERVER, qlog, LOG_QUEUE *);
FIELD(SERVER, conn_count, uint64);
FIELD(SERVER, ret, int);
FIELD(WORKER_ARRAY, size, uint16);
FIELD(WORKER_ARRAY, server, SERVER *);
ELEM(WORKER_ARRAY, array, WORKER);
FIELD(LOG, fd, int);
ELEM(LOG, buf, char);
SA(sizeof(((LOG *)0)->buf) == MAX_LOG_LINE_LENGTH, "LOG.buf");
SA(sizeof(((LOG_QUEUE *)0)->size) > 0 && sizeof(((LOG_QUEUE *)0)->producer) > 0
   && sizeof(((LOG_QUEUE *)0)->consumer) > 0, "LOG_QUEUE fields");

/* ---- 3. exported variables, by address with their exact types ---- */
const uint16 *hdr_p_connected = &g_akg_connected_id;
const uint16 *hdr_p_timeout = &g_akg_timeout_id;
const uint16 *hdr_p_closed = &g_akg_closed_id;
const uint16 *hdr_p_error = &g_akg_error_id;
uint32 *hdr_p_stx = &g_stx;
FUNC_PTR *hdr_p_akg_func = AKG_FUNC;

/* ---- 6. every function, through a pointer of its exact signature ---- */
SERVER *(*f_init_server)(int, uint16, uint32, int, int) = init_server;
void *(*f_start_server)(void *) = start_server;
void (*f_close_conn)(CONN *, uint16) = close_conn;
void (*f_close_err_conn)(CONN *) = close_err_conn;
void (*f_regist_akg_func)(uint16, FUNC_PTR) = regist_akg_func;
void (*f_regist_connected_func)(FUNC_PTR) = regist_connected_func;
void (*f_regist_disconnected_func)(FUNC_PTR) = regist_disconnected_func;
void (*f_regist_timeout_func)(FUNC_PTR) = regist_timeout_func;
void (*f_regist_closed_func)(FUNC_PTR) = regist_closed_func;
void (*f_regist_error_func)(FUNC_PTR) = regist_error_func;
void (*f_regist_stx)(uint32) = regist_stx;
LOG_QUEUE *(*f_create_log_queue)(void) = create_log_queue;
sint32 (*f_record_log)(LOG_QUEUE *, int, const char *, ...) = record_log;
sint32 (*f_start_log_thread)(void) = start_log_thread;
void (*f_nsleep)(uint32) = nsleep;
void (*f_susleep)(uint32, uint32) = susleep;
void (*f_run_daemon)(void) = run_daemon;
void (*f_signal_handler)(int, sighandler_t) = signal_handler;
int (*f_bufferevent_write)(struct bufferevent *, const void *, size_t) = bufferevent_write;

/* ---- 7. the 1.0 extensions: exact signatures and the framing struct ---- */
void (*f_mario_stop_server)(SERVER *) = mario_stop_server;
void (*f_mario_set_output_limit)(SERVER *, size_t) = mario_set_output_limit;
sint32 (*f_mario_close_bufev)(struct bufferevent *, uint16) = mario_close_bufev;
sint32 (*f_mario_record_log_line)(LOG_QUEUE *, int, const char *, size_t) = mario_record_log_line;
void (*f_mario_set_log_level)(int) = mario_set_log_level;
sint32 (*f_mario_set_log_file)(const char *) = mario_set_log_file;
void (*f_mario_reopen_log)(void) = mario_reopen_log;
void (*f_mario_set_log_callback)(mario_log_callback, void *) = mario_set_log_callback;
void (*f_regist_frame_func)(FUNC_PTR) = regist_frame_func;
size_t (*f_mario_frame_len)(const CONN *) = mario_frame_len;
sint32 (*f_mario_set_framing)(SERVER *, const mario_framing *) = mario_set_framing;
const char *(*f_mario_version)(void) = mario_version;
SA(MARIO_VERSION_MAJOR >= 0 && MARIO_VERSION_MINOR >= 0 && MARIO_VERSION_PATCH >= 0, "MARIO_VERSION_*");
void (*f_regist_pool_func)(uint16, FUNC_PTR) = regist_pool_func;
void (*f_mario_set_pool_threads)(SERVER *, uint32) = mario_set_pool_threads;
void (*f_mario_set_stall_threshold)(SERVER *, uint32) = mario_set_stall_threshold;
void (*f_regist_stall_func)(void (*)(WORKER *, uint16, uint32)) = regist_stall_func;
sint32 (*f_mario_worker_stalled)(const WORKER *) = mario_worker_stalled;
SERVER *(*f_mario_init_server_addr)(const char *, int, int, int, int, int) = mario_init_server_addr;
sint32 (*f_mario_set_backlog)(SERVER *, int) = mario_set_backlog;
void (*f_mario_set_reuseport)(SERVER *, int) = mario_set_reuseport;
sint32 (*f_mario_set_proxy_protocol)(SERVER *, uint32) = mario_set_proxy_protocol;
sint32 (*f_mario_add_proxy_source)(SERVER *, const char *) = mario_add_proxy_source;
sint32 (*f_mario_conn_peer)(const CONN *, struct sockaddr_storage *, socklen_t *) = mario_conn_peer;
SA(MARIO_PROXY_OFF == 0 && MARIO_PROXY_V1 == 1 && MARIO_PROXY_V2 == 2 && MARIO_PROXY_ANY == 3, "MARIO_PROXY_*");
SA(SAME(mario_stall_func, void (*)(WORKER *, uint16, uint32)), "mario_stall_func");
SA(MARIO_LOG_OFF == 0 && MARIO_LOG_ERROR == 1 && MARIO_LOG_WARN == 2
   && MARIO_LOG_INFO == 3 && MARIO_LOG_DEBUG == 4, "MARIO_LOG_*");
SA(MARIO_FRAMING_HEAD == 0 && MARIO_FRAMING_LENGTH == 1 && MARIO_FRAMING_LINE == 2
   && MARIO_FRAMING_FIXED == 3 && MARIO_FRAMING_RAW == 4, "MARIO_FRAMING_*");
SA(SAME(mario_framing, struct mario_framing), "mario_framing is struct mario_framing");
FIELD(mario_framing, kind, uint32);
FIELD(mario_framing, max_frame, uint32);
FIELD(mario_framing, big_endian, uint32);
FIELD(mario_framing, length_offset, uint32);
FIELD(mario_framing, length_size, uint32);
FIELD(mario_framing, length_adjust, sint32);
FIELD(mario_framing, delimiter, const char *);
FIELD(mario_framing, frame_size, uint32);
sint32 (*f_mario_get_stats)(SERVER *, mario_stats *, size_t) = mario_get_stats;
sint32 (*f_mario_get_worker_stats)(SERVER *, uint32, mario_stats *, size_t) = mario_get_worker_stats;
size_t (*f_mario_format_prometheus)(SERVER *, char *, size_t) = mario_format_prometheus;
sint32 (*f_mario_serve_metrics)(SERVER *, const char *) = mario_serve_metrics;
SA(SAME(mario_stats, struct mario_stats), "mario_stats is struct mario_stats");
FIELD(mario_stats, connections, uint64);
FIELD(mario_stats, accepted, uint64);
FIELD(mario_stats, refused, uint64);
FIELD(mario_stats, closed, uint64);
FIELD(mario_stats, timeouts, uint64);
FIELD(mario_stats, errors, uint64);
FIELD(mario_stats, packets_in, uint64);
FIELD(mario_stats, bytes_in, uint64);
FIELD(mario_stats, bytes_out, uint64);
FIELD(mario_stats, out_queued, uint64);
FIELD(mario_stats, stalls, uint64);
FIELD(mario_stats, pool_queued, uint64);
FIELD(mario_stats, log_dropped, uint64);
FIELD(mario_stats, workers, uint32);
FIELD(mario_stats, stalled_workers, uint32);
SA(OFFSET(mario_stats, connections) == 0 && OFFSET(mario_stats, log_dropped) == 96
   && OFFSET(mario_stats, workers) == 104 && OFFSET(mario_stats, stalled_workers) == 108
   && sizeof(mario_stats) == 112, "mario_stats layout: fields are only added at the end");

static int fails = 0;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "CHECK FAILED line %d: %s\n", __LINE__, #c); fails++; } } while (0)

/* A handler that touches every CONN / WORKER / SERVER / WORKER_ARRAY field
 * through variables of the documented types (never called: no server runs). */
static sint32 h_login(CONN *c) {
    int fd = c->fd;
    struct bufferevent *bev = c->bufev;
    uint32 ind = c->ind;
    char *in = c->in_buf;
    uint16 in_len = c->in_buf_len;
    char *out = c->out_buf;
    uint16 out_len = c->out_buf_len;
    CONN *next = c->next;
    WORKER *w = c->owner;
    uint32 cip = c->cip;
    uint16 cport = c->cport;
    uint16 err_type = c->err_type;
    void *user = c->user;
    pthread_t tid = w->thread_id;
    uint16 wind = w->ind;
    LOG_QUEUE *wq = w->qlog;
    SERVER *s = w->server;
    int port = s->port;
    WORKER_ARRAY *wa = s->workers;
    LOG_QUEUE *sq = s->qlog;
    uint64 conn_count = s->conn_count;
    int ret = s->ret;
    uint16 wsize = wa->size;
    SERVER *wserver = wa->server;
    WORKER *w0 = &wa->array[0];
    HEAD *h = (HEAD *) in;
    HEAD *rsp = (HEAD *) out;

    (void) fd; (void) bev; (void) ind; (void) in_len; (void) out_len; (void) next;
    (void) cip; (void) cport; (void) err_type; (void) user; (void) tid; (void) wind;
    (void) wq; (void) port; (void) sq; (void) conn_count; (void) ret; (void) wsize;
    (void) wserver; (void) w0;
    c->out_buf_len = SIZE_OF_HEAD;
    c->user = NULL;
    rsp->stx = h->stx;
    rsp->pkglen = SIZE_OF_HEAD;
    rsp->akg_id = h->akg_id;
    slog_info(c->owner->qlog, "login from %u", (unsigned) ntohs(c->cport));
    if (h->pkglen != 10) {
        close_err_conn(c);
        return -1;
    }
    if (bufferevent_write(c->bufev, c->out_buf, SIZE_OF_HEAD) != 0)
        close_conn(c, g_akg_error_id);
    return 0;
}
static sint32 h_connected(CONN *c) { (void) c; return 0; }
static sint32 h_disconnected(CONN *c) { (void) c; return 0; }
static sint32 h_timeout(CONN *c) { (void) c; return 0; }
static sint32 h_closed(CONN *c) { (void) c; return 0; }
static sint32 h_error(CONN *c) { (void) c; return 0; }

/* ---- the ring macros on the application's own structures ---- */
typedef struct { uint32 size; uint32 producer; uint32 consumer; int items[4]; } HDR_RING;
typedef struct { HDR_RING rows[2]; } HDR_TABLE;
typedef struct { uint32 size; uint32 producer; uint32 consumer; char *items[4]; } HDR_SRING;

static void ring_checks(void) {
    HDR_RING r;
    HDR_TABLE t;
    HDR_SRING sr;
    static char sbuf[4][8];
    int *p;
    char *sp;
    int i, round, n;

    memset(&r, 0, sizeof(r));
    r.size = 4;
    for (round = 0; round < 3; round++) {
        p = GET_CONSUMER(&r);
        CHECK(p == NULL);
        for (n = 0; n < 10; n++) {
            p = GET_PRODUCER(&r);
            if (p == NULL)
                break;
            *p = 100 * round + n;
            PUT_PRODUCER(&r);
        }
        CHECK(n == 3 || n == 4);
        for (i = 0; i < n; i++) {
            p = GET_CONSUMER(&r);
            CHECK(p != NULL && *p == 100 * round + i);
            if (p == NULL)
                break;
            PUT_CONSUMER(&r);
        }
    }

    memset(&t, 0, sizeof(t));
    t.rows[0].size = 4;
    t.rows[1].size = 4;
    p = GET_CONSUMER_T(&t, 1);
    CHECK(p == NULL);
    p = GET_PRODUCER_T(&t, 1);
    CHECK(p != NULL);
    if (p != NULL)
        *p = 42;
    PUT_PRODUCER_T(&t, 1);
    p = GET_CONSUMER_T(&t, 0);
    CHECK(p == NULL);
    p = GET_CONSUMER_T(&t, 1);
    CHECK(p != NULL && *p == 42);
    PUT_CONSUMER_T(&t, 1);
    p = GET_CONSUMER_T(&t, 1);
    CHECK(p == NULL);

    memset(&sr, 0, sizeof(sr));
    sr.size = 4;
    for (i = 0; i < 4; i++)
        sr.items[i] = sbuf[i];
    sp = GET_CONSUMER_STRITEM(&sr);
    CHECK(sp == NULL);
    sp = GET_PRODUCER_STRITEM(&sr);
    CHECK(sp == sbuf[0]);
    if (sp != NULL)
        strcpy(sp, "one");
    PUT_PRODUCER_STRITEM(&sr);
    sp = GET_PRODUCER_STRITEM(&sr);
    CHECK(sp == sbuf[1]);
    if (sp != NULL)
        strcpy(sp, "two");
    PUT_PRODUCER_STRITEM(&sr);
    sp = GET_CONSUMER_STRITEM(&sr);
    CHECK(sp != NULL && strcmp(sp, "one") == 0);
    PUT_CONSUMER_STRITEM(&sr);
    sp = GET_CONSUMER_STRITEM(&sr);
    CHECK(sp != NULL && strcmp(sp, "two") == 0);
    PUT_CONSUMER_STRITEM(&sr);
    sp = GET_CONSUMER_STRITEM(&sr);
    CHECK(sp == NULL);
}

/* ---- the nine slog_* macros, written the way applications do ---- */
static void log_all(LOG_QUEUE *q) {
    static char big[3001];

    slog_err_t_w(q, "m1 %d %s", 1, "a");
    slog_err_t(q, "m2 %d", 2);
    slog_err(q, "m3 %s", "c");
    slog_info_t_w(q, "m4 %u", 4u);
    slog_info_t(q, "m5 %ld", 5L);
    slog_info(q, "m6 %c", 'x');
    slog_warn_t_w(q, "m7 %x", 255);
    slog_warn_t(q, "m8 %05.1f", 2.5);
    slog_warn(q, "m9 %%");
    slog_err_t_w(q, "n1");
    slog_err_t(q, "n2");
    slog_err(q, "n3");
    slog_info_t_w(q, "n4");
    slog_info_t(q, "n5");
    slog_info(q, "n6");
    slog_warn_t_w(q, "n7");
    slog_warn_t(q, "n8");
    slog_warn(q, "n9");
    /* the expansion ends with its own semicolon */
    slog_info(q, "s1") slog_warn(q, "s2") slog_err(q, "s3")
    errno = ENOENT;
    slog_err(q, "pm %m");
    memset(big, 'L', sizeof(big) - 1);
    slog_info(q, "%s", big);
    slog_info(q, "after long");
    CHECK(record_log(q, STDOUT_FILENO, "direct %d\n", 7) == 0);
}

/* ---- the standard headers docs/C-API.md promises, through mario.h alone ---- */
static int sum_ints(int n, ...) {
    va_list ap;
    int i, s = 0;
    va_start(ap, n);
    for (i = 0; i < n; i++)
        s += va_arg(ap, int);
    va_end(ap);
    return s;
}
static void *thread_fun(void *arg) { return arg; }
static volatile int got_signal = 0;
static void on_sigusr1(int sig) { got_signal = sig; }

static void std_checks(void) {
    char tbuf[64];
    time_t now = time(NULL);
    struct tm *tm = localtime(&now);
    pid_t pid = getpid();
    char *m = (char *) malloc(16);
    int fd, on = 1;
    pthread_t th;
    void *res = NULL;
    struct sockaddr_in sa;

    CHECK(m != NULL);
    if (m != NULL) {
        strcpy(m, "abc");
        CHECK(strlen(m) == 3);
        free(m);
    }
    CHECK(sum_ints(3, 1, 2, 3) == 6);
    CHECK(pid > 0);
    CHECK(tm != NULL);
    if (tm != NULL)
        CHECK(strftime(tbuf, sizeof(tbuf), "%Y", tm) == 4);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    CHECK(ioctl(fd, FIONBIO, &on) == 0);
    CHECK((fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    CHECK(close(fd) == 0);
    errno = EBADF;
    CHECK(errno == EBADF);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(8082);
    sa.sin_addr.s_addr = inet_addr("127.0.0.1");
    CHECK(ntohs(sa.sin_port) == 8082);
    CHECK(sa.sin_addr.s_addr == htonl(0x7f000001));
    CHECK(pthread_create(&th, NULL, thread_fun, &on) == 0);
    CHECK(pthread_join(th, &res) == 0 && res == (void *) &on);
    CHECK(signal(SIGPIPE, SIG_IGN) != SIG_ERR);
    signal_handler(SIGUSR1, on_sigusr1);
    CHECK(raise(SIGUSR1) == 0);
    CHECK(got_signal == SIGUSR1);
    printf("std ok, pid %d, year %s\n", (int) pid, tbuf);
}

int main(void) {
    int i, set = 0;
    SERVER *s;
    LOG_QUEUE *q;

    CHECK(g_akg_connected_id == 0xfffc);
    CHECK(g_akg_timeout_id == 0xfffd);
    CHECK(g_akg_closed_id == 0xfffe);
    CHECK(g_akg_error_id == 0xffff);
    CHECK(*hdr_p_connected == 0xfffc && *hdr_p_timeout == 0xfffd);
    CHECK(*hdr_p_closed == 0xfffe && *hdr_p_error == 0xffff);
    CHECK(g_stx == DEFAULT_STX && *hdr_p_stx == DEFAULT_STX);
    for (i = 0; i < 65536; i++)
        set += AKG_FUNC[i] != NULL;
    CHECK(set == 0);

    f_regist_akg_func(0x6101, h_login);
    CHECK(AKG_FUNC[0x6101] == h_login && hdr_p_akg_func[0x6101] == h_login);
    regist_akg_func(0, h_login);
    CHECK(AKG_FUNC[0] == h_login);
    f_regist_connected_func(h_connected);
    CHECK(AKG_FUNC[g_akg_connected_id] == h_connected);
    f_regist_disconnected_func(h_disconnected);
    CHECK(AKG_FUNC[0xfffd] == h_disconnected && AKG_FUNC[0xfffe] == h_disconnected
          && AKG_FUNC[0xffff] == h_disconnected);
    f_regist_timeout_func(h_timeout);
    f_regist_closed_func(h_closed);
    f_regist_error_func(h_error);
    CHECK(AKG_FUNC[g_akg_timeout_id] == h_timeout && AKG_FUNC[g_akg_closed_id] == h_closed
          && AKG_FUNC[g_akg_error_id] == h_error);
    f_regist_stx(0x8eb69af7);
    CHECK(g_stx == 0x8eb69af7u);

    CHECK(f_init_server != NULL && f_start_server != NULL && f_close_conn != NULL);
    CHECK(f_close_err_conn != NULL && f_record_log != NULL && f_run_daemon != NULL);
    CHECK(f_bufferevent_write != NULL && f_signal_handler != NULL);

    ring_checks();
    std_checks();

    /* the records init_server hands out (nothing listens until start_server) */
    s = f_init_server(46123, 3, 16, 5, 7);
    CHECK(s != NULL);
    if (s != NULL) {
        CHECK(s->port == 46123);
        CHECK(s->qlog != NULL);
        CHECK(s->conn_count == 0);
        CHECK(s->workers != NULL);
        if (s->workers != NULL) {
            CHECK(s->workers->size == 3);
            CHECK(s->workers->server == s);
            for (i = 0; i < 3 && i < s->workers->size; i++) {
                CHECK(s->workers->array[i].ind == i);
                CHECK(s->workers->array[i].server == s);
                CHECK(s->workers->array[i].qlog != NULL);
            }
        }
    }

    f_nsleep(1000);
    f_susleep(0, 1000);
    q = f_create_log_queue();
    CHECK(q != NULL);
    CHECK(f_start_log_thread() == 0);
    if (q != NULL)
        log_all(q);
    fflush(stderr);
    printf("LOGGED\n");
    fflush(stdout);
    while (getchar() != EOF)
        ;
    if (fails == 0)
        printf("OK\n");
    fflush(stdout);
    return fails == 0 ? 0 : 1;
}
"##;

/// Applications declare their own variables named `log` (and might name
/// one `sqrt`): this compiles only if `<math.h>` was not included.
const NO_MATH: &str = r##"
#include "mario/mario.h"
static LOG_QUEUE *log = NULL;
static double sqrt = 1.0;
#ifdef HUGE_VAL
#error "HUGE_VAL is defined: <math.h> was included"
#endif
#ifdef _MATH_H
#error "_MATH_H is defined: <math.h> was included"
#endif
int main(void) {
    int exp = 2;
    log = create_log_queue();
    return (log == NULL) + (int) sqrt + exp - 3;
}
"##;

const SUB_HEADERS: [&str; 8] = [
    "mario_global.h",
    "mario_type.h",
    "mario_log.h",
    "mario_conn.h",
    "mario_network.h",
    "mario_akg.h",
    "mario_util.h",
    "mario_table.h",
];

#[derive(Clone, Copy, PartialEq)]
enum Lang {
    C,
    Cxx,
}

fn lib() -> PathBuf {
    root().join("target/release/libmario.a")
}

/// Compiles `src` (C99 or C++) with warnings as errors, and links it with
/// the documented link line if `link`; returns the output path or the
/// compiler's diagnostics.
fn compile(
    dir: &Path,
    name: &str,
    src: &str,
    lang: Lang,
    defs: &[&str],
    link: bool,
) -> Result<PathBuf, String> {
    let (cc, ext, std) = match lang {
        Lang::C => ("gcc", "c", Some("-std=c99")),
        Lang::Cxx => ("g++", "cc", None),
    };
    let file = dir.join(format!("{name}.{ext}"));
    std::fs::write(&file, src).unwrap();
    let out = dir.join(if link {
        name.to_string()
    } else {
        format!("{name}.o")
    });
    let mut cmd = Command::new(cc);
    cmd.args(std).args(["-Wall", "-Wextra", "-Werror"]).args(defs);
    cmd.arg("-I").arg(root().join("include"));
    if link {
        cmd.arg("-o")
            .arg(&out)
            .arg(&file)
            .arg(lib())
            .args(["-lpthread", "-ldl", "-lm"]);
    } else {
        cmd.arg("-c").arg("-o").arg(&out).arg(&file);
    }
    let o = cmd.output().unwrap_or_else(|e| panic!("run {cc}: {e}"));
    if o.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cc} {defs:?} {name}.{ext} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[derive(Clone, Copy)]
enum Form {
    TimeFunc,
    Time,
    Plain,
}

/// The lines `log_all` writes, per descriptor, in order:
/// (stderr?, form, level, message).
fn expected_log_lines() -> Vec<(bool, Form, &'static str, String)> {
    use Form::*;
    let mut v = vec![
        (true, TimeFunc, "ERROR", "m1 1 a".to_string()),
        (true, Time, "ERROR", "m2 2".into()),
        (true, Plain, "ERROR", "m3 c".into()),
        (false, TimeFunc, "INFO", "m4 4".into()),
        (false, Time, "INFO", "m5 5".into()),
        (false, Plain, "INFO", "m6 x".into()),
        (false, TimeFunc, "WARN", "m7 ff".into()),
        (false, Time, "WARN", "m8 002.5".into()),
        (false, Plain, "WARN", "m9 %".into()),
        (true, TimeFunc, "ERROR", "n1".into()),
        (true, Time, "ERROR", "n2".into()),
        (true, Plain, "ERROR", "n3".into()),
        (false, TimeFunc, "INFO", "n4".into()),
        (false, Time, "INFO", "n5".into()),
        (false, Plain, "INFO", "n6".into()),
        (false, TimeFunc, "WARN", "n7".into()),
        (false, Time, "WARN", "n8".into()),
        (false, Plain, "WARN", "n9".into()),
        (false, Plain, "INFO", "s1".into()),
        (false, Plain, "WARN", "s2".into()),
        (true, Plain, "ERROR", "s3".into()),
        (true, Plain, "ERROR", "pm No such file or directory".into()),
    ];
    v.push((false, Plain, "INFO", "after long".into()));
    v
}

fn line_matches(line: &str, form: Form, level: &str, msg: &str, now: i64) -> bool {
    let rest = match form {
        Form::Plain => Some(line),
        Form::Time | Form::TimeFunc => line.strip_prefix('[').and_then(|r| {
            let (t, r) = r.split_once("] ")?;
            let t: i64 = t.parse().ok()?;
            ((t - now).abs() < 600).then_some(r)
        }),
    };
    let Some(rest) = rest.and_then(|r| r.strip_prefix(&format!("[{level}] "))) else {
        return false;
    };
    let rest = match form {
        Form::TimeFunc => match rest.strip_prefix("[log_all] ") {
            Some(r) => r,
            None => return false,
        },
        _ => rest,
    };
    rest == msg
}

/// Checks the log output of `log_all`: every expected line, in order per
/// descriptor, the cut long line, and the direct `record_log` line.
fn check_log_output(stdout: &str, stderr: &str) -> Result<(), String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let out: Vec<&str> = stdout.lines().collect();
    let err: Vec<&str> = stderr.lines().collect();
    let (mut io, mut ie) = (0usize, 0usize);
    for (to_err, form, level, msg) in expected_log_lines() {
        let (lines, i) = if to_err { (&err, &mut ie) } else { (&out, &mut io) };
        match lines[*i..]
            .iter()
            .position(|l| line_matches(l, form, level, &msg, now))
        {
            Some(k) => *i += k + 1,
            None => {
                return Err(format!(
                    "missing (in order) on {}: [{level}] {msg}",
                    if to_err { "stderr" } else { "stdout" }
                ));
            }
        }
    }
    let long = out
        .iter()
        .find(|l| l.starts_with("[INFO] LLLL"))
        .ok_or("no long line")?;
    if long.len() >= 2048 || long.len() < 1500 || long.trim_start_matches("[INFO] ").contains(|c| c != 'L') {
        return Err(format!(
            "long line not cut to one line of < 2048 bytes: {} bytes",
            long.len()
        ));
    }
    if !out.contains(&"direct 7") {
        return Err("no `direct 7` line".into());
    }
    Ok(())
}

/// Runs a linked HDR_ALL program: it must log every expected line, then
/// exit 0 printing OK once stdin is closed.
fn run_hdr_all(exe: &Path) {
    let dir = exe.parent().unwrap();
    let (out, err) = (dir.join("run.out"), dir.join("run.err"));
    let mut child = Command::new(exe)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run test program");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let t0 = Instant::now();
    let mut verdict = Err("not logged yet".to_string());
    while t0.elapsed() < Duration::from_secs(15) {
        if read(&out).contains("LOGGED") {
            verdict = check_log_output(&read(&out), &read(&err));
            if verdict.is_ok() {
                break;
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.stdin.take().map(|mut s| s.flush());
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t1.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not exit after stdin closed", exe.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (read(&out), read(&err));
    assert!(
        status.success() && stdout.lines().any(|l| l == "OK") && !stderr.contains("CHECK FAILED"),
        "{}: {status:?}\nstdout:\n{}\nstderr:\n{stderr}",
        exe.display(),
        tail(&stdout, 30)
    );
    if let Err(e) = verdict {
        panic!(
            "{}: log output: {e}\nstdout:\n{}\nstderr:\n{stderr}",
            exe.display(),
            tail(&stdout, 40)
        );
    }
}

fn full_program(tag: &str, lang: Lang, defs: &[&str]) {
    ensure_built();
    let dir = scratch_dir(tag);
    let exe = compile(&dir, "hdr_all", HDR_ALL, lang, defs, true).unwrap_or_else(|e| panic!("{e}"));
    run_hdr_all(&exe);
}

#[test]
fn c99_with_linux64() {
    full_program("hdr-c64", Lang::C, &["-DLINUX64"]);
}

#[test]
fn c99_with_linux32() {
    full_program("hdr-c32", Lang::C, &["-DLINUX32"]);
}

#[test]
fn c99_without_platform_define() {
    full_program("hdr-cnone", Lang::C, &[]);
}

/// Applications often define `_GNU_SOURCE`: glibc then declares `u_char`
/// and `sighandler_t` too, which must not clash.
#[test]
fn c99_with_gnu_source() {
    full_program("hdr-cgnu", Lang::C, &["-D_GNU_SOURCE", "-DLINUX64"]);
}

#[test]
fn cplusplus() {
    full_program("hdr-cxx", Lang::Cxx, &["-DLINUX64"]);
}

#[test]
fn cplusplus_with_linux32() {
    full_program("hdr-cxx32", Lang::Cxx, &["-DLINUX32"]);
}

#[test]
fn every_sub_header_compiles_alone() {
    let dir = scratch_dir("hdr-sub");
    let mut errors = Vec::new();
    for (i, name) in SUB_HEADERS.iter().enumerate() {
        // Twice: the include guards must hold.
        let src =
            format!("#include \"mario/{name}\"\n#include \"mario/{name}\"\nint main(void) {{ return 0; }}\n");
        for (lang, defs) in [(Lang::C, &["-DLINUX64"][..]), (Lang::C, &[]), (Lang::Cxx, &[])] {
            if let Err(e) = compile(&dir, &format!("sub{i}"), &src, lang, defs, false) {
                errors.push(e);
            }
        }
    }
    // All of them together, in reverse, and mario.h after them.
    let mut src: String = SUB_HEADERS
        .iter()
        .rev()
        .map(|n| format!("#include \"mario/{n}\"\n"))
        .collect();
    src.push_str("#include \"mario/mario.h\"\nint main(void) { return (int) sizeof(HEAD) - 8; }\n");
    for lang in [Lang::C, Lang::Cxx] {
        if let Err(e) = compile(&dir, "suball", &src, lang, &["-DLINUX64"], false) {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn math_h_is_not_pulled_in() {
    let dir = scratch_dir("hdr-math");
    for (lang, defs) in [
        (Lang::C, &["-DLINUX64"][..]),
        (Lang::C, &["-DLINUX32"]),
        (Lang::C, &[]),
        (Lang::Cxx, &["-DLINUX64"]),
    ] {
        if let Err(e) = compile(&dir, "nomath", NO_MATH, lang, defs, false) {
            panic!("mario.h must not include <math.h>:\n{e}");
        }
    }
    // Control: the same file with <math.h> really fails, so the check
    // above can fail.
    let with_math = format!("#include <math.h>\n{NO_MATH}");
    assert!(
        compile(&dir, "withmath", &with_math, Lang::C, &["-DLINUX64"], false).is_err(),
        "control: the <math.h> version should not compile"
    );
}

#[test]
fn committed_header_is_fresh() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/mario.h"));
    assert!(
        generated.contains("#ifndef MARIO_H_"),
        "OUT_DIR/mario.h is not the generated header"
    );
    let committed = std::fs::read_to_string(root().join("include/mario/mario.h")).expect("read mario.h");
    if generated != committed {
        let first = generated
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| generated.lines().count().min(committed.lines().count()));
        panic!(
            "include/mario/mario.h is stale: run `make header`\n(first difference at line {}:\n  generated: {:?}\n  committed: {:?})",
            first + 1,
            generated.lines().nth(first),
            committed.lines().nth(first)
        );
    }
}
