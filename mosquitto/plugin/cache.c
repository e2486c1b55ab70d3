#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "siphash.h"

#define NONE 0u
#define BUCKETS_FIRST 1024u /* entry buckets in use at first */
/* entry, user record and a bucket in each table: what one entry may cost, at most */
#define BYTES_PER_ENTRY (sizeof(struct cr_entry) + sizeof(struct cr_user) + 2 * sizeof(uint32_t))

_Static_assert(sizeof(struct cr_entry) == 64, "an entry is 64 bytes whatever its key");
_Static_assert(sizeof(struct cr_user) == 32, "a user record is 32 bytes whatever the name");

size_t cr_cache_bytes_per_entry(void)
{
	return BYTES_PER_ENTRY;
}

/* Keys no MQTT packet can carry (a part over 65,535 bytes) are never cached:
 * the lengths then fit the digest's one header word. */
static bool key_cacheable(const struct cr_key *key)
{
	return key->user_len <= UINT16_MAX && key->part_len[0] <= UINT16_MAX && key->part_len[1] <= UINT16_MAX;
}

/* An ACL key this long or shorter (nearly all: they are looked up for every
 * message) is hashed from one copy on the stack: SipHash then reads whole
 * words, instead of joining each part's ragged end to the next part's start
 * byte by byte. The same bytes, so the same digest. A CONNECT key is not
 * copied: its part is the HMAC of the password (digest.h), never left behind. */
#define KEY_BYTES_FLAT 256

static void key_digest(const struct cr_cache *cache, const struct cr_key *key, uint64_t out[2])
{
	struct cr_sip s;
	/* the lengths first, so that no two different keys feed the same bytes */
	uint64_t header = (uint64_t)key->user_len | (uint64_t)key->part_len[0] << 16
		| (uint64_t)key->part_len[1] << 32 | (uint64_t)key->kind << 48 | (uint64_t)key->access << 56;
	size_t len = sizeof(header) + key->user_len + key->part_len[0] + key->part_len[1];

	cr_sip128_init(&s, cache->hash_key);
	if(key->kind == CR_KIND_ACL && len <= KEY_BYTES_FLAT){
		unsigned char flat[KEY_BYTES_FLAT];
		unsigned char *at = flat;
		memcpy(at, &header, sizeof(header));
		at += sizeof(header);
		memcpy(at, key->user, key->user_len);
		at += key->user_len;
		memcpy(at, key->part[0], key->part_len[0]);
		at += key->part_len[0];
		memcpy(at, key->part[1], key->part_len[1]);
		cr_sip_update(&s, flat, len);
	}else{
		cr_sip_update(&s, &header, sizeof(header));
		cr_sip_update(&s, key->user, key->user_len);
		cr_sip_update(&s, key->part[0], key->part_len[0]);
		cr_sip_update(&s, key->part[1], key->part_len[1]);
	}
	cr_sip128_final(&s, out);
}

/* Two names with one hash share a record: dropping either drops both, and they
 * share the bound per user; the key is secret, so nobody can choose such a pair. */
static uint64_t name_hash(const struct cr_cache *cache, const char *name, size_t len)
{
	struct cr_sip s;

	cr_sip_init(&s, cache->hash_key);
	cr_sip_update(&s, name, len);
	return cr_sip_final(&s);
}

static size_t floor_pow2(size_t n)
{
	size_t p = 1;

	while(p <= n / 2){
		p <<= 1;
	}
	return p;
}

int cr_cache_init_limits(struct cr_cache *cache, const struct cr_cache_limits *limits,
		const unsigned char hash_key[16])
{
	const size_t record = sizeof(struct cr_entry) + sizeof(struct cr_user);
	size_t capacity, nbuckets;

	memset(cache, 0, sizeof(*cache));
	if(limits->max_bytes < record || limits->user_percent < 1 || limits->user_percent > 100){
		return -1;
	}
	/* slot 0 of both arrays is never used; a bucket of each table per entry at most */
	capacity = (limits->max_bytes - record) / BYTES_PER_ENTRY;
	if(limits->max_entries != 0 && limits->max_entries < capacity){
		capacity = limits->max_entries;
	}
	if(capacity > UINT32_MAX - 1){
		capacity = UINT32_MAX - 1;
	}
	if(capacity == 0){
		return -1;
	}
	nbuckets = floor_pow2(capacity); /* chains of two at most on average */
	cache->entries = malloc((capacity + 1) * sizeof(*cache->entries));
	cache->users = malloc((capacity + 1) * sizeof(*cache->users));
	cache->buckets = calloc(nbuckets, sizeof(*cache->buckets));
	cache->user_buckets = calloc(nbuckets, sizeof(*cache->user_buckets));
	if(cache->entries == NULL || cache->users == NULL || cache->buckets == NULL || cache->user_buckets == NULL){
		cr_cache_free(cache);
		return -1;
	}
	cache->bucket_mask = nbuckets - 1;
	cache->mask = (nbuckets < BUCKETS_FIRST ? nbuckets : BUCKETS_FIRST) - 1;
	cache->max_entries = capacity;
	cache->user_max = capacity * limits->user_percent / 100;
	if(cache->user_max == 0){
		cache->user_max = 1;
	}
	cache->bytes = (capacity + 1) * record + 2 * nbuckets * sizeof(uint32_t);
	cache->entry_unused = 1;
	cache->user_unused = 1;
	memcpy(cache->hash_key, hash_key, sizeof(cache->hash_key));
	return 0;
}

