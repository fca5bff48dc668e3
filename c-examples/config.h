/*
 * config.h
 *
 * The settings of the maritcp sample server, read from ./init.conf.
 */

#ifndef CONFIG_H_
#define CONFIG_H_

#include "mario/mario.h"

typedef struct _CONF {
	int port;			/* PORT: listening port, 1..65535, required */
	int timeout;		/* TIMEOUT: read/write timeout in seconds, 0 = none */
	uint32 workernum;	/* WORKERNUM: number of worker threads */
	uint32 connnum;		/* CONNNUM: connections per worker */
	uint32 usernum;		/* USERNUM: read and printed, not used otherwise */
	uint32 filenum;		/* FILENUM: read and printed, not used otherwise */
	char metrics[128];	/* METRICS: address of the /metrics endpoint
						   (e.g. 127.0.0.1:9100); "" = none */
	char bind[128];		/* BIND: address to listen on; "" = 0.0.0.0
						   (init_server), "any" = every address, IPv4
						   and IPv6 (mario_init_server_addr(NULL, ...)) */
	int backlog;		/* BACKLOG: listen backlog, 0 = the library's */
	int reuseport;		/* REUSEPORT: 1 = SO_REUSEPORT */
	uint32 proxy;		/* PROXY: MARIO_PROXY_* (off, v1, v2, any) */
	char proxy_sources[16][128];	/* PROXY_SOURCE lines: trusted networks */
	int n_proxy_sources;
	int log_connections;	/* LOG_CONNECTIONS: 1 = one line per connection
						   with the client's (real) address */
} CONF;

extern CONF conf;

/* read ./init.conf into conf and print it; 0 on success, -1 on error
 * (the reason is printed on stderr) */
sint32 init_conf(void);

#endif /* CONFIG_H_ */
