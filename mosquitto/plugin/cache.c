#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "siphash.h"

static uint64_t key_hash(const struct cr_cache *cache, const struct cr_key *key)
{
	struct cr_sip s;
	/* the lengths first, so that no two different keys feed the same bytes */
	uint64_t header[4] = {key->user_len, key->part_len[0], key->part_len[1],
		(uint64_t)key->kind | ((uint64_t)key->access << 8)};

	cr_sip_init(&s, cache->hash_key);
	cr_sip_update(&s, header, sizeof(header));
	cr_sip_update(&s, key->user, key->user_len);
	cr_sip_update(&s, key->part[0], key->part_len[0]);
	cr_sip_update(&s, key->part[1], key->part_len[1]);
	return cr_sip_final(&s);
}

static uint64_t name_hash(const struct cr_cache *cache, const char *name, size_t len)
{
	struct cr_sip s;

	cr_sip_init(&s, cache->hash_key);
	cr_sip_update(&s, name, len);
	return cr_sip_final(&s);
}

static bool entry_matches(const struct cr_entry *e, uint64_t hash, const struct cr_key *key)
{
	if(e->hash != hash || e->kind != key->kind || e->access != key->access){
		return false;
	}
	if(e->user->len != key->user_len || memcmp(e->user->name, key->user, key->user_len) != 0){
		return false;
	}
	if(e->part_len[0] != key->part_len[0] || e->part_len[1] != key->part_len[1]){
		return false;
	}
	if(memcmp(e->data, key->part[0], key->part_len[0]) != 0){
		return false;
	}
	return memcmp(e->data + e->part_len[0], key->part[1], key->part_len[1]) == 0;
}

int cr_cache_init(struct cr_cache *cache, size_t max_entries, const unsigned char hash_key[16])
{
	size_t nbuckets = 16;

	memset(cache, 0, sizeof(*cache));
	if(max_entries == 0){
		return -1;
	}
	while(nbuckets < max_entries && nbuckets < ((size_t)1 << 30)){
		nbuckets <<= 1;
	}
	cache->buckets = calloc(nbuckets, sizeof(*cache->buckets));
	cache->user_buckets = calloc(nbuckets, sizeof(*cache->user_buckets));
	if(cache->buckets == NULL || cache->user_buckets == NULL){
		free(cache->buckets);
		free(cache->user_buckets);
		memset(cache, 0, sizeof(*cache));
		return -1;
	}
	cache->mask = nbuckets - 1;
	cache->max_entries = max_entries;
	memcpy(cache->hash_key, hash_key, sizeof(cache->hash_key));
	return 0;
}

static struct cr_user *user_find(struct cr_cache *cache, const char *name, size_t len, uint64_t hash)
{
	struct cr_user *u;

	for(u = cache->user_buckets[hash & cache->mask]; u; u = u->hnext){
		if(u->hash == hash && u->len == len && memcmp(u->name, name, len) == 0){
			return u;
		}
	}
	return NULL;
}

static struct cr_user *user_get(struct cr_cache *cache, const char *name, size_t len)
{
	uint64_t hash = name_hash(cache, name, len);
	struct cr_user *u = user_find(cache, name, len, hash);
	struct cr_user **head;

	if(u){
		return u;
	}
	u = malloc(sizeof(*u) + len + 1);
	if(u == NULL){
		return NULL;
	}
	u->hash = hash;
	u->gen = 0;
	u->refs = 0;
	u->len = len;
	memcpy(u->name, name, len);
	u->name[len] = '\0';
	head = &cache->user_buckets[hash & cache->mask];
	u->hnext = *head;
	*head = u;
	cache->user_count++;
	return u;
}

static void user_release(struct cr_cache *cache, struct cr_user *u)
{
	struct cr_user **pp;

	if(--u->refs > 0){
		return;
	}
	for(pp = &cache->user_buckets[u->hash & cache->mask]; *pp; pp = &(*pp)->hnext){
		if(*pp == u){
			*pp = u->hnext;
			break;
		}
	}
	cache->user_count--;
	free(u);
}