int cr_cache_init(struct cr_cache *cache, size_t max_entries, const unsigned char hash_key[16])
{
	struct cr_cache_limits limits = {SIZE_MAX, max_entries, 100};

	if(max_entries == 0){
		memset(cache, 0, sizeof(*cache));
		return -1;
	}
	return cr_cache_init_limits(cache, &limits, hash_key);
}

static uint32_t user_find(const struct cr_cache *cache, uint64_t hash)
{
	uint32_t i;

	for(i = cache->user_buckets[hash & cache->bucket_mask]; i != NONE; i = cache->users[i].hnext){
		if(cache->users[i].hash == hash){
			return i;
		}
	}
	return NONE;
}

/* A new record holding one reference; a slot is free: users never outnumber entries. */
static uint32_t user_new(struct cr_cache *cache, uint64_t hash)
{
	uint32_t i = cache->user_free;
	struct cr_user *u;

	if(i != NONE){
		cache->user_free = cache->users[i].hnext;
	}else{
		i = cache->user_unused++;
	}
	u = &cache->users[i];
	u->hash = hash;
	u->gen = 0;
	u->refs = 1;
	u->lru_head = u->lru_tail = NONE;
	u->hnext = cache->user_buckets[hash & cache->bucket_mask];
	cache->user_buckets[hash & cache->bucket_mask] = i;
	cache->user_count++;
	return i;
}

static void user_release(struct cr_cache *cache, uint32_t i)
{
	struct cr_user *u = &cache->users[i];
	uint32_t *pp;

	if(--u->refs > 0){
		return;
	}
	for(pp = &cache->user_buckets[u->hash & cache->bucket_mask]; *pp != NONE; pp = &cache->users[*pp].hnext){
		if(*pp == i){
			*pp = u->hnext;
			break;
		}
	}
	u->hnext = cache->user_free;
	cache->user_free = i;
	cache->user_count--;
}

static void lru_unlink(struct cr_cache *cache, uint32_t i)
{
	struct cr_entry *e = &cache->entries[i];
	struct cr_user *u = &cache->users[e->user];

	if(e->lru_prev != NONE){
		cache->entries[e->lru_prev].lru_next = e->lru_next;
	}else{
		cache->lru_head = e->lru_next;
	}
	if(e->lru_next != NONE){
		cache->entries[e->lru_next].lru_prev = e->lru_prev;
	}else{
		cache->lru_tail = e->lru_prev;
	}
	if(e->ulru_prev != NONE){
		cache->entries[e->ulru_prev].ulru_next = e->ulru_next;
	}else{
		u->lru_head = e->ulru_next;
	}
	if(e->ulru_next != NONE){
		cache->entries[e->ulru_next].ulru_prev = e->ulru_prev;
	}else{
		u->lru_tail = e->ulru_prev;
	}
}

static void lru_push_front(struct cr_cache *cache, uint32_t i)
{
	struct cr_entry *e = &cache->entries[i];
	struct cr_user *u = &cache->users[e->user];

	e->lru_prev = NONE;
	e->lru_next = cache->lru_head;
	if(cache->lru_head != NONE){
		cache->entries[cache->lru_head].lru_prev = i;
	}else{
		cache->lru_tail = i;
	}
	cache->lru_head = i;
	e->ulru_prev = NONE;
	e->ulru_next = u->lru_head;
	if(u->lru_head != NONE){
		cache->entries[u->lru_head].ulru_prev = i;
	}else{
		u->lru_tail = i;
	}
	u->lru_head = i;
}

static void entry_remove(struct cr_cache *cache, uint32_t i)
{
	struct cr_entry *e = &cache->entries[i];
	uint32_t *pp;

	for(pp = &cache->buckets[e->digest[0] & cache->mask]; *pp != NONE; pp = &cache->entries[*pp].hnext){
		if(*pp == i){
			*pp = e->hnext;
			break;
		}
	}
	lru_unlink(cache, i);
	user_release(cache, e->user);
	e->hnext = cache->entry_free;
	cache->entry_free = i;
	cache->count--;
}

