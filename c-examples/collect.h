/*
 * collect.h
 *
 * Online-user statistics: one counter per worker thread, and a thread
 * that logs their sum, and the server's own numbers, every 60 seconds.
 */

#ifndef COLLECT_H_
#define COLLECT_H_

#include "mario/mario.h"

/* make the counters (one per worker of server) and the log queue */
sint32 init_collect(SERVER *server);

/* start / stop the stats thread; start returns 0 on success */
sint32 start_collect_thread(void);
void stop_collect_thread(void);

/* called by the worker that owns the connection, for its own counter */
void online_add(uint16 worker);
void online_sub(uint16 worker);

/* sum over the workers */
sint32 online_total(void);

#endif /* COLLECT_H_ */
