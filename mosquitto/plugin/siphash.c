/* SipHash-1-3 and SipHash-2-4 with its 128-bit output (Aumasson and Bernstein),
 * written from the paper's description. */
#include <string.h>

#include "siphash.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static void sip_round(struct cr_sip *s)
{
	s->v0 += s->v1;
	s->v1 = ROTL(s->v1, 13);
	s->v1 ^= s->v0;
	s->v0 = ROTL(s->v0, 32);
	s->v2 += s->v3;
	s->v3 = ROTL(s->v3, 16);
	s->v3 ^= s->v2;
	s->v0 += s->v3;
	s->v3 = ROTL(s->v3, 21);
	s->v3 ^= s->v0;
	s->v2 += s->v1;
	s->v1 = ROTL(s->v1, 17);
	s->v1 ^= s->v2;
	s->v2 = ROTL(s->v2, 32);
}

static uint64_t load64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v)); /* one load; SipHash reads little-endian words */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

/* len (< 8) bytes as the low bytes of a little-endian word */
static uint64_t load_partial(const unsigned char *p, size_t len)
{
	uint64_t v = 0;

	for(size_t i = len; i-- > 0;){
		v = (v << 8) | p[i];
	}
	return v;
}

static void compress(struct cr_sip *s, uint64_t m)
{
	s->v3 ^= m;
	for(unsigned i = 0; i < s->c_rounds; i++){
		sip_round(s);
	}
	s->v0 ^= m;
}

static void sip_start(struct cr_sip *s, const unsigned char key[16], unsigned c_rounds)
{
	uint64_t k0 = load64(key);
	uint64_t k1 = load64(key + 8);

	s->v0 = k0 ^ 0x736f6d6570736575ULL;
	s->v1 = k1 ^ 0x646f72616e646f6dULL;
	s->v2 = k0 ^ 0x6c7967656e657261ULL;
	s->v3 = k1 ^ 0x7465646279746573ULL;
	s->tail = 0;
	s->tail_len = 0;
	s->total = 0;
	s->c_rounds = c_rounds;
}

void cr_sip_init(struct cr_sip *s, const unsigned char key[16])
{
	sip_start(s, key, 1);
}

void cr_sip128_init(struct cr_sip *s, const unsigned char key[16])
{
	sip_start(s, key, 2);
	s->v1 ^= 0xee; /* the 128-bit output variant */
}

void cr_sip_update(struct cr_sip *s, const void *data, size_t len)
{
	const unsigned char *p = data;

	s->total += len;
	if(s->tail_len > 0){
		size_t fill = 8 - s->tail_len;
		if(fill > len){
			fill = len;
		}
		s->tail |= load_partial(p, fill) << (8 * s->tail_len);
		s->tail_len += fill;
		p += fill;
		len -= fill;
		if(s->tail_len < 8){
			return;
		}
		compress(s, s->tail);
		s->tail = 0;
		s->tail_len = 0;
	}
	while(len >= 8){
		compress(s, load64(p));
		p += 8;
		len -= 8;
	}
	s->tail = load_partial(p, len);
	s->tail_len = len;
}

uint64_t cr_sip_final(struct cr_sip *s)
{
	uint64_t b = (s->total << 56) | s->tail;

	compress(s, b);
	s->v2 ^= 0xff;
	sip_round(s);
	sip_round(s);
	sip_round(s);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

void cr_sip128_final(struct cr_sip *s, uint64_t out[2])
{
	uint64_t b = (s->total << 56) | s->tail;

	compress(s, b);
	s->v2 ^= 0xee;
	for(int i = 0; i < 4; i++){
		sip_round(s);
	}
	out[0] = s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
	s->v1 ^= 0xdd;
	for(int i = 0; i < 4; i++){
		sip_round(s);
	}
	out[1] = s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}
