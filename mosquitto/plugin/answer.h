/* The broker routes' answer bodies (SPEC §3: {"ok": true|false, "error": "..."}). */
#ifndef CR_ANSWER_H
#define CR_ANSWER_H

#include <stdbool.h>
#include <stddef.h>

/* True only for a JSON object whose "ok" is true: a 200 with anything else
 * (a catch-all server, a proxy's page, a truncated body) is not cregistry's
 * grant, and the check is a fault. */
bool cr_answer_grants(const char *body, size_t len);

/* True only for a JSON object whose "unknown_user" is true: the service's
 * refusal of a username the registry has no user for (SPEC §11, unknown_users). */
bool cr_answer_unknown_user(const char *body, size_t len);

#endif
