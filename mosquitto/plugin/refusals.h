/* Refused CONNECTs of known users, remembered for refusal_cache_seconds, so
 * that a flood of the same wrong password costs cregistry one check (a bcrypt)
 * per window instead of one per CONNECT.
 *
 * A fixed table of CR_REFUSALS_SLOTS entries, indexed by the CONNECT digest
 * (digest.h: a keyed HMAC of username, password and client ID, so no password
 * is stored); a newer refusal takes its slot over. Each entry keeps a keyed
 * hash of its username, so the change feed's entry for a user (an approval, a
 * new password, a deletion) drops that user's refusals: the first CONNECT after
 * the change is asked again. Every drop bumps `epoch`: a check that began before
 * a drop does not remember its refusal (it may predate the change). */
#ifndef CR_REFUSALS_H
#define CR_REFUSALS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"

#define CR_REFUSALS_SLOTS 4096 /* a power of two; 4096 x 48 bytes */

struct cr_refusal {
	unsigned char digest[CR_DIGEST_LEN];
	uint64_t user_tag;
	int64_t expires_ms; /* 0: a free slot */
};

struct cr_refusals {
	struct cr_refusal *slots;
	size_t used; /* slots not free (some may have expired): 0 makes a drop free */
	uint64_t epoch;
	unsigned char tag_key[16];
};

/* 0, or -1 when out of memory. */
int cr_refusals_init(struct cr_refusals *r, const unsigned char tag_key[16]);
void cr_refusals_free(struct cr_refusals *r);

/* Whether this CONNECT's digest was refused and the refusal has not expired. */
bool cr_refusals_has(struct cr_refusals *r, const unsigned char digest[CR_DIGEST_LEN], int64_t now_ms);

/* Remembers a refusal until expires_ms, unless a drop came since `epoch`
 * (the value of r->epoch when the check began). */
void cr_refusals_put(struct cr_refusals *r, const unsigned char digest[CR_DIGEST_LEN], const char *user,
		int64_t expires_ms, uint64_t epoch);

void cr_refusals_drop_user(struct cr_refusals *r, const char *user);
void cr_refusals_drop_all(struct cr_refusals *r);

#endif
