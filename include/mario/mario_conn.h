/* mario_conn.h: MarioTCP 0.9.9 header name, kept for applications that include it
 * directly. Everything is declared in mario.h. */
#include "mario.h"
