/*
 * protocol.h
 *
 * Packets of the maritcp sample server. Every packet starts with the
 * framework's HEAD (see mario/mario.h); the bodies below follow it.
 */

#ifndef PROTOCOL_H_
#define PROTOCOL_H_

#include "mario/mario.h"

/* the magic every packet carries in HEAD.stx */
#define MARITCP_STX				0x8eb69af7

/* packet ids (HEAD.akg_id) */
#define CMD_FUNCTION_LOGIN		0x6101
/* ECHO: any body (pkglen 8..MAX_PKG_LEN, so up to 1,492 bytes of body); the
 * reply is the whole packet unchanged, HEAD included. The bandwidth
 * benchmark (mario-bench bw) sends these. */
#define CMD_FUNCTION_ECHO		0x6102

#pragma pack(1)

/* LOGIN request body: HEAD + LOGIN_REQ, 10 bytes in all */
typedef struct _LOGIN_REQ {
	uint16 uid;
} LOGIN_REQ;

#pragma pack()

/* the LOGIN reply is a bare HEAD: stx and akg_id of the request, pkglen 8 */
#define LOGIN_REQ_LEN			(sizeof(HEAD) + sizeof(LOGIN_REQ))
#define LOGIN_RSP_LEN			(sizeof(HEAD))

#endif /* PROTOCOL_H_ */
