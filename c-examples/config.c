/*
 * config.c
 *
 * Reads ./init.conf: one "NAME VALUE" per line (PORT, TIMEOUT, WORKERNUM,
 * CONNNUM, USERNUM, FILENUM, METRICS, BIND, BACKLOG, REUSEPORT, PROXY,
 * PROXY_SOURCE, LOG_CONNECTIONS). Lines starting with '#', blank
 * lines and unknown names are ignored. PORT is required.
 */

#include "mario/mario.h"
#include "config.h"

#define CONF_FILE			"init.conf"
#define CONF_LINE_LEN		1024

CONF conf;

/* parse a decimal number in 0..max; 0 on success, -1 if it is not one */
static int parse_num(const char *s, unsigned long max, unsigned long *out) {
	char *end = NULL;
	unsigned long v;

	if (s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		return -1;
	*out = v;
	return 0;
}

/* store one setting; 0 on success or unknown name, -1 on a bad value */
static int set_value(const char *name, const char *value, int lineno) {
	unsigned long max, v;

	if (strcmp(name, "METRICS") == 0) {
		/* an address, checked by mario_serve_metrics */
		if (value[0] == '\0') {
			fprintf(stderr, "[error] %s line %d: METRICS has no value\n", CONF_FILE, lineno);
			return -1;
		}
		snprintf(conf.metrics, sizeof(conf.metrics), "%s", value);
		return 0;
	}
	if (strcmp(name, "BIND") == 0 || strcmp(name, "PROXY_SOURCE") == 0 || strcmp(name, "PROXY") == 0) {
		/* addresses and networks are checked by the library */
		if (value[0] == '\0') {
			fprintf(stderr, "[error] %s line %d: %s has no value\n", CONF_FILE, lineno, name);
			return -1;
		}
		if (strcmp(name, "BIND") == 0) {
			snprintf(conf.bind, sizeof(conf.bind), "%s", value);
		} else if (strcmp(name, "PROXY") == 0) {
			if (strcmp(value, "off") == 0)
				conf.proxy = MARIO_PROXY_OFF;
			else if (strcmp(value, "v1") == 0)
				conf.proxy = MARIO_PROXY_V1;
			else if (strcmp(value, "v2") == 0)
				conf.proxy = MARIO_PROXY_V2;
			else if (strcmp(value, "any") == 0)
				conf.proxy = MARIO_PROXY_ANY;
			else {
				fprintf(stderr, "[error] %s line %d: PROXY is off, v1, v2 or any, not %s\n",
						CONF_FILE, lineno, value);
				return -1;
			}
		} else {
			int n = conf.n_proxy_sources;
			if (n == (int) (sizeof(conf.proxy_sources) / sizeof(conf.proxy_sources[0]))) {
				fprintf(stderr, "[error] %s line %d: more than %d PROXY_SOURCE lines\n", CONF_FILE,
						lineno, n);
				return -1;
			}
			snprintf(conf.proxy_sources[n], sizeof(conf.proxy_sources[n]), "%s", value);
			conf.n_proxy_sources = n + 1;
		}
		return 0;
	}
	if (strcmp(name, "PORT") == 0 || strcmp(name, "WORKERNUM") == 0 || strcmp(name, "BACKLOG") == 0)
		max = 65535;
	else if (strcmp(name, "REUSEPORT") == 0 || strcmp(name, "LOG_CONNECTIONS") == 0)
		max = 1;
	else if (strcmp(name, "TIMEOUT") == 0)
		max = 0x7fffffff;
	else if (strcmp(name, "CONNNUM") == 0 || strcmp(name, "USERNUM") == 0
			|| strcmp(name, "FILENUM") == 0)
		max = 0xffffffff;
	else
		return 0;	/* unknown name: ignored */

	if (value[0] == '\0') {
		fprintf(stderr, "[error] %s line %d: %s has no value\n", CONF_FILE,
				lineno, name);
		return -1;
	}
	if (parse_num(value, max, &v) < 0) {
		fprintf(stderr, "[error] %s line %d: bad value for %s: %s (0..%lu)\n",
				CONF_FILE, lineno, name, value, max);
		return -1;
	}

	if (strcmp(name, "PORT") == 0)
		conf.port = (int) v;
	else if (strcmp(name, "TIMEOUT") == 0)
		conf.timeout = (int) v;
	else if (strcmp(name, "WORKERNUM") == 0)
		conf.workernum = (uint32) v;
	else if (strcmp(name, "CONNNUM") == 0)
		conf.connnum = (uint32) v;
	else if (strcmp(name, "USERNUM") == 0)
		conf.usernum = (uint32) v;
	else if (strcmp(name, "BACKLOG") == 0)
		conf.backlog = (int) v;
	else if (strcmp(name, "REUSEPORT") == 0)
		conf.reuseport = (int) v;
	else if (strcmp(name, "LOG_CONNECTIONS") == 0)
		conf.log_connections = (int) v;
	else
		conf.filenum = (uint32) v;
	return 0;
}

sint32 init_conf(void) {
	FILE *fp;
	char line[CONF_LINE_LEN];
	char name[128];
	char value[128];
	int lineno = 0;
	int ret = 0;

	memset(&conf, 0, sizeof(conf));

	fp = fopen(CONF_FILE, "r");
	if (fp == NULL) {
		fprintf(stderr, "[error] init_conf: cannot open %s: %s\n", CONF_FILE,
				strerror(errno));
		return -1;
	}

	while (fgets(line, sizeof(line), fp) != NULL) {
		size_t len = strlen(line);
		char *p = line;

		++lineno;
		/* a line longer than the buffer: drop the rest of it */
		if (len > 0 && line[len - 1] != '\n' && !feof(fp)) {
			int ch;
			while ((ch = fgetc(fp)) != EOF && ch != '\n')
				;
		}

		while (*p == ' ' || *p == '\t')
			++p;
		if (*p == '#' || *p == '\n' || *p == '\r' || *p == '\0')
			continue;

		name[0] = '\0';
		value[0] = '\0';
		if (sscanf(p, "%127s %127s", name, value) < 1)
			continue;
		if (set_value(name, value, lineno) < 0) {
			ret = -1;
			break;
		}
	}
	fclose(fp);
	if (ret < 0)
		return -1;

	/* check conf */
	if (conf.port == 0) {
		fprintf(stderr, "[error] init_conf: PORT is missing or 0 in %s\n",
				CONF_FILE);
		return -1;
	}

	fprintf(stdout, "---------------- init.conf ----------------\n");
	fprintf(stdout, "%-16s%d\n", "port", conf.port);
	fprintf(stdout, "%-16s%d\n", "timeout", conf.timeout);
	fprintf(stdout, "%-16s%u\n", "workernum", conf.workernum);
	fprintf(stdout, "%-16s%u\n", "connnum", conf.connnum);
	fprintf(stdout, "%-16s%u\n", "usernum", conf.usernum);
	fprintf(stdout, "%-16s%u\n", "filenum", conf.filenum);
	fprintf(stdout, "%-16s%s\n", "metrics", conf.metrics[0] ? conf.metrics : "off");
	fprintf(stdout, "%-16s%s\n", "bind", conf.bind[0] ? conf.bind : "0.0.0.0");
	if (conf.backlog)
		fprintf(stdout, "%-16s%d\n", "backlog", conf.backlog);
	fprintf(stdout, "%-16s%s\n", "reuseport", conf.reuseport ? "on" : "off");
	fprintf(stdout, "%-16s%s\n", "proxy", conf.proxy == MARIO_PROXY_V1 ? "v1"
			: conf.proxy == MARIO_PROXY_V2 ? "v2" : conf.proxy == MARIO_PROXY_ANY ? "any" : "off");
	for (int i = 0; i < conf.n_proxy_sources; i++)
		fprintf(stdout, "%-16s%s\n", "proxy_source", conf.proxy_sources[i]);
	fprintf(stdout, "-------------------------------------------\n");
	fflush(stdout);
	return 0;
}
