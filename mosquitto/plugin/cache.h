/* The bounded answer cache: a hash table with LRU eviction.
 *
 * Entries of both kinds (CONNECT grants and ACL answers) live in one table of
 * at most max_entries. Invalidation is O(1) by generations: every entry
 * remembers the generation of its user and of the whole cache when it was
 * inserted; dropping a user bumps the user's generation, dropping everything
 * bumps the global one; a stale entry is a miss and is freed when met. A look-up
 * that hits allocates nothing: one keyed hash, one bucket walk, LRU relink. */
#ifndef CR_CACHE_H
#define CR_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cr_kind {
	CR_KIND_CONNECT = 1, /* part 0: HMAC of username, password, client id */
	CR_KIND_ACL = 2,     /* part 0: client id, part 1: topic */
};

struct cr_key {
	const char *user;
	size_t user_len;
	uint8_t kind;
	uint8_t access;
	const void *part[2];
	size_t part_len[2];
};

struct cr_user {
	struct cr_user *hnext;
	uint64_t hash;
	uint32_t gen;
	uint32_t refs; /* entries pointing here; freed at 0 */
	size_t len;
	char name[];
};

struct cr_entry {
	struct cr_entry *hnext;
	struct cr_entry **hpprev; /* the pointer that points at this entry */
	struct cr_entry *lru_prev, *lru_next;
	struct cr_user *user;
	uint64_t hash;
	int64_t expires_ms;
	uint32_t user_gen;
	uint32_t global_gen;
	int result;
	uint8_t kind;
	uint8_t access;
	size_t part_len[2];
	unsigned char data[]; /* part 0 then part 1 */
};

struct cr_cache {
	size_t max_entries;
	size_t count;
	size_t mask;
	struct cr_entry **buckets;
	struct cr_user **user_buckets;
	size_t user_count;
	struct cr_entry *lru_head, *lru_tail; /* head: most recently used */
	uint32_t global_gen;
	unsigned char hash_key[16];
	uint64_t evictions;
};

int cr_cache_init(struct cr_cache *cache, size_t max_entries, const unsigned char hash_key[16]);
void cr_cache_free(struct cr_cache *cache);

/* 1 and *result set on a fresh hit, 0 on a miss (absent, expired, stale). */
int cr_cache_get(struct cr_cache *cache, const struct cr_key *key, int64_t now_ms, int *result);

/* 0, or -1 when out of memory (then nothing is cached). */
int cr_cache_put(struct cr_cache *cache, const struct cr_key *key, int result, int64_t expires_ms);

void cr_cache_drop_user(struct cr_cache *cache, const char *user);
void cr_cache_drop_all(struct cr_cache *cache);

#endif
