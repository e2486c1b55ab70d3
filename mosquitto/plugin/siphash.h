/* SipHash-1-3, fed in parts: the keyed hash of the cache's hash tables, so
 * that clients choosing topics cannot pile entries into one bucket. */
#ifndef CR_SIPHASH_H
#define CR_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

struct cr_sip {
	uint64_t v0, v1, v2, v3;
	uint64_t tail;     /* bytes not yet forming a whole word */
	size_t tail_len;
	uint64_t total;
};

void cr_sip_init(struct cr_sip *s, const unsigned char key[16]);
void cr_sip_update(struct cr_sip *s, const void *data, size_t len);
uint64_t cr_sip_final(struct cr_sip *s);

#endif
