/* The answer cache: a hash table with LRU eviction, bounded in bytes.
 *
 * Entries of both kinds (CONNECT grants and ACL answers) live in one table.
 * An entry keeps no string of its key: only a keyed 128-bit digest
 * (SipHash-2-4-128) of user, kind, access and both parts, so every entry has
 * the same size whatever the lengths of client IDs and topics, and the table's
 * memory is fixed when it is made: entries, user records and buckets together
 * never exceed max_bytes (cr_cache_init_limits). User records are keyed by a
 * hash of the user name, not the name.
 *
 * Invalidation is O(1) by generations: every entry remembers the generation of
 * its user and of the whole cache when it was inserted; dropping a user bumps
 * the user's generation, dropping everything bumps the global one; a stale
 * entry is a miss and is freed when met.
 *
 * One user holds at most user_max entries: past it, a new entry of that user
 * replaces the user's own least recently used one, so a single device flooding
 * distinct topics cannot evict the other users' entries beyond that share.
 *
 * A look-up that hits allocates nothing: one keyed hash, one bucket walk,
 * two LRU relinks. Entries and user records live in two arrays made at init and
 * are named by 32-bit indices (0: none); pages of them that were never used are
 * never touched, so the broker's resident memory grows as the cache fills.
 * So does the part of the entry bucket array in use: as many buckets as
 * entries (a power of two), doubled in place when the entries outnumber them,
 * so that a small cache's look-ups stay within a few pages instead of
 * scattering over the whole array (a cache miss and a TLB miss per message). */
#ifndef CR_CACHE_H
#define CR_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cr_kind {
	CR_KIND_CONNECT = 1, /* part 0: HMAC of username, password, client id; part 1: certificate fingerprint */
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

/* 32 bytes */
struct cr_user {
	uint64_t hash;     /* keyed hash of the user name */
	uint32_t hnext;    /* next in its bucket, or in the free list */
	uint32_t gen;
	uint32_t refs;     /* entries of this user; freed at 0 */
	uint32_t lru_head; /* the user's own entries, most recently used first */
	uint32_t lru_tail;
};

/* 64 bytes, whatever the key */
struct cr_entry {
	uint64_t digest[2]; /* SipHash-2-4-128 of the key; digest[0] picks the bucket */
	int64_t expires_ms;
	uint32_t hnext; /* next in its bucket, or in the free list */
	uint32_t lru_prev, lru_next;   /* the whole cache */
	uint32_t ulru_prev, ulru_next; /* the entries of its user */
	uint32_t user;
	uint32_t user_gen;
	uint32_t global_gen;
	int32_t result;
};

struct cr_cache_limits {
	size_t max_bytes;    /* entries, user records and both bucket arrays together */
	size_t max_entries;  /* 0: as many as max_bytes holds */
	unsigned user_percent; /* 1-100: the share of the entries one user may hold */
};

struct cr_cache {
	size_t max_entries; /* what the arrays hold */
	size_t user_max;    /* entries of one user at most */
	size_t count;
	size_t mask;        /* of the entry buckets in use: doubled as entries come, up to bucket_mask */
	size_t bucket_mask; /* of both bucket arrays as made; the user buckets are all in use */
	size_t bytes;       /* allocated for the arrays: at most limits.max_bytes */
	struct cr_entry *entries; /* [0] unused: index 0 means none */
	struct cr_user *users;    /* [0] unused */
	uint32_t *buckets;
	uint32_t *user_buckets;
	uint32_t entry_free, user_free; /* free lists, through hnext */
	uint32_t entry_unused, user_unused; /* first index never handed out yet */
	size_t user_count;
	uint32_t lru_head, lru_tail; /* head: most recently used */
	uint32_t global_gen;
	unsigned char hash_key[16];
	uint64_t evictions;      /* made room at the bound of the whole cache */
	uint64_t user_evictions; /* made room at the bound of one user */
};

/* At most max_entries entries, no bound per user (max_bytes follows). */
int cr_cache_init(struct cr_cache *cache, size_t max_entries, const unsigned char hash_key[16]);
/* 0, or -1 when the limits hold no entry or out of memory. */
int cr_cache_init_limits(struct cr_cache *cache, const struct cr_cache_limits *limits,
		const unsigned char hash_key[16]);
void cr_cache_free(struct cr_cache *cache);

/* What one entry costs at most, all arrays counted (the figure that divides max_bytes). */
size_t cr_cache_bytes_per_entry(void);

/* 1 and *result set on a fresh hit, 0 on a miss (absent, expired, stale). */
int cr_cache_get(struct cr_cache *cache, const struct cr_key *key, int64_t now_ms, int *result);

/* 0, or -1 when nothing could be cached. */
int cr_cache_put(struct cr_cache *cache, const struct cr_key *key, int result, int64_t expires_ms);

void cr_cache_drop_user(struct cr_cache *cache, const char *user);
void cr_cache_drop_all(struct cr_cache *cache);

#endif
