/* SipHash fed in parts. SipHash-1-3 (64 bits) hashes user names for the
 * cache's user table, so that clients cannot pile entries into one bucket;
 * SipHash-2-4 with its 128-bit output is the cache's key digest: an entry
 * keeps only that digest of what it answers for, so two keys must never meet
 * (the cryptographic variant, and 128 bits: a false match would be a grant). */
#ifndef CR_SIPHASH_H
#define CR_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

struct cr_sip {
	uint64_t v0, v1, v2, v3;
	uint64_t tail;     /* bytes not yet forming a whole word */
	size_t tail_len;
	uint64_t total;
	unsigned c_rounds; /* compression rounds per word: 1 (SipHash-1-3) or 2 (SipHash-2-4) */
};

void cr_sip_init(struct cr_sip *s, const unsigned char key[16]);
void cr_sip_update(struct cr_sip *s, const void *data, size_t len);
uint64_t cr_sip_final(struct cr_sip *s);

/* SipHash-2-4, 128-bit output: out[0] the first word, out[1] the second. */
void cr_sip128_init(struct cr_sip *s, const unsigned char key[16]);
void cr_sip128_final(struct cr_sip *s, uint64_t out[2]);

#endif
