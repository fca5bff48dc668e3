/*
 * utf8log.c: record_log cuts a long line before any UTF-8 character the
 * cut would split. Logs, through record_log to stdout, lines of 1,500
 * two-, three- and four-byte characters after 0 to 3 bytes of "x", waits
 * for the log thread to write them, prints "DONE". Checked by
 * tests/logging.rs.
 */
#define _POSIX_C_SOURCE 200809L
#include "mario/mario.h"

int main(void) {
	static const char *chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
	static char s[1500 * 4 + 4];
	LOG_QUEUE *q = create_log_queue();
	if (start_log_thread() != 0)
		return 2;
	for (int c = 0; c < 3; c++) {
		for (int pad = 0; pad < 4; pad++) {
			size_t n = 0, k = strlen(chars[c]);
			for (int i = 0; i < pad; i++)
				s[n++] = 'x';
			for (int i = 0; i < 1500; i++, n += k)
				memcpy(s + n, chars[c], k);
			s[n] = '\0';
			if (record_log(q, STDOUT_FILENO, "[INFO] %s\n", s) != 0)
				return 3;
		}
	}
	for (int i = 0; i < 500 && q->producer != q->consumer; i++)
		nsleep(10000000);
	nsleep(200000000);
	printf("DONE\n");
	return 0;
}
