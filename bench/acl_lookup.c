/* What a warm ACL look-up in cregistry's plugin costs, and where it goes: the
 * cache of mosquitto/plugin/cache.c filled as the bench's fan-out fills it (10
 * subscribers, 100 topics, one publisher), then every delivery's look-up timed
 * in the broker's order (the publisher's write, then each subscriber's read),
 * and the key's digest alone (SipHash-2-4-128 over the same bytes).
 *
 *   make bench/build/acl_lookup && bench/build/acl_lookup [rounds]
 *
 * Prints one JSON line: nanoseconds per look-up (median of 7 runs) for the
 * whole cr_cache_get, the digest alone, and the rest (bucket walk, freshness,
 * LRU relinks). A measurement, not a test: nothing here asserts a time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "siphash.h"

#define SUBSCRIBERS 10
#define TOPICS 100
#define RUNS 7

struct client {
	char user[32];
	char id[32];
};

static struct client clients[SUBSCRIBERS + 1]; /* [0]: the publisher */
static char topics[TOPICS][64];

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* As cr_on_acl_check makes it (checks.c). */
static void acl_key(struct cr_key *key, const struct client *c, const char *topic, int acc)
{
	key->user = c->user;
	key->user_len = strlen(c->user);
	key->kind = CR_KIND_ACL;
	key->access = (uint8_t)acc;
	key->part[0] = c->id;
	key->part_len[0] = strlen(c->id);
	key->part[1] = topic;
	key->part_len[1] = strlen(topic);
}

static int compare(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), compare);
	return v[n / 2];
}

/* One delivery round over every topic: the publisher's write, then each subscriber's read. */
static double time_gets(struct cr_cache *cache, long rounds, long *sink)
{
	struct cr_key key;
	int result;
	double start = now_ns();
	long count = 0;

	for(long r = 0; r < rounds; r++){
		for(int t = 0; t < TOPICS; t++){
			for(int c = 0; c <= SUBSCRIBERS; c++){
				acl_key(&key, &clients[c], topics[t], c == 0 ? 2 : 1);
				*sink += cr_cache_get(cache, &key, 1000, &result) ? result + 1 : 0;
				count++;
			}
		}
	}
	return (now_ns() - start) / (double)count;
}

/* The same keys' digests alone, over the bytes cache.c hashes (a header word, then the parts). */
static double time_digests(const unsigned char hash_key[16], long rounds, long *sink)
{
	struct cr_key key;
	struct cr_sip s;
	uint64_t out[2];
	double start = now_ns();
	long count = 0;

	for(long r = 0; r < rounds; r++){
		for(int t = 0; t < TOPICS; t++){
			for(int c = 0; c <= SUBSCRIBERS; c++){
				acl_key(&key, &clients[c], topics[t], c == 0 ? 2 : 1);
				uint64_t header = (uint64_t)key.user_len | (uint64_t)key.part_len[0] << 16
					| (uint64_t)key.part_len[1] << 32 | (uint64_t)key.kind << 48 | (uint64_t)key.access << 56;
				unsigned char flat[256];
				size_t len = 0;
				memcpy(flat, &header, sizeof(header));
				len += sizeof(header);
				memcpy(flat + len, key.user, key.user_len);
				len += key.user_len;
				memcpy(flat + len, key.part[0], key.part_len[0]);
				len += key.part_len[0];
				memcpy(flat + len, key.part[1], key.part_len[1]);
				len += key.part_len[1];
				cr_sip128_init(&s, hash_key);
				cr_sip_update(&s, flat, len);
				cr_sip128_final(&s, out);
				*sink += (long)(out[0] ^ out[1]);
				count++;
			}
		}
	}
	return (now_ns() - start) / (double)count;
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 2000;
	unsigned char hash_key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
	struct cr_cache_limits limits = {64u << 20, 0, 5}; /* the plugin's defaults: 64 MiB, 5 % per user */
	struct cr_cache cache;
	struct cr_key key;
	double gets[RUNS], digests[RUNS];
	long sink = 0;

	if(rounds < 1 || cr_cache_init_limits(&cache, &limits, hash_key) != 0){
		fprintf(stderr, "usage: acl_lookup [rounds >= 1]\n");
		return 2;
	}
	/* names as long as the bench's (bench/run.py publish: bench-pub, bench-sub, bench/fanout/<n>) */
	snprintf(clients[0].user, sizeof(clients[0].user), "bench-pub");
	snprintf(clients[0].id, sizeof(clients[0].id), "loadgen-pub-12345");
	for(int c = 1; c <= SUBSCRIBERS; c++){
		snprintf(clients[c].user, sizeof(clients[c].user), "bench-sub");
		snprintf(clients[c].id, sizeof(clients[c].id), "loadgen-sub-12345-%d", c);
	}
	for(int t = 0; t < TOPICS; t++){
		snprintf(topics[t], sizeof(topics[t]), "bench/fanout/%d", t);
	}
	for(int t = 0; t < TOPICS; t++){
		for(int c = 0; c <= SUBSCRIBERS; c++){
			acl_key(&key, &clients[c], topics[t], c == 0 ? 2 : 1);
			if(cr_cache_put(&cache, &key, 0, 1000 + 3600 * 1000) != 0){
				fprintf(stderr, "acl_lookup: could not fill the cache\n");
				return 1;
			}
		}
	}
	for(int i = 0; i < RUNS; i++){
		gets[i] = time_gets(&cache, rounds, &sink);
		digests[i] = time_digests(hash_key, rounds, &sink);
	}
	double get = median(gets, RUNS), digest = median(digests, RUNS);
	printf("{\"lookups_per_run\": %ld, \"get_ns\": %.1f, \"digest_ns\": %.1f, \"rest_ns\": %.1f, \"sink\": %ld}\n",
			rounds * TOPICS * (SUBSCRIBERS + 1), get, digest, get - digest, sink & 1);
	cr_cache_free(&cache);
	return 0;
}
