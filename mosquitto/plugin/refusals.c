#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "refusals.h"
#include "siphash.h"

static uint64_t user_tag(const struct cr_refusals *r, const char *user)
{
	struct cr_sip s;

	cr_sip_init(&s, r->tag_key);
	cr_sip_update(&s, user, strlen(user));
	return cr_sip_final(&s);
}

/* The digest is a keyed HMAC: its first bytes are as good as any hash of it. */
static struct cr_refusal *slot_of(struct cr_refusals *r, const unsigned char digest[CR_DIGEST_LEN])
{
	uint64_t index;

	memcpy(&index, digest, sizeof(index));
	return &r->slots[index & (CR_REFUSALS_SLOTS - 1)];
}

static void slot_clear(struct cr_refusals *r, struct cr_refusal *s)
{
	OPENSSL_cleanse(s, sizeof(*s));
	r->used--;
}

int cr_refusals_init(struct cr_refusals *r, const unsigned char tag_key[16])
{
	memset(r, 0, sizeof(*r));
	r->slots = calloc(CR_REFUSALS_SLOTS, sizeof(*r->slots));
	if(r->slots == NULL){
		return -1;
	}
	memcpy(r->tag_key, tag_key, sizeof(r->tag_key));
	return 0;
}

void cr_refusals_free(struct cr_refusals *r)
{
	if(r->slots){
		OPENSSL_cleanse(r->slots, CR_REFUSALS_SLOTS * sizeof(*r->slots));
		free(r->slots);
	}
	OPENSSL_cleanse(r, sizeof(*r));
}

bool cr_refusals_has(struct cr_refusals *r, const unsigned char digest[CR_DIGEST_LEN], int64_t now_ms)
{
	struct cr_refusal *s = slot_of(r, digest);

	if(s->expires_ms == 0 || CRYPTO_memcmp(s->digest, digest, CR_DIGEST_LEN) != 0){
		return false;
	}
	if(s->expires_ms <= now_ms){
		slot_clear(r, s);
		return false;
	}
	return true;
}

void cr_refusals_put(struct cr_refusals *r, const unsigned char digest[CR_DIGEST_LEN], const char *user,
		int64_t expires_ms, uint64_t epoch)
{
	struct cr_refusal *s = slot_of(r, digest);

	if(epoch != r->epoch || expires_ms <= 0){
		return;
	}
	if(s->expires_ms == 0){
		r->used++;
	}
	memcpy(s->digest, digest, CR_DIGEST_LEN);
	s->user_tag = user_tag(r, user);
	s->expires_ms = expires_ms;
}

void cr_refusals_drop_user(struct cr_refusals *r, const char *user)
{
	uint64_t tag;

	r->epoch++;
	if(r->used == 0){
		return;
	}
	tag = user_tag(r, user);
	/* A whole scan: the feed names a user only when an operator changed it. */
	for(size_t i = 0; i < CR_REFUSALS_SLOTS; i++){
		if(r->slots[i].expires_ms != 0 && r->slots[i].user_tag == tag){
			slot_clear(r, &r->slots[i]);
		}
	}
}

void cr_refusals_drop_all(struct cr_refusals *r)
{
	r->epoch++;
	if(r->used == 0){
		return;
	}
	OPENSSL_cleanse(r->slots, CR_REFUSALS_SLOTS * sizeof(*r->slots));
	r->used = 0;
}
