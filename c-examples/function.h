/*
 * function.h
 *
 * Packet handlers of the maritcp sample server.
 */

#ifndef FUNCTION_H_
#define FUNCTION_H_

#include "mario/mario.h"

/* LOGIN (CMD_FUNCTION_LOGIN): count the user online, reply with a HEAD */
sint32 login(CONN *c);

/* ECHO (CMD_FUNCTION_ECHO): reply with the packet unchanged */
sint32 echo(CONN *c);

/* disconnected (timeout, closed, error): uncount a logged-in user */
sint32 logout(CONN *c);

/* connected callback (LOG_CONNECTIONS 1): logs the client's address (the
 * real client's behind a PROXY protocol balancer) and the worker */
sint32 log_connection(CONN *c);

#endif /* FUNCTION_H_ */