static bool entry_fresh(const struct cr_cache *cache, const struct cr_entry *e, int64_t now_ms)
{
	return e->expires_ms > now_ms && e->global_gen == cache->global_gen
		&& e->user_gen == cache->users[e->user].gen;
}

static uint32_t entry_find(const struct cr_cache *cache, const uint64_t digest[2])
{
	uint32_t i;

	for(i = cache->buckets[digest[0] & cache->mask]; i != NONE; i = cache->entries[i].hnext){
		const struct cr_entry *e = &cache->entries[i];
		if(e->digest[0] == digest[0] && e->digest[1] == digest[1]){
			return i;
		}
	}
	return NONE;
}

int cr_cache_get(struct cr_cache *cache, const struct cr_key *key, int64_t now_ms, int *result)
{
	uint64_t digest[2];
	uint32_t i;

	if(cache->max_entries == 0 || !key_cacheable(key)){
		return 0;
	}
	key_digest(cache, key, digest);
	i = entry_find(cache, digest);
	if(i == NONE){
		return 0;
	}
	if(!entry_fresh(cache, &cache->entries[i], now_ms)){
		entry_remove(cache, i);
		return 0;
	}
	if(cache->lru_head != i || cache->users[cache->entries[i].user].lru_head != i){
		lru_unlink(cache, i);
		lru_push_front(cache, i);
	}
	*result = cache->entries[i].result;
	return 1;
}

/* Doubles the entry buckets in use, in place: bucket b's entries stay or move
 * to bucket b + n by the next bit of their digest. The array was made whole at
 * init, so nothing is allocated, and the buckets beyond the old half are
 * still empty (none is ever given up). */
static void buckets_double(struct cr_cache *cache)
{
	size_t n = cache->mask + 1;

	for(size_t b = 0; b < n; b++){
		uint32_t *pp = &cache->buckets[b];
		while(*pp != NONE){
			struct cr_entry *e = &cache->entries[*pp];
			if(e->digest[0] & n){
				uint32_t i = *pp;
				*pp = e->hnext;
				e->hnext = cache->buckets[b + n];
				cache->buckets[b + n] = i;
			}else{
				pp = &e->hnext;
			}
		}
	}
	cache->mask = 2 * n - 1;
}

int cr_cache_put(struct cr_cache *cache, const struct cr_key *key, int result, int64_t expires_ms)
{
	uint64_t digest[2];
	uint64_t uhash;
	uint32_t i, ui;
	struct cr_entry *e;

	if(cache->max_entries == 0 || !key_cacheable(key)){
		return -1;
	}
	key_digest(cache, key, digest);
	i = entry_find(cache, digest);
	if(i != NONE){
		entry_remove(cache, i);
	}
	uhash = name_hash(cache, key->user, key->user_len);
	ui = user_find(cache, uhash);
	if(ui != NONE){
		cache->users[ui].refs++; /* held: making room below cannot free it; the new entry's reference */
		if(cache->users[ui].refs - 1 >= cache->user_max){
			entry_remove(cache, cache->users[ui].lru_tail);
			cache->user_evictions++;
		}
	}
	while(cache->count >= cache->max_entries && cache->lru_tail != NONE){
		entry_remove(cache, cache->lru_tail);
		cache->evictions++;
	}
	if(ui == NONE){
		ui = user_new(cache, uhash);
	}
	i = cache->entry_free;
	if(i != NONE){
		cache->entry_free = cache->entries[i].hnext;
	}else{
		i = cache->entry_unused++;
	}
	e = &cache->entries[i];
	e->digest[0] = digest[0];
	e->digest[1] = digest[1];
	e->expires_ms = expires_ms;
	e->user = ui;
	e->user_gen = cache->users[ui].gen;
	e->global_gen = cache->global_gen;
	e->result = result;
	e->hnext = cache->buckets[digest[0] & cache->mask];
	cache->buckets[digest[0] & cache->mask] = i;
	lru_push_front(cache, i);
	cache->count++;
	if(cache->count > cache->mask + 1 && cache->mask < cache->bucket_mask){
		buckets_double(cache);
	}
	return 0;
}

void cr_cache_drop_user(struct cr_cache *cache, const char *user)
{
	uint32_t ui;

	if(cache->max_entries == 0){
		return;
	}
	ui = user_find(cache, name_hash(cache, user, strlen(user)));
	if(ui != NONE){
		cache->users[ui].gen++;
	}
}

void cr_cache_drop_all(struct cr_cache *cache)
{
	cache->global_gen++;
}

void cr_cache_free(struct cr_cache *cache)
{
	free(cache->entries);
	free(cache->users);
	free(cache->buckets);
	free(cache->user_buckets);
	memset(cache, 0, sizeof(*cache));
}