static void lru_unlink(struct cr_cache *cache, struct cr_entry *e)
{
	if(e->lru_prev){
		e->lru_prev->lru_next = e->lru_next;
	}else{
		cache->lru_head = e->lru_next;
	}
	if(e->lru_next){
		e->lru_next->lru_prev = e->lru_prev;
	}else{
		cache->lru_tail = e->lru_prev;
	}
	e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(struct cr_cache *cache, struct cr_entry *e)
{
	e->lru_prev = NULL;
	e->lru_next = cache->lru_head;
	if(cache->lru_head){
		cache->lru_head->lru_prev = e;
	}else{
		cache->lru_tail = e;
	}
	cache->lru_head = e;
}

static void entry_remove(struct cr_cache *cache, struct cr_entry *e)
{
	*e->hpprev = e->hnext;
	if(e->hnext){
		e->hnext->hpprev = e->hpprev;
	}
	lru_unlink(cache, e);
	user_release(cache, e->user);
	cache->count--;
	free(e);
}

static bool entry_fresh(const struct cr_cache *cache, const struct cr_entry *e, int64_t now_ms)
{
	return e->expires_ms > now_ms && e->global_gen == cache->global_gen && e->user_gen == e->user->gen;
}

int cr_cache_get(struct cr_cache *cache, const struct cr_key *key, int64_t now_ms, int *result)
{
	uint64_t hash = key_hash(cache, key);
	struct cr_entry *e;

	for(e = cache->buckets[hash & cache->mask]; e; e = e->hnext){
		if(!entry_matches(e, hash, key)){
			continue;
		}
		if(!entry_fresh(cache, e, now_ms)){
			entry_remove(cache, e);
			return 0;
		}
		if(cache->lru_head != e){
			lru_unlink(cache, e);
			lru_push_front(cache, e);
		}
		*result = e->result;
		return 1;
	}
	return 0;
}

int cr_cache_put(struct cr_cache *cache, const struct cr_key *key, int result, int64_t expires_ms)
{
	uint64_t hash = key_hash(cache, key);
	struct cr_entry *e, **head;
	struct cr_user *u;

	for(e = cache->buckets[hash & cache->mask]; e; e = e->hnext){
		if(entry_matches(e, hash, key)){
			entry_remove(cache, e);
			break;
		}
	}
	while(cache->count >= cache->max_entries && cache->lru_tail){
		entry_remove(cache, cache->lru_tail);
		cache->evictions++;
	}
	e = malloc(sizeof(*e) + key->part_len[0] + key->part_len[1]);
	if(e == NULL){
		return -1;
	}
	u = user_get(cache, key->user, key->user_len);
	if(u == NULL){
		free(e);
		return -1;
	}
	u->refs++;
	e->user = u;
	e->hash = hash;
	e->expires_ms = expires_ms;
	e->user_gen = u->gen;
	e->global_gen = cache->global_gen;
	e->result = result;
	e->kind = key->kind;
	e->access = key->access;
	e->part_len[0] = key->part_len[0];
	e->part_len[1] = key->part_len[1];
	if(key->part_len[0]){
		memcpy(e->data, key->part[0], key->part_len[0]);
	}
	if(key->part_len[1]){
		memcpy(e->data + key->part_len[0], key->part[1], key->part_len[1]);
	}
	head = &cache->buckets[hash & cache->mask];
	e->hnext = *head;
	if(*head){
		(*head)->hpprev = &e->hnext;
	}
	e->hpprev = head;
	*head = e;
	lru_push_front(cache, e);
	cache->count++;
	return 0;
}

void cr_cache_drop_user(struct cr_cache *cache, const char *user)
{
	size_t len = strlen(user);
	struct cr_user *u = user_find(cache, user, len, name_hash(cache, user, len));

	if(u){
		u->gen++;
	}
}

void cr_cache_drop_all(struct cr_cache *cache)
{
	cache->global_gen++;
}

void cr_cache_free(struct cr_cache *cache)
{
	while(cache->lru_head){
		entry_remove(cache, cache->lru_head);
	}
	free(cache->buckets);
	free(cache->user_buckets);
	memset(cache, 0, sizeof(*cache));
}
