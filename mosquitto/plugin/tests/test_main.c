/* C unit tests of the plugin's logic that the broker tier cannot reach:
 * the cache, the feed-answer parser and its application, option parsing and
 * the CONNECT digest. A small runner of its own; prints "N passed, N failed". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <mosquitto.h>

#include "answer.h"
#include "certificate.h"
#include "siphash.h"
#include "state.h"
#include "warm.h"

/* A test case is a named section; it passes when all its checks pass. */
static int passed, failed, checks;
static const char *current;
static bool current_failed;

static void finish_case(void)
{
	if(current){
		if(current_failed){
			failed++;
		}else{
			passed++;
		}
	}
	current = NULL;
	current_failed = false;
}

static void begin(const char *name)
{
	finish_case();
	current = name;
}

#define CHECK(cond) \
	do{ \
		checks++; \
		if(!(cond)){ \
			current_failed = true; \
			fprintf(stderr, "FAIL %s (%s:%d): %s\n", current, __FILE__, __LINE__, #cond); \
		} \
	}while(0)

/* -- the broker functions poll.c calls, recorded ------------------------- */
static char kicked[8][64];
static int kick_count;
static int published;

int mosquitto_kick_client_by_username(const char *username, bool with_will)
{
	(void)with_will;
	if(kick_count < 8){
		snprintf(kicked[kick_count], sizeof(kicked[0]), "%s", username);
	}
	kick_count++;
	return 0;
}

static char kicked_ids[8][64];
static int kick_id_count;

int mosquitto_kick_client_by_clientid(const char *clientid, bool with_will)
{
	(void)with_will;
	if(kick_id_count < 8){
		snprintf(kicked_ids[kick_id_count], sizeof(kicked_ids[0]), "%s", clientid);
	}
	kick_id_count++;
	return 0;
}

void mosquitto_log_printf(int level, const char *fmt, ...)
{
	(void)level;
	(void)fmt;
}

int mosquitto_broker_publish_copy(const char *clientid, const char *topic, int payloadlen, const void *payload,
		int qos, bool retain, mosquitto_property *properties)
{
	(void)clientid;
	(void)topic;
	(void)payloadlen;
	(void)payload;
	(void)qos;
	(void)retain;
	(void)properties;
	published++;
	return 0;
}

/* a client of the broker, as the stand-ins below see it */
struct mosquitto {
	const char *username;
};

const char *mosquitto_client_username(const struct mosquitto *client)
{
	return client->username;
}

/* the broker's connected clients (mosquitto_apply_on_all_clients walks them) */
static struct mosquitto connected[4];
static int connected_count;

static int apply_on_all_clients(int (*functor)(const struct mosquitto *, void *), void *context)
{
	for(int i = 0; i < connected_count; i++){
		int rc = functor(&connected[i], context);
		if(rc != 0){
			return rc;
		}
	}
	return 0;
}

/* mosquitto_complete_basic_auth, recorded */
static char completed[8][64];
static int completed_result[8];
static int complete_count;

static void complete_basic_auth(const char *clientid, int result)
{
	if(complete_count < 8){
		snprintf(completed[complete_count], sizeof(completed[0]), "%s", clientid);
		completed_result[complete_count] = result;
	}
	complete_count++;
}

/* the verdict of a delayed check (checks.c, not linked here) */
enum cr_verdict cr_judge(struct cr_plugin *p, long status, const struct cr_buf *body, const char *error)
{
	(void)p;
	(void)body;
	(void)error;
	return status == 200 ? CR_ALLOW : CR_FAULT;
}

/* -- helpers ---------------------------------------------------------------- */
static const unsigned char HASH_KEY[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static struct cr_key acl_key(const char *user, const char *client, const char *topic, int acc)
{
	struct cr_key k;

	memset(&k, 0, sizeof(k));
	k.user = user;
	k.user_len = strlen(user);
	k.kind = CR_KIND_ACL;
	k.access = (uint8_t)acc;
	k.part[0] = client;
	k.part_len[0] = strlen(client);
	k.part[1] = topic;
	k.part_len[1] = strlen(topic);
	return k;
}

static int lookup(struct cr_cache *c, const char *user, const char *client, const char *topic, int acc, int64_t now)
{
	struct cr_key k = acl_key(user, client, topic, acc);
	int result = -12345;

	return cr_cache_get(c, &k, now, &result) ? result : -1;
}

static void put(struct cr_cache *c, const char *user, const char *client, const char *topic, int acc, int result,
		int64_t expires)
{
	struct cr_key k = acl_key(user, client, topic, acc);

	CHECK(cr_cache_put(c, &k, result, expires) == 0);
}

/* -- cache ------------------------------------------------------------------- */
static void test_cache_hit_miss_expiry(void)
{
	struct cr_cache c;

	begin("cache hit, miss, expiry");
	CHECK(cr_cache_init(&c, 100, HASH_KEY) == 0);
	CHECK(lookup(&c, "alice", "a1", "t/1", 2, 0) == -1);
	put(&c, "alice", "a1", "t/1", 2, 0, 1000);
	put(&c, "alice", "a1", "t/1", 1, 11, 1000);
	CHECK(lookup(&c, "alice", "a1", "t/1", 2, 999) == 0);
	CHECK(lookup(&c, "alice", "a1", "t/1", 1, 999) == 11);
	CHECK(lookup(&c, "alice", "a1", "t/1", 4, 999) == -1);  /* other access */
	CHECK(lookup(&c, "alice", "a2", "t/1", 2, 999) == -1);  /* other client */
	CHECK(lookup(&c, "alice", "a1", "t/10", 2, 999) == -1); /* other topic */
	CHECK(lookup(&c, "alicea", "1", "t/1", 2, 999) == -1);  /* no ambiguity across fields */
	CHECK(lookup(&c, "bob", "a1", "t/1", 2, 999) == -1);
	CHECK(c.count == 2);
	CHECK(lookup(&c, "alice", "a1", "t/1", 2, 1000) == -1); /* expired: a miss, and freed */
	CHECK(c.count == 1);
	put(&c, "alice", "a1", "t/1", 1, 22, 5000); /* replaces */
	CHECK(c.count == 1);
	CHECK(lookup(&c, "alice", "a1", "t/1", 1, 1001) == 22);
	cr_cache_free(&c);
	CHECK(c.count == 0);
}

static void test_cache_eviction_at_bound(void)
{
	struct cr_cache c;
	char topic[32];

	begin("cache eviction at the bound (LRU)");
	CHECK(cr_cache_init(&c, 3, HASH_KEY) == 0);
	put(&c, "u", "c", "t1", 2, 0, 1000);
	put(&c, "u", "c", "t2", 2, 0, 1000);
	put(&c, "u", "c", "t3", 2, 0, 1000);
	CHECK(lookup(&c, "u", "c", "t1", 2, 0) == 0); /* t1 now most recent: t2 is the oldest */
	put(&c, "v", "c", "t4", 2, 0, 1000);
	CHECK(c.count == 3);
	CHECK(c.evictions == 1);
	CHECK(lookup(&c, "u", "c", "t2", 2, 0) == -1);
	CHECK(lookup(&c, "u", "c", "t1", 2, 0) == 0);
	CHECK(lookup(&c, "u", "c", "t3", 2, 0) == 0);
	CHECK(lookup(&c, "v", "c", "t4", 2, 0) == 0);
	for(int i = 0; i < 1000; i++){
		snprintf(topic, sizeof(topic), "many/%d", i);
		put(&c, i % 2 ? "u" : "w", "c", topic, 2, 0, 1000);
		CHECK(c.count <= 3);
	}
	CHECK(c.user_count <= 3);
	cr_cache_free(&c);
	CHECK(c.user_count == 0);

	begin("cache bound of one, many entries");
	CHECK(cr_cache_init(&c, 50000, HASH_KEY) == 0);
	for(int i = 0; i < 120000; i++){
		snprintf(topic, sizeof(topic), "t/%d", i);
		put(&c, "u", "c", topic, 1, 0, 1000);
	}
	CHECK(c.count == 50000);
	CHECK(lookup(&c, "u", "c", "t/119999", 1, 0) == 0);
	CHECK(lookup(&c, "u", "c", "t/70000", 1, 0) == 0);
	CHECK(lookup(&c, "u", "c", "t/69999", 1, 0) == -1);
	cr_cache_free(&c);
}

/* The entry buckets in use follow the entries: a small cache's look-ups stay in
 * a few pages of the array (cache.h), and every entry is found across each doubling. */
static void test_cache_buckets_follow_entries(void)
{
	struct cr_cache c;
	struct cr_cache_limits limits = {64u << 20, 0, 100}; /* the default cache_bytes */
	char topic[32];
	size_t bytes;
	bool all_found = true;

	begin("cache: the buckets in use follow the entries, doubled in place, every entry still found");
	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == 0);
	bytes = c.bytes;
	CHECK(c.bucket_mask + 1 >= 262144); /* the whole array, made at init */
	CHECK(c.mask + 1 == 1024);
	for(int i = 0; i < 5000; i++){
		snprintf(topic, sizeof(topic), "t/%d", i);
		put(&c, i % 3 ? "u" : "v", "c", topic, 1, i % 7, 1000);
		CHECK(c.mask + 1 >= c.count && c.mask + 1 <= 2 * c.count + 1024); /* about one bucket per entry */
	}
	CHECK(c.mask + 1 == 8192);
	CHECK(c.bytes == bytes); /* nothing allocated as it grew */
	for(int i = 0; i < 5000; i++){
		snprintf(topic, sizeof(topic), "t/%d", i);
		all_found &= lookup(&c, i % 3 ? "u" : "v", "c", topic, 1, 0) == i % 7;
	}
	CHECK(all_found);
	CHECK(lookup(&c, "u", "c", "t/5000", 1, 0) == -1);
	{
		/* a key too long to be hashed from a copy (cache.c) is cached as well */
		char long_topic[400];
		memset(long_topic, 'x', sizeof(long_topic) - 1);
		long_topic[sizeof(long_topic) - 1] = '\0';
		put(&c, "u", "c", long_topic, 1, 3, 1000);
		CHECK(lookup(&c, "u", "c", long_topic, 1, 0) == 3);
		long_topic[0] = 'y';
		CHECK(lookup(&c, "u", "c", long_topic, 1, 0) == -1);
		cr_cache_drop_user(&c, "u");
		long_topic[0] = 'x';
		CHECK(lookup(&c, "u", "c", long_topic, 1, 0) == -1);
	}
	cr_cache_drop_user(&c, "v"); /* stale entries are met and freed in their moved buckets */
	CHECK(lookup(&c, "v", "c", "t/0", 1, 0) == -1);
	CHECK(c.count == 4999); /* the long key and v's t/0, met stale and freed */
	cr_cache_free(&c);

	begin("cache: a bound smaller than the first buckets uses all of them");
	CHECK(cr_cache_init(&c, 100, HASH_KEY) == 0);
	CHECK(c.mask == c.bucket_mask && c.mask + 1 == 64);
	for(int i = 0; i < 300; i++){
		snprintf(topic, sizeof(topic), "t/%d", i);
		put(&c, "u", "c", topic, 1, 0, 1000);
	}
	CHECK(c.count == 100 && c.mask + 1 == 64);
	CHECK(lookup(&c, "u", "c", "t/299", 1, 0) == 0);
	cr_cache_free(&c);
}

static void test_cache_invalidation(void)
{
	struct cr_cache c;

	begin("cache per-user and global invalidation");
	CHECK(cr_cache_init(&c, 100, HASH_KEY) == 0);
	put(&c, "alice", "a1", "t", 2, 0, 1000);
	put(&c, "alice", "a2", "t", 4, 0, 1000);
	put(&c, "bob", "b1", "t", 2, 0, 1000);
	cr_cache_drop_user(&c, "alice");
	CHECK(lookup(&c, "alice", "a1", "t", 2, 0) == -1);
	CHECK(lookup(&c, "alice", "a2", "t", 4, 0) == -1);
	CHECK(lookup(&c, "bob", "b1", "t", 2, 0) == 0);
	cr_cache_drop_user(&c, "nobody"); /* nothing cached: nothing to do */
	cr_cache_drop_user(&c, "");
	put(&c, "alice", "a1", "t", 2, 0, 1000); /* cached again after the drop */
	CHECK(lookup(&c, "alice", "a1", "t", 2, 0) == 0);
	cr_cache_drop_all(&c);
	CHECK(lookup(&c, "alice", "a1", "t", 2, 0) == -1);
	CHECK(lookup(&c, "bob", "b1", "t", 2, 0) == -1);
	put(&c, "bob", "b1", "t", 2, 0, 1000);
	CHECK(lookup(&c, "bob", "b1", "t", 2, 0) == 0);
	/* a stale entry met by put is replaced, one by eviction is freed */
	cr_cache_drop_user(&c, "bob");
	put(&c, "bob", "b1", "t", 2, 13, 1000);
	CHECK(lookup(&c, "bob", "b1", "t", 2, 0) == 13);
	cr_cache_free(&c);
}

/* -- cache bounded in bytes ----------------------------------------------------- */
#define BIG (60 * 1024) /* the attack of issue 25: a 60 KB client ID, distinct 60 KB topics */

/* "<prefix><n>" padded with 'x' to len bytes */
static void big_string(char *buf, size_t len, const char *prefix, int n)
{
	int head = snprintf(buf, len + 1, "%s%d/", prefix, n);

	memset(buf + head, 'x', len - (size_t)head);
	buf[len] = '\0';
}

static long resident_kib(void)
{
	long pages_total = 0, pages_resident = -1;
	FILE *f = fopen("/proc/self/statm", "r");

	if(f == NULL){
		return -1;
	}
	if(fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2){
		pages_resident = -1;
	}
	fclose(f);
	return pages_resident < 0 ? -1 : pages_resident * 4;
}

static void test_cache_bytes_bound(void)
{
	struct cr_cache c;
	struct cr_cache_limits limits = {1 << 20, 0, 100};
	char *client = malloc(BIG + 1);
	char *topic = malloc(BIG + 1);
	size_t bytes;

	begin("cache bounded in bytes: 60 KB client IDs and topics are never stored");
	CHECK(cr_cache_bytes_per_entry() <= 150); /* issue 26: at most 150 bytes an entry */
	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == 0);
	CHECK(c.bytes <= limits.max_bytes);
	CHECK(c.max_entries == (limits.max_bytes - 96) / cr_cache_bytes_per_entry());
	bytes = c.bytes;
	big_string(client, BIG, "device-", 0);
	for(int i = 0; i < 3 * (int)c.max_entries; i++){
		big_string(topic, BIG, "flood/", i);
		put(&c, "flooder", client, topic, 2, 12, 1000);
		CHECK(c.count <= c.max_entries);
	}
	CHECK(c.count == c.max_entries);
	CHECK(c.bytes == bytes); /* nothing allocated per entry */
	CHECK(c.evictions + c.user_evictions == 2 * c.max_entries); /* its own oldest, at the whole bound */
	CHECK(lookup(&c, "flooder", client, topic, 2, 0) == 12); /* the newest is there, by its digest */
	topic[BIG - 1] = 'y';
	CHECK(lookup(&c, "flooder", client, topic, 2, 0) == -1); /* its last byte counts */
	client[BIG - 1] = 'y';
	topic[BIG - 1] = 'x';
	CHECK(lookup(&c, "flooder", client, topic, 2, 0) == -1); /* so does the client ID's */
	cr_cache_free(&c);

	limits.max_bytes = 1000;
	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == 0 && c.max_entries == 8 && c.bytes <= 1000);
	cr_cache_free(&c);
	limits.max_bytes = 150;
	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == -1); /* room for no entry */
	limits.max_bytes = 1 << 20;
	limits.user_percent = 0;
	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == -1);
	free(client);
	free(topic);
}

/* Legitimate users fill 90 of 100 entries; one approved device then floods
 * 10,000 distinct topics. */
static int flood_survivors(unsigned user_percent, size_t *flooder_entries)
{
	struct cr_cache c;
	struct cr_cache_limits limits = {SIZE_MAX, 100, user_percent};
	char topic[32], user[16];
	int survivors = 0;

	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == 0);
	for(int i = 0; i < 90; i++){
		snprintf(user, sizeof(user), "dev-%d", i % 10);
		snprintf(topic, sizeof(topic), "legit/%d", i);
		put(&c, user, "c", topic, 2, 0, 1000);
	}
	for(int i = 0; i < 10000; i++){
		snprintf(topic, sizeof(topic), "flood/%d", i);
		put(&c, "flooder", "f", topic, 2, 12, 1000);
		CHECK(c.count <= 100);
	}
	*flooder_entries = c.count;
	for(int i = 0; i < 90; i++){
		snprintf(user, sizeof(user), "dev-%d", i % 10);
		snprintf(topic, sizeof(topic), "legit/%d", i);
		if(lookup(&c, user, "c", topic, 2, 0) == 0){
			survivors++;
		}
	}
	*flooder_entries -= (size_t)survivors;
	CHECK(c.user_count <= c.count);
	CHECK(lookup(&c, "flooder", "f", "flood/9999", 2, 0) == 12);
	cr_cache_free(&c);
	return survivors;
}

static void test_cache_user_share(void)
{
	size_t flooder;

	begin("one user's flood evicts at most its share of the others' entries");
	/* 25 %: the flooder takes the 10 free entries, then 15 of the oldest
	 * others', then replaces its own least recently used */
	CHECK(flood_survivors(25, &flooder) == 75);
	CHECK(flooder == 25);
	/* without the share (the old cache), the same flood evicts everyone */
	CHECK(flood_survivors(100, &flooder) == 0);
	CHECK(flooder == 100);
}

static void test_cache_users_by_digest(void)
{
	struct cr_cache c;
	struct cr_cache_limits limits = {SIZE_MAX, 64, 25};
	char topic[32], user[16];

	begin("invalidation by user with digests, and the user records stay bounded");
	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == 0);
	CHECK(c.user_max == 16);
	for(int i = 0; i < 40; i++){ /* over alice's share: her oldest go, bob's stay */
		snprintf(topic, sizeof(topic), "a/%d", i);
		put(&c, "alice", "a1", topic, 2, 0, 1000);
	}
	put(&c, "bob", "b1", "t", 2, 0, 1000);
	CHECK(c.count == 17 && c.user_evictions == 24);
	CHECK(lookup(&c, "alice", "a1", "a/39", 2, 0) == 0);
	CHECK(lookup(&c, "alice", "a1", "a/24", 2, 0) == 0);
	CHECK(lookup(&c, "alice", "a1", "a/23", 2, 0) == -1);
	cr_cache_drop_user(&c, "alice");
	for(int i = 24; i < 40; i++){
		snprintf(topic, sizeof(topic), "a/%d", i);
		CHECK(lookup(&c, "alice", "a1", topic, 2, 0) == -1);
	}
	CHECK(lookup(&c, "bob", "b1", "t", 2, 0) == 0);
	CHECK(c.count == 1 && c.user_count == 1); /* alice's stale entries freed when met, and her record */
	/* 10,000 users of one entry each: records are reused, never more than entries */
	for(int i = 0; i < 10000; i++){
		snprintf(user, sizeof(user), "u%d", i);
		put(&c, user, "c", "t", 1, 0, 1000);
		CHECK(c.user_count <= c.count && c.count <= 64);
	}
	CHECK(c.user_count == 64);
	CHECK(lookup(&c, "u9999", "c", "t", 1, 0) == 0);
	cr_cache_drop_user(&c, "u9999");
	CHECK(lookup(&c, "u9999", "c", "t", 1, 0) == -1);
	CHECK(lookup(&c, "u9998", "c", "t", 1, 0) == 0);
	cr_cache_free(&c);
}

/* Issue 26's figure: what 100,000 entries cost, as allocated (the bound) and
 * as resident (pages touched; the plain build only: ASan adds its shadow). */
static void test_cache_bytes_per_entry(void)
{
	struct cr_cache c;
	struct cr_cache_limits limits = {SIZE_MAX, 100000, 100};
	char topic[48], user[16];
	long before, after;

	begin("100,000 entries: at most 150 bytes each, allocated and resident");
	before = resident_kib();
	CHECK(cr_cache_init_limits(&c, &limits, HASH_KEY) == 0);
	for(int i = 0; i < 100000; i++){
		snprintf(user, sizeof(user), "dev-%d", i % 1000);
		snprintf(topic, sizeof(topic), "devices/%d/telemetry/%d", i % 1000, i);
		put(&c, user, "client-of-that-device", topic, 2, 0, 1000);
	}
	after = resident_kib();
	CHECK(c.count == 100000 && c.evictions == 0);
	CHECK(c.bytes / 100000 <= 150);
	printf("cache: 100,000 entries, %zu bytes allocated (%.1f an entry), resident growth %ld KiB (%.1f an entry)\n",
			c.bytes, c.bytes / 100000.0, after - before, (after - before) * 1024.0 / 100000);
#ifndef __SANITIZE_ADDRESS__
	CHECK(before > 0 && after > before && (after - before) * 1024 / 100000 <= 150);
#endif
	cr_cache_free(&c);
}

/* SipHash-2-4-128 against the reference vectors (key 00..0f, messages 00..len-1),
 * and fed in parts as the cache feeds it. */
static void test_siphash128(void)
{
	static const char *const expected[] = {
		"a3817f04ba25a8e66df67214c7550293", /* empty */
		"3b62a9ba6258f5610f83e264f31497b4", /* 8 bytes */
		"5493e99933b0a8117e08ec0f97cfc3d9", /* 15 bytes */
	};
	static const size_t lengths[] = {0, 8, 15};
	unsigned char key[16], message[64], bytes[16];
	char hex[33];
	uint64_t whole[2], split[2];
	struct cr_sip s;

	begin("SipHash-2-4-128: reference vectors and parts");
	for(int i = 0; i < 16; i++){
		key[i] = (unsigned char)i;
	}
	for(int i = 0; i < 64; i++){
		message[i] = (unsigned char)i;
	}
	for(size_t v = 0; v < 3; v++){
		cr_sip128_init(&s, key);
		cr_sip_update(&s, message, lengths[v]);
		cr_sip128_final(&s, whole);
		for(int w = 0; w < 2; w++){
			for(int b = 0; b < 8; b++){
				bytes[8 * w + b] = (unsigned char)(whole[w] >> (8 * b));
			}
		}
		for(int b = 0; b < 16; b++){
			snprintf(hex + 2 * b, 3, "%02x", bytes[b]);
		}
		CHECK(strcmp(hex, expected[v]) == 0);
	}
	cr_sip128_init(&s, key);
	cr_sip_update(&s, message, 61);
	cr_sip128_final(&s, whole);
	for(size_t cut1 = 0; cut1 <= 61; cut1++){
		for(size_t cut2 = cut1; cut2 <= 61; cut2 += 3){
			cr_sip128_init(&s, key);
			cr_sip_update(&s, message, cut1);
			cr_sip_update(&s, message + cut1, cut2 - cut1);
			cr_sip_update(&s, message + cut2, 61 - cut2);
			cr_sip128_final(&s, split);
			CHECK(split[0] == whole[0] && split[1] == whole[1]);
		}
	}
}

static void test_cache_key_beyond_mqtt(void)
{
	struct cr_cache c;
	char *topic = malloc(70000);

	begin("cache: a key no MQTT packet can carry is never cached");
	CHECK(cr_cache_init(&c, 10, HASH_KEY) == 0);
	memset(topic, 't', 69999);
	topic[69999] = '\0';
	struct cr_key k = acl_key("u", "c", topic, 2);
	CHECK(cr_cache_put(&c, &k, 0, 1000) == -1);
	CHECK(cr_cache_get(&c, &k, 0, &(int){0}) == 0);
	CHECK(c.count == 0);
	topic[65535] = '\0'; /* the longest an MQTT string can be */
	k = acl_key("u", "c", topic, 2);
	CHECK(cr_cache_put(&c, &k, 0, 1000) == 0);
	CHECK(lookup(&c, "u", "c", topic, 2, 0) == 0);
	cr_cache_free(&c);
	free(topic);
}

/* -- digest ------------------------------------------------------------------ */
static bool contains(const void *hay, size_t haylen, const char *needle)
{
	size_t n = strlen(needle);

	for(size_t i = 0; i + n <= haylen; i++){
		if(memcmp((const char *)hay + i, needle, n) == 0){
			return true;
		}
	}
	return false;
}

static void test_digest(void)
{
	unsigned char key[CR_DIGEST_KEY_LEN], key2[CR_DIGEST_KEY_LEN];
	unsigned char a[CR_DIGEST_LEN], b[CR_DIGEST_LEN];
	struct cr_cache c;
	struct cr_key k;
	const char *password = "correct-horse-battery";
	int result;

	begin("HMAC keying of CONNECT entries");
	CHECK(cr_digest_new_key(key) == 0);
	CHECK(cr_digest_new_key(key2) == 0);
	CHECK(memcmp(key, key2, sizeof(key)) != 0);
	CHECK(cr_connect_digest(key, "alice", password, "c1", a) == 0);
	CHECK(cr_connect_digest(key, "alice", password, "c1", b) == 0);
	CHECK(memcmp(a, b, sizeof(a)) == 0);
	CHECK(cr_connect_digest(key, "alice", "correct-horse-batterY", "c1", b) == 0);
	CHECK(memcmp(a, b, sizeof(a)) != 0);
	CHECK(cr_connect_digest(key, "alice", password, "c2", b) == 0);
	CHECK(memcmp(a, b, sizeof(a)) != 0);
	CHECK(cr_connect_digest(key2, "alice", password, "c1", b) == 0);
	CHECK(memcmp(a, b, sizeof(a)) != 0); /* another broker process, another key */
	CHECK(cr_connect_digest(key, "ab", "c", "d", a) == 0);
	CHECK(cr_connect_digest(key, "a", "bc", "d", b) == 0);
	CHECK(memcmp(a, b, sizeof(a)) != 0); /* the separators keep fields apart */
	CHECK(cr_connect_digest(key, "a", "", "d", a) == 0);
	CHECK(cr_connect_digest(key, "a", NULL, "d", b) == 0);
	CHECK(memcmp(a, b, sizeof(a)) == 0);

	/* what the cache keeps of a CONNECT: a digest of the key, not the user name, the password's HMAC or the id */
	CHECK(cr_cache_init(&c, 10, HASH_KEY) == 0);
	CHECK(cr_connect_digest(key, "alice", password, "c1", a) == 0);
	memset(&k, 0, sizeof(k));
	k.user = "alice";
	k.user_len = 5;
	k.kind = CR_KIND_CONNECT;
	k.part[0] = a;
	k.part_len[0] = sizeof(a);
	k.part[1] = "";
	CHECK(cr_cache_put(&c, &k, 0, 1000) == 0);
	CHECK(cr_cache_get(&c, &k, 0, &result) == 1);
	struct cr_entry *e = &c.entries[c.lru_head];
	CHECK(c.lru_head != 0);
	CHECK(!contains(e, sizeof(*e), password));
	CHECK(!contains(e, sizeof(*e), "horse"));
	CHECK(!contains(e, sizeof(*e), "alice"));
	CHECK(!contains(&c.users[e->user], sizeof(c.users[0]), "alice"));
	CHECK(memcmp(e->digest, a, 16) != 0); /* not the HMAC itself either */
	cr_connect_digest(key, "alice", "wrong", "c1", b);
	k.part[0] = b;
	CHECK(cr_cache_get(&c, &k, 0, &result) == 0); /* another password never matches */
	cr_cache_free(&c);
}

static void test_siphash_parts(void)
{
	const char *text = "the quick brown fox jumps over the lazy dog, again and again";
	size_t len = strlen(text);
	struct cr_sip s;
	uint64_t whole, other;

	begin("keyed hash fed in parts");
	cr_sip_init(&s, HASH_KEY);
	cr_sip_update(&s, text, len);
	whole = cr_sip_final(&s);
	for(size_t cut1 = 0; cut1 <= len; cut1 += 3){
		for(size_t cut2 = cut1; cut2 <= len; cut2 += 5){
			cr_sip_init(&s, HASH_KEY);
			cr_sip_update(&s, text, cut1);
			cr_sip_update(&s, text + cut1, cut2 - cut1);
			cr_sip_update(&s, text + cut2, len - cut2);
			CHECK(cr_sip_final(&s) == whole);
		}
	}
	unsigned char key2[16];
	memcpy(key2, HASH_KEY, 16);
	key2[0] ^= 1;
	cr_sip_init(&s, key2);
	cr_sip_update(&s, text, len);
	other = cr_sip_final(&s);
	CHECK(other != whole);
}

/* -- feed answers -------------------------------------------------------------- */
static int parse(const char *body, struct cr_feed_answer *a)
{
	char err[128];

	return cr_feed_parse(body, strlen(body), a, err, sizeof(err));
}

static void test_feed_parse(void)
{
	struct cr_feed_answer a;

	begin("feed answer: changes");
	CHECK(parse("{\"ok\": true, \"position\": \"1700000000000-0\", \"reset\": false, \"changes\": ["
			"{\"user\": \"alice\", \"kick\": false}, {\"user\": \"bob\", \"kick\": true}, {\"all\": true}]}", &a) == 0);
	CHECK(strcmp(a.position, "1700000000000-0") == 0);
	CHECK(!a.reset);
	CHECK(a.count == 3);
	CHECK(a.changes[0].type == CR_CHANGE_USER && strcmp(a.changes[0].user, "alice") == 0 && !a.changes[0].kick);
	CHECK(a.changes[1].type == CR_CHANGE_USER && strcmp(a.changes[1].user, "bob") == 0 && a.changes[1].kick);
	CHECK(a.changes[2].type == CR_CHANGE_ALL);
	CHECK(a.changes[0].client_id == NULL && a.changes[1].client_id == NULL);
	cr_feed_answer_free(&a);

	begin("feed answer: a client ID given to a user");
	CHECK(parse("{\"position\":\"2-0\",\"changes\":[{\"user\":\"alice\",\"kick\":false,\"clientId\":\"a-1\"},"
			"{\"user\":\"bob\",\"clientId\":\"\"},{\"user\":\"carol\",\"clientId\":7}]}", &a) == 0);
	CHECK(a.count == 3);
	CHECK(a.changes[0].client_id != NULL && strcmp(a.changes[0].client_id, "a-1") == 0);
	CHECK(a.changes[1].client_id == NULL && a.changes[2].client_id == NULL); /* empty or not text: none */
	cr_feed_answer_free(&a);

	begin("feed answer: reset, empty, missing fields");
	CHECK(parse("{\"ok\":true,\"position\":\"5-1\",\"reset\":true,\"changes\":[]}", &a) == 0);
	CHECK(a.reset && a.count == 0 && strcmp(a.position, "5-1") == 0);
	cr_feed_answer_free(&a);
	CHECK(parse("{\"position\":\"5-1\",\"reset\":true,\"changes\":[{\"user\":\"x\",\"kick\":true}]}", &a) == 0);
	CHECK(a.reset && a.count == 1 && a.changes[0].kick); /* recorded after a data loss */
	cr_feed_answer_free(&a);
	CHECK(parse("{\"position\":\"a.b_c:d~e-f\"}", &a) == 0);
	CHECK(!a.reset && a.count == 0);
	cr_feed_answer_free(&a);

	begin("feed answer: unknown shapes are skipped");
	CHECK(parse("{\"position\":\"9-0\",\"future\":{\"x\":1},\"changes\":[1,\"s\",null,[],{},{\"user\":7},"
			"{\"user\":\"\"},{\"all\":false},{\"all\":\"yes\"},{\"role\":\"r\"},"
			"{\"user\":\"carol\",\"kick\":\"true\",\"extra\":1},{\"user\":\"dave\",\"kick\":1}]}", &a) == 0);
	CHECK(a.count == 2);
	CHECK(strcmp(a.changes[0].user, "carol") == 0 && !a.changes[0].kick);
	CHECK(strcmp(a.changes[1].user, "dave") == 0 && !a.changes[1].kick);
	cr_feed_answer_free(&a);

	begin("feed answer: garbage");
	CHECK(parse("", &a) == -1);
	CHECK(parse("not json", &a) == -1);
	CHECK(parse("[]", &a) == -1);
	CHECK(parse("\"position\"", &a) == -1);
	CHECK(parse("{\"changes\":[]}", &a) == -1);                  /* no position */
	CHECK(parse("{\"position\":5}", &a) == -1);                  /* wrong type */
	CHECK(parse("{\"position\":\"\"}", &a) == -1);
	CHECK(parse("{\"position\":\"a b\"}", &a) == -1);            /* outside the alphabet */
	CHECK(parse("{\"position\":\"a/b\"}", &a) == -1);
	CHECK(parse("{\"position\":\"1-0\",\"reset\":\"no\"}", &a) == -1);
	CHECK(parse("{\"position\":\"1-0\",\"reset\":0}", &a) == -1);
	CHECK(parse("{\"position\":\"1-0\",\"changes\":{}}", &a) == -1);
	CHECK(parse("{\"position\":\"1-0\",\"changes\":[{\"user\":\"a\"}", &a) == -1); /* cut short */
	CHECK(cr_feed_parse(NULL, 0, &a, (char[64]){0}, 64) == -1);

	begin("feed answer: sizes");
	char position[CR_POSITION_MAX + 2];
	char body[512];
	memset(position, 'p', sizeof(position));
	position[CR_POSITION_MAX] = '\0';
	snprintf(body, sizeof(body), "{\"position\":\"%s\"}", position);
	CHECK(parse(body, &a) == 0);
	CHECK(strlen(a.position) == CR_POSITION_MAX);
	cr_feed_answer_free(&a);
	position[CR_POSITION_MAX] = 'p';
	position[CR_POSITION_MAX + 1] = '\0';
	snprintf(body, sizeof(body), "{\"position\":\"%s\"}", position);
	CHECK(parse(body, &a) == -1);

	/* 1000 changes, as the service sends at most */
	size_t cap = 64 + 1000 * 40;
	char *big = malloc(cap);
	CHECK(big != NULL);
	size_t n = (size_t)snprintf(big, cap, "{\"position\":\"2-0\",\"changes\":[");
	for(int i = 0; i < 1000; i++){
		n += (size_t)snprintf(big + n, cap - n, "%s{\"user\":\"user-%d\",\"kick\":%s}", i ? "," : "", i,
				i % 2 ? "true" : "false");
	}
	snprintf(big + n, cap - n, "]}");
	CHECK(parse(big, &a) == 0);
	CHECK(a.count == 1000);
	CHECK(strcmp(a.changes[999].user, "user-999") == 0 && a.changes[999].kick);
	cr_feed_answer_free(&a);
	free(big);

	/* larger than the bound: refused without parsing */
	big = malloc(CR_FEED_BODY_MAX + 2);
	CHECK(big != NULL);
	memset(big, ' ', CR_FEED_BODY_MAX + 1);
	memcpy(big, "{\"position\":\"1-0\"}", 18);
	big[CR_FEED_BODY_MAX + 1] = '\0';
	CHECK(cr_feed_parse(big, CR_FEED_BODY_MAX + 1, &a, body, sizeof(body)) == -1);
	CHECK(cr_feed_parse(big, CR_FEED_BODY_MAX, &a, body, sizeof(body)) == 0);
	cr_feed_answer_free(&a);
	free(big);

	/* deep nesting is refused by cJSON's nesting limit, not a crash */
	big = malloc(200002);
	CHECK(big != NULL);
	memset(big, '[', 100000);
	memset(big + 100000, ']', 100000);
	big[200000] = '\0';
	CHECK(parse(big, &a) == -1);
	free(big);
}

/* -- applying feed answers ------------------------------------------------------ */
static void test_feed_apply(void)
{
	struct cr_plugin p;
	struct cr_feed_answer a;

	begin("feed answers applied to the cache");
	memset(&p, 0, sizeof(p));
	CHECK(cr_cache_init(&p.cache, 100, HASH_KEY) == 0);
	put(&p.cache, "alice", "a", "t", 2, 0, 1000);
	put(&p.cache, "bob", "b", "t", 2, 0, 1000);
	put(&p.cache, "carol", "c", "t", 2, 0, 1000);
	kick_count = 0;

	CHECK(parse("{\"position\":\"3-0\",\"changes\":[{\"user\":\"alice\",\"kick\":false},"
			"{\"user\":\"bob\",\"kick\":true}]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(strcmp(p.position, "3-0") == 0);
	CHECK(lookup(&p.cache, "alice", "a", "t", 2, 0) == -1);
	CHECK(lookup(&p.cache, "bob", "b", "t", 2, 0) == -1);
	CHECK(lookup(&p.cache, "carol", "c", "t", 2, 0) == 0);
	CHECK(kick_count == 1 && strcmp(kicked[0], "bob") == 0);
	CHECK(p.counters.kicks == 1);

	CHECK(parse("{\"position\":\"4-0\",\"changes\":[{\"all\":true}]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(lookup(&p.cache, "carol", "c", "t", 2, 0) == -1);
	CHECK(kick_count == 1);

	put(&p.cache, "carol", "c", "t", 2, 0, 1000);
	CHECK(parse("{\"position\":\"1-0\",\"reset\":true,\"changes\":[]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(lookup(&p.cache, "carol", "c", "t", 2, 0) == -1);
	CHECK(strcmp(p.position, "1-0") == 0);
	CHECK(kick_count == 1); /* a reset alone kicks nobody */

	/* Redis lost its data; a user deleted since is kicked with the reset. */
	put(&p.cache, "dave", "d", "t", 2, 0, 1000);
	CHECK(parse("{\"position\":\"9-0\",\"reset\":true,\"changes\":[{\"user\":\"erin\",\"kick\":false},"
			"{\"user\":\"erin\",\"kick\":true}]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(lookup(&p.cache, "dave", "d", "t", 2, 0) == -1);
	CHECK(strcmp(p.position, "9-0") == 0);
	CHECK(kick_count == 2 && strcmp(kicked[1], "erin") == 0);

	/* A client ID given to alice: every cached grant goes (bob's with it among
	 * them) and whoever wears it is disconnected, unless alice was the last granted it. */
	put(&p.cache, "bob", "b", "t", 2, 0, 1000);
	put(&p.cache, "carol", "c", "t", 2, 0, 1000);
	kick_id_count = 0;
	CHECK(parse("{\"position\":\"10-0\",\"changes\":[{\"user\":\"alice\",\"kick\":false,\"clientId\":\"x-1\"}]}",
			&a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(lookup(&p.cache, "bob", "b", "t", 2, 0) == -1);
	CHECK(lookup(&p.cache, "carol", "c", "t", 2, 0) == -1);
	CHECK(kick_id_count == 1 && strcmp(kicked_ids[0], "x-1") == 0);
	CHECK(kick_count == 2);

	/* The new owner itself was the last granted with it: not kicked; anyone else is. */
	cr_wearer_granted(&p, "y-1", "alice");
	cr_wearer_granted(&p, "z-1", "bob");
	CHECK(parse("{\"position\":\"11-0\",\"changes\":[{\"user\":\"alice\",\"clientId\":\"y-1\"},"
			"{\"user\":\"alice\",\"clientId\":\"z-1\"}]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(kick_id_count == 2 && strcmp(kicked_ids[1], "z-1") == 0);
	cr_wearer_granted(&p, "z-1", "alice"); /* alice took over z-1 since */
	CHECK(parse("{\"position\":\"12-0\",\"changes\":[{\"user\":\"alice\",\"clientId\":\"z-1\"}]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(kick_id_count == 2);
	cr_cache_free(&p.cache);
}

static void test_answer_grants(void)
{
	static const char *const not_grants[] = {
		"", "OK", "<html>It works!</html>", "{}", "[]", "true", "{\"ok\":1}", "{\"ok\":\"true\"}",
		"{\"ok\":false,\"error\":\"\"}", "{\"OK\":true}", "{\"ok\":true", "[{\"ok\":true}]",
	};

	begin("a 200 grants only with cregistry's own body");
	CHECK(cr_answer_grants("{\"ok\": true, \"error\": \"\"}", 27));
	CHECK(cr_answer_grants("{\"ok\":true}", 11));
	CHECK(!cr_answer_grants(NULL, 0));
	for(size_t i = 0; i < sizeof(not_grants) / sizeof(not_grants[0]); i++){
		CHECK(!cr_answer_grants(not_grants[i], strlen(not_grants[i])));
	}
	CHECK(!cr_answer_grants("{\"ok\":true}", 6)); /* only the bytes received count */
}

static void test_tick_names_the_next(void)
{
	struct mosquitto_evt_tick tick;

	begin("a tick asks for the next one: due at once on 2.1.2, the wait bounded");
	memset(&tick, 0, sizeof(tick));
	cr_tick_ask_next(&tick, 100);
	/* what 2.1.2's plugin_tick.c computes from the fields */
	long next = (long)tick.next_s * 1000 + tick.next_ns;
	CHECK(next == 100); /* loop__update_next_event: the longest wait */
	for(long now_ns = 0; now_ns < 1000000000L; now_ns += 99999999L){
		time_t now_s = 1000;
		time_t due_s = now_s + tick.next_s;
		long due_ns = now_ns + 1000000L * tick.next_ns;
		if(due_ns > 1000000000L){
			due_ns -= 1000000000L;
			due_s += 1;
		}
		CHECK(due_s < now_s); /* mosquitto_time_cmp(now, due) > 0 on the next pass */
	}
}

static void test_next_tick(void)
{
	static struct cr_plugin p; /* static: its wearer table is large */

	begin("the next tick: in 1 ms while a delayed check waits, 10 ms while only the feed runs, idle until the poll");
	memset(&p, 0, sizeof(p));
	p.next_feed_ms = 1000 + 400;
	CHECK(cr_next_tick_ms(&p, 1000) == 100); /* idle: at the latest CR_TICK_IDLE_MS */
	CHECK(cr_next_tick_ms(&p, 1000 + 370) == 30);
	CHECK(cr_next_tick_ms(&p, 1000 + 500) == 1); /* the poll is overdue */
	p.http.feed_running = true;
	CHECK(cr_next_tick_ms(&p, 1000) == CR_TICK_BUSY_MS);
	p.delayed.in_flight = 1;
	CHECK(cr_next_tick_ms(&p, 1000) == 1); /* a device waits for the tick that finds its answer */
	p.http.feed_running = false;
	CHECK(cr_next_tick_ms(&p, 1000) == 1);
	p.delayed.in_flight = 0;
	CHECK(cr_next_tick_ms(&p, 1000) == 100); /* nothing in flight: no busy ticks */
}

static bool has_header(const struct curl_slist *list, const char *line)
{
	for(; list != NULL; list = list->next){
		if(strcmp(list->data, line) == 0){
			return true;
		}
	}
	return false;
}

static void test_position_header(void)
{
	struct cr_plugin p;
	struct cr_feed_answer a;

	begin("every check after a feed answer carries its position");
	memset(&p, 0, sizeof(p));
	CHECK(cr_cache_init(&p.cache, 100, HASH_KEY) == 0);
	CHECK(cr_http_init(&p.http, 1000) == 0);
	CHECK(p.http.check_headers == NULL); /* no position before the first answer */
	CHECK(parse("{\"position\":\"3-0~ab\",\"changes\":[]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(has_header(p.http.check_headers, "X-Cregistry-Position: 3-0~ab"));
	CHECK(has_header(p.http.check_headers, "Content-Type: application/json"));
	CHECK(parse("{\"position\":\"1-0\",\"reset\":true,\"changes\":[]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(has_header(p.http.check_headers, "X-Cregistry-Position: 1-0"));
	CHECK(!has_header(p.http.check_headers, "X-Cregistry-Position: 3-0~ab"));
	cr_http_cleanup(&p.http);
	cr_cache_free(&p.cache);
}

/* -- options -------------------------------------------------------------------- */
static int opts(struct cr_options *o, int count, ...)
{
	struct mosquitto_opt list[16];
	char err[256];
	va_list ap;
	int rc;

	va_start(ap, count);
	for(int i = 0; i < count; i++){
		list[i].key = va_arg(ap, char *);
		list[i].value = va_arg(ap, char *);
	}
	va_end(ap);
	rc = cr_options_parse(o, list, count, err, sizeof(err));
	if(rc != 0 && strlen(err) == 0){
		return -2; /* a refusal always says why */
	}
	return rc;
}

static void test_options(void)
{
	struct cr_options o;

	begin("options: defaults");
	CHECK(opts(&o, 1, "url", "http://127.0.0.1:8081") == 0);
	CHECK(strcmp(o.url, "http://127.0.0.1:8081") == 0);
	CHECK(o.timeout_ms == 1750 && o.cache_seconds == 300 && o.deny_cache_seconds == 60);
	CHECK(o.cache_size == 0 && o.feed_interval_ms == 500 && o.stats_interval == 10);
	CHECK(o.cache_bytes == 64L << 20 && o.cache_user_percent == 25);
	CHECK(o.fault_backoff_ms == 1000);
	CHECK(o.delayed_auth == 1 && o.delayed_max == 64); /* delayed where the broker has it (2.1) */
	cr_options_free(&o);

	begin("options: the warm file");
	CHECK(opts(&o, 1, "url", "http://h") == 0);
	CHECK(o.warm_file == NULL && o.warm_save_interval == 60); /* off unless named */
	cr_options_free(&o);
	CHECK(opts(&o, 3, "url", "http://h", "warm_file", "/var/lib/mosquitto/cregistry.warm", "warm_save_interval", "0") == 0);
	CHECK(strcmp(o.warm_file, "/var/lib/mosquitto/cregistry.warm") == 0 && o.warm_save_interval == 0);
	cr_options_free(&o);
	CHECK(o.warm_file == NULL);
	CHECK(opts(&o, 2, "url", "http://h", "warm_file", "cregistry.warm") == -1); /* relative */
	CHECK(opts(&o, 2, "url", "http://h", "warm_file", "") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "warm_file", NULL) == -1);
	CHECK(opts(&o, 2, "url", "http://h", "warm_save_interval", "-1") == -1);

	begin("options: values");
	CHECK(opts(&o, 7, "url", "https://broker.example:8081//", "timeout_ms", "2000", "cache_seconds", "0",
			"deny_cache_seconds", "5", "cache_size", "10", "feed_interval_ms", "100", "stats_interval", "0") == 0);
	CHECK(strcmp(o.url, "https://broker.example:8081") == 0);
	CHECK(o.timeout_ms == 2000 && o.cache_seconds == 0 && o.deny_cache_seconds == 5);
	CHECK(o.cache_size == 10 && o.feed_interval_ms == 100 && o.stats_interval == 0);
	cr_options_free(&o);
	CHECK(opts(&o, 3, "url", "http://h", "cache_bytes", "65536", "cache_user_percent", "100") == 0);
	CHECK(o.cache_bytes == 65536 && o.cache_user_percent == 100);
	cr_options_free(&o);

	begin("options: refused");
	CHECK(opts(&o, 0) == -1);                                           /* url is required */
	CHECK(opts(&o, 1, "timeout_ms", "100") == -1);
	CHECK(opts(&o, 1, "url", "127.0.0.1:8081") == -1);
	CHECK(opts(&o, 1, "url", "ftp://127.0.0.1") == -1);
	CHECK(opts(&o, 1, "url", "http://") == -1);
	CHECK(opts(&o, 1, "url", "http:///") == -1);
	CHECK(opts(&o, 1, "url", "http://h/?x=1") == -1);
	CHECK(opts(&o, 1, "url", "") == -1);
	CHECK(opts(&o, 1, "url", NULL) == -1);
	char long_url[CR_URL_MAX + 2];
	memset(long_url, 'h', sizeof(long_url));
	memcpy(long_url, "http://", 7);
	long_url[CR_URL_MAX] = '\0';
	CHECK(opts(&o, 1, "url", long_url) == 0);
	cr_options_free(&o);
	long_url[CR_URL_MAX] = 'h';
	long_url[CR_URL_MAX + 1] = '\0';
	CHECK(opts(&o, 1, "url", long_url) == -1);
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", "2001") == -1); /* a check never takes over 2 s */
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", "0") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", "15OO") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", "1500ms") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", "") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", " 100") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", "+100") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "timeout_ms", NULL) == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_seconds", "-1") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_size", "-1") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_bytes", "65535") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_bytes", "68719476737") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_user_percent", "0") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_user_percent", "101") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_size", "99999999999999999999999") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "feed_interval_ms", "10") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "feed_interval_ms", "1501") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "stats_interval", "-5") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "fault_backoff_ms", "10001") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "fault_backoff_ms", "0") == 0);
	CHECK(o.fault_backoff_ms == 0);
	cr_options_free(&o);
	CHECK(opts(&o, 2, "url", "http://h", "delayed_auth", "2") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "delayed_max", "0") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "delayed_max", "1025") == -1);
	CHECK(opts(&o, 3, "url", "http://h", "delayed_auth", "0", "delayed_max", "1") == 0);
	CHECK(o.delayed_auth == 0 && o.delayed_max == 1);
	cr_options_free(&o);
	CHECK(opts(&o, 2, "url", "http://h", "cache_secs", "10") == -1);   /* a typo is not ignored */
	CHECK(opts(&o, 2, "url", "http://h", "url", "nonsense") == -1);
}

/* -- the client certificate (certificate.c, SPEC §14) ------------------------ */
/* A self-signed certificate for `cn` (NULL: a subject without a CN) on a new
 * P-256 key, as a device's would be; the caller frees it. */
static X509 *test_certificate_len(const char *cn, int cn_len)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *cert = X509_new();
	X509_NAME *name = X509_get_subject_name(cert);

	CHECK(key != NULL && cert != NULL);
	ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
	X509_gmtime_adj(X509_getm_notBefore(cert), 0);
	X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"cregistry tests", -1, -1, 0);
	if(cn != NULL){
		/* V_ASN1_UTF8STRING: the bytes as given, a NUL included */
		CHECK(X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_UTF8STRING, (const unsigned char *)cn, cn_len,
				-1, 0) == 1);
	}
	X509_set_issuer_name(cert, name);
	X509_set_pubkey(cert, key);
	CHECK(X509_sign(cert, key, EVP_sha256()) > 0);
	EVP_PKEY_free(key);
	return cert;
}

static X509 *test_certificate(const char *cn)
{
	return test_certificate_len(cn, cn == NULL ? 0 : (int)strlen(cn));
}

/* The SHA-256 of the certificate's DER, the way the service computes it
 * (over i2d_X509's bytes, not through X509_digest). */
static void der_sha256_hex(X509 *cert, char out[CR_CERT_FINGERPRINT_LEN + 1])
{
	unsigned char *der = NULL;
	unsigned char digest[32];
	int len = i2d_X509(cert, &der);

	CHECK(len > 0 && EVP_Digest(der, (size_t)len, digest, NULL, EVP_sha256(), NULL) == 1);
	for(int i = 0; i < 32; i++){
		snprintf(out + 2 * i, 3, "%02x", digest[i]);
	}
	OPENSSL_free(der);
}

static void test_certificate_identity(void)
{
	char fingerprint[CR_CERT_FINGERPRINT_LEN + 1] = "";
	char expected[CR_CERT_FINGERPRINT_LEN + 1] = "";
	char cn[256] = "";
	char short_buffer[16];
	X509 *cert;

	begin("certificate: the fingerprint is the DER's SHA-256 in lowercase hex, the CN the subject's");
	cert = test_certificate("sensor-1");
	CHECK(cr_certificate_identity(cert, fingerprint, cn, sizeof(cn)) == 0);
	der_sha256_hex(cert, expected);
	CHECK(strcmp(fingerprint, expected) == 0);
	CHECK(strlen(fingerprint) == CR_CERT_FINGERPRINT_LEN);
	CHECK(strspn(fingerprint, "0123456789abcdef") == CR_CERT_FINGERPRINT_LEN);
	CHECK(strcmp(cn, "sensor-1") == 0);
	X509_free(cert);

	begin("certificate: another certificate for the same CN has another fingerprint");
	cert = test_certificate("sensor-1");
	CHECK(cr_certificate_identity(cert, expected, cn, sizeof(cn)) == 0);
	CHECK(strcmp(fingerprint, expected) != 0);
	X509_free(cert);

	begin("certificate: no CN, a CN too long for the buffer or with a NUL cannot be read (never sent cut short)");
	cert = test_certificate(NULL);
	CHECK(cr_certificate_identity(cert, fingerprint, cn, sizeof(cn)) == -1);
	X509_free(cert);
	cert = test_certificate("sensor-0123456789");
	CHECK(cr_certificate_identity(cert, fingerprint, short_buffer, sizeof(short_buffer)) == -1);
	CHECK(short_buffer[0] == '\0');
	CHECK(cr_certificate_identity(cert, fingerprint, cn, sizeof(cn)) == 0);
	X509_free(cert);
	cert = test_certificate_len("sensor-1\0-other", 15);
	CHECK(cr_certificate_identity(cert, fingerprint, cn, sizeof(cn)) == -1);
	X509_free(cert);
	CHECK(cr_certificate_identity(NULL, fingerprint, cn, sizeof(cn)) == -1);
}

static const char *body_string(cJSON *body, const char *name)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(body, name);

	return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void test_connect_body(void)
{
	const char *fingerprint = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	cJSON *password = NULL;
	cJSON *body;

	begin("connect body: a certificate's fingerprint and CN go with the credentials");
	body = cr_connect_body("sensor-1", "pw", "client-1", fingerprint, "sensor-1", &password);
	CHECK(body != NULL);
	CHECK(body_string(body, "username") && strcmp(body_string(body, "username"), "sensor-1") == 0);
	CHECK(body_string(body, "clientid") && strcmp(body_string(body, "clientid"), "client-1") == 0);
	CHECK(body_string(body, "certfingerprint") && strcmp(body_string(body, "certfingerprint"), fingerprint) == 0);
	CHECK(body_string(body, "certcn") && strcmp(body_string(body, "certcn"), "sensor-1") == 0);
	CHECK(password != NULL && strcmp(password->valuestring, "pw") == 0);
	cJSON_Delete(body);

	begin("connect body: without a certificate, no certificate fields (the password is checked)");
	body = cr_connect_body("sensor-1", "", "client-1", "", "", &password);
	CHECK(body != NULL);
	CHECK(cJSON_GetObjectItemCaseSensitive(body, "certfingerprint") == NULL);
	CHECK(cJSON_GetObjectItemCaseSensitive(body, "certcn") == NULL);
	CHECK(body_string(body, "password") && strcmp(body_string(body, "password"), "") == 0);
	cJSON_Delete(body);
}

static int connect_granted(struct cr_cache *c, const char *user, const unsigned char digest[CR_DIGEST_LEN],
		const char *fingerprint)
{
	struct cr_key key;
	int result = -12345;

	cr_connect_key(&key, user, digest, fingerprint);
	return cr_cache_get(c, &key, 1000, &result) && result == 0;
}

static void test_connect_grant_is_per_certificate(void)
{
	const char *cert_a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
	const char *cert_b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
	unsigned char digest_key[CR_DIGEST_KEY_LEN] = {7};
	unsigned char digest[CR_DIGEST_LEN];
	struct cr_cache c;
	struct cr_key key;

	CHECK(cr_connect_digest(digest_key, "sensor-1", "", "client-1", digest) == 0);
	CHECK(cr_cache_init(&c, 10, HASH_KEY) == 0);
	cr_connect_key(&key, "sensor-1", digest, cert_a);
	CHECK(cr_cache_put(&c, &key, 0, 5000) == 0);

	begin("connect cache: a grant for one certificate answers for it only");
	CHECK(connect_granted(&c, "sensor-1", digest, cert_a));
	CHECK(!connect_granted(&c, "sensor-1", digest, cert_b)); /* another certificate, same credentials */
	CHECK(!connect_granted(&c, "sensor-1", digest, ""));     /* the same credentials without a certificate */
	CHECK(!connect_granted(&c, "sensor-2", digest, cert_a)); /* the certificate under another username */

	begin("connect cache: a grant without a certificate does not answer for one");
	cr_connect_key(&key, "sensor-1", digest, "");
	CHECK(cr_cache_put(&c, &key, 0, 5000) == 0);
	CHECK(connect_granted(&c, "sensor-1", digest, ""));
	CHECK(!connect_granted(&c, "sensor-1", digest, cert_b));

	begin("connect cache: dropping the user (a renewal or revocation on the feed) ends its certificate's grant");
	cr_cache_drop_user(&c, "sensor-1");
	CHECK(!connect_granted(&c, "sensor-1", digest, cert_a));
	cr_cache_free(&c);
}

/* -- the refusal table (refusals.c) ------------------------------------------ */
static void digest_of(const char *user, const char *password, const char *id, unsigned char out[CR_DIGEST_LEN])
{
	static const unsigned char key[CR_DIGEST_KEY_LEN] = {7};

	CHECK(cr_connect_digest(key, user, password, id, out) == 0);
}

static void test_refusals(void)
{
	struct cr_refusals r;
	unsigned char alice[CR_DIGEST_LEN], alice2[CR_DIGEST_LEN], bob[CR_DIGEST_LEN];
	uint64_t epoch;

	begin("refusals: remembered until they expire");
	CHECK(cr_refusals_init(&r, HASH_KEY) == 0);
	digest_of("alice", "wrong", "c1", alice);
	digest_of("alice", "wrong2", "c1", alice2);
	digest_of("bob", "wrong", "c1", bob);
	CHECK(!cr_refusals_has(&r, alice, 100));
	cr_refusals_put(&r, alice, "alice", 1000, r.epoch);
	CHECK(cr_refusals_has(&r, alice, 100));
	CHECK(cr_refusals_has(&r, alice, 999));
	CHECK(!cr_refusals_has(&r, alice2, 100)); /* another password is asked */
	CHECK(!cr_refusals_has(&r, alice, 1000));
	CHECK(!cr_refusals_has(&r, alice, 100)); /* expired entries are freed when met */
	CHECK(r.used == 0);

	begin("refusals: a user's change drops only that user's");
	cr_refusals_put(&r, alice, "alice", 5000, r.epoch);
	cr_refusals_put(&r, alice2, "alice", 5000, r.epoch);
	cr_refusals_put(&r, bob, "bob", 5000, r.epoch);
	CHECK(r.used == 3);
	cr_refusals_drop_user(&r, "alice");
	CHECK(!cr_refusals_has(&r, alice, 100) && !cr_refusals_has(&r, alice2, 100));
	CHECK(cr_refusals_has(&r, bob, 100));
	CHECK(r.used == 1);
	cr_refusals_drop_all(&r);
	CHECK(!cr_refusals_has(&r, bob, 100) && r.used == 0);

	begin("refusals: a check begun before a drop is not remembered");
	epoch = r.epoch;
	cr_refusals_drop_user(&r, "someone");
	cr_refusals_put(&r, alice, "alice", 5000, epoch);
	CHECK(!cr_refusals_has(&r, alice, 100));
	cr_refusals_put(&r, alice, "alice", 5000, r.epoch);
	CHECK(cr_refusals_has(&r, alice, 100));

	begin("refusals: a bounded table, newer refusals take the slot over");
	bool digests_ok = true;
	for(int i = 0; i < 3 * CR_REFUSALS_SLOTS; i++){
		static const unsigned char key[CR_DIGEST_KEY_LEN] = {7};
		char password[32];
		unsigned char d[CR_DIGEST_LEN];
		snprintf(password, sizeof(password), "guess-%d", i);
		digests_ok = digests_ok && cr_connect_digest(key, "mallory", password, "c", d) == 0;
		cr_refusals_put(&r, d, "mallory", 5000, r.epoch);
	}
	CHECK(digests_ok);
	CHECK(r.used <= CR_REFUSALS_SLOTS);
	cr_refusals_drop_user(&r, "mallory");
	CHECK(r.used <= 1); /* at most alice's, if no guess took her slot */
	cr_refusals_free(&r);
}

static void test_feed_drops_refusals(void)
{
	struct cr_plugin p;
	struct cr_feed_answer a;
	unsigned char alice[CR_DIGEST_LEN], bob[CR_DIGEST_LEN];

	begin("feed answers drop the refusals of the users they name");
	memset(&p, 0, sizeof(p));
	CHECK(cr_cache_init(&p.cache, 100, HASH_KEY) == 0);
	CHECK(cr_refusals_init(&p.refusals, HASH_KEY) == 0);
	digest_of("alice", "wrong", "c1", alice);
	digest_of("bob", "wrong", "c1", bob);
	cr_refusals_put(&p.refusals, alice, "alice", 5000, p.refusals.epoch);
	cr_refusals_put(&p.refusals, bob, "bob", 5000, p.refusals.epoch);
	CHECK(parse("{\"position\":\"3-0\",\"changes\":[{\"user\":\"alice\",\"kick\":true}]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(!cr_refusals_has(&p.refusals, alice, 100));
	CHECK(cr_refusals_has(&p.refusals, bob, 100));
	CHECK(parse("{\"position\":\"1-0\",\"reset\":true,\"changes\":[]}", &a) == 0);
	cr_apply_feed_answer(&p, &a);
	cr_feed_answer_free(&a);
	CHECK(!cr_refusals_has(&p.refusals, bob, 100));
	cr_refusals_free(&p.refusals);
	cr_cache_free(&p.cache);
}

static bool unknown_user(const char *body)
{
	return cr_answer_unknown_user(body, strlen(body));
}

static void test_answer_unknown_user(void)
{
	begin("answers: unknown_user only when the body says so");
	CHECK(unknown_user("{\"ok\":false,\"error\":\"x\",\"unknown_user\":true}"));
	CHECK(!unknown_user("{\"ok\":false,\"error\":\"wrong password\"}"));
	CHECK(!unknown_user("{\"unknown_user\":1}"));
	CHECK(!unknown_user("{\"unknown_user\":\"true\"}"));
	CHECK(!unknown_user("[true]"));
	CHECK(!unknown_user(""));
	CHECK(!cr_answer_unknown_user(NULL, 0));
}

static void test_options_unknown_users(void)
{
	struct cr_options o;

	begin("options: unknown_users and refusal_cache_seconds");
	CHECK(opts(&o, 1, "url", "http://h") == 0);
	CHECK(!o.defer_unknown_users && o.refusal_cache_seconds == 5); /* the defaults */
	cr_options_free(&o);
	CHECK(opts(&o, 3, "url", "http://h", "unknown_users", "defer", "refusal_cache_seconds", "0") == 0);
	CHECK(o.defer_unknown_users && o.refusal_cache_seconds == 0);
	cr_options_free(&o);
	CHECK(opts(&o, 2, "url", "http://h", "unknown_users", "refuse") == 0);
	CHECK(!o.defer_unknown_users);
	cr_options_free(&o);
	CHECK(opts(&o, 2, "url", "http://h", "unknown_users", "Defer") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "unknown_users", "") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "unknown_users", NULL) == -1);
	CHECK(opts(&o, 2, "url", "http://h", "refusal_cache_seconds", "61") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "refusal_cache_seconds", "-1") == -1);
}

/* -- delayed checks (2.1) -------------------------------------------------------- */
/* Nothing listens on port 1 of the loopback: each check fails at once, a fault. */
#define REFUSED_URL "http://127.0.0.1:1/mqtt/user"

static int start(struct cr_plugin *p, const char *client_id, const char *user)
{
	unsigned char digest[CR_DIGEST_LEN] = {0};

	return cr_delayed_start(p, REFUSED_URL, strdup("{}"), client_id, user, digest, "");
}

static void run_until_done(struct cr_plugin *p)
{
	for(int i = 0; i < 100000 && p->delayed.in_flight > 0; i++){
		cr_delayed_poll(p);
	}
}

static void test_delayed(void)
{
	struct cr_plugin p;

	memset(&p, 0, sizeof(p));
	p.opt.timeout_ms = 1000;
	CHECK(cr_cache_init(&p.cache, 100, HASH_KEY) == 0);

	begin("delayed: at most delayed_max in flight");
	CHECK(cr_delayed_init(&p.delayed, complete_basic_auth, apply_on_all_clients, 2) == 0);
	CHECK(start(&p, "c1", "u1") == 0 && start(&p, "c2", "u2") == 0);
	CHECK(start(&p, "c3", "u3") == -1); /* the caller answers it at once, as a fault */
	CHECK(p.delayed.in_flight == 2);

	begin("delayed: a new CONNECT with a waiting client ID drops that check, unanswered");
	cr_delayed_forget(&p.delayed, "c1");
	CHECK(p.delayed.in_flight == 1);
	complete_count = 0;
	kick_count = 0;
	run_until_done(&p);
	CHECK(p.delayed.in_flight == 0);
	/* c2's fault: closed by a kick of its username (no client of u2 connected), never completed */
	CHECK(complete_count == 0);
	CHECK(kick_count == 1 && strcmp(kicked[0], "u2") == 0);
	cr_delayed_cleanup(&p.delayed);

	begin("delayed: a fault is never completed as \"not authorised\" while nothing else holds the username");
	CHECK(cr_delayed_init(&p.delayed, complete_basic_auth, apply_on_all_clients, 8) == 0);
	connected_count = 1;
	connected[0].username = "busy";
	CHECK(start(&p, "a1", "alone") == 0 && start(&p, "a2", "alone") == 0 && start(&p, "b1", "busy") == 0);
	complete_count = 0;
	kick_count = 0;
	run_until_done(&p);
	/* one kick closed both of "alone"'s CONNECTs: neither is completed after it */
	CHECK(kick_count == 1 && strcmp(kicked[0], "alone") == 0);
	/* "busy" has a connected client that a kick would close too: 2.1.2's only other answer */
	CHECK(complete_count == 1 && strcmp(completed[0], "b1") == 0 && completed_result[0] == MOSQ_ERR_AUTH);
	cr_delayed_cleanup(&p.delayed);

	begin("delayed: without mosquitto_apply_on_all_clients, a fault is completed");
	CHECK(cr_delayed_init(&p.delayed, complete_basic_auth, NULL, 8) == 0);
	CHECK(start(&p, "d1", "someone") == 0);
	complete_count = 0;
	kick_count = 0;
	run_until_done(&p);
	CHECK(kick_count == 0 && complete_count == 1 && completed_result[0] == MOSQ_ERR_AUTH);
	cr_delayed_cleanup(&p.delayed);
	connected_count = 0;
	cr_cache_free(&p.cache);
}

/* -- the warm file (warm.c) ------------------------------------------------ */
static const unsigned char WARM_KEY[16] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
#define FP64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* A table of two grants (one with a certificate), encoded at monotonic 1000,
 * wall 5,000,000; *len bytes in *out. */
static void warm_two(unsigned char **out, size_t *len)
{
	struct cr_warm w;

	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_record(&w, "alice", "pw-a", "dev-a", "", 1000 + 60000) == 0);
	CHECK(cr_warm_record(&w, "bob", "pw-b", "dev-b", FP64, 1000 + 30000) == 0);
	CHECK(w.count == 2 && w.dirty);
	CHECK(cr_warm_encode(&w, "17-0~abc", 1000, 5000000, out, len) == 0);
	cr_warm_free(&w);
}

static bool holds(const unsigned char *data, size_t len, const char *s)
{
	size_t n = strlen(s);

	for(size_t i = 0; i + n <= len; i++){
		if(memcmp(data + i, s, n) == 0){
			return true;
		}
	}
	return false;
}

static void test_warm_round_trip(void)
{
	struct cr_warm w;
	unsigned char *data;
	size_t len;
	char position[CR_POSITION_MAX + 1];
	char err[160];
	int64_t expires = 0;

	begin("warm file: a round trip keeps grants, position and remaining lifetimes");
	warm_two(&data, &len);
	/* the file holds no password and no unsalted hash of one */
	CHECK(!holds(data, len, "pw-a") && !holds(data, len, "pw-b"));
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	/* 10 s at rest: the monotonic clock of the new process starts anywhere */
	CHECK(cr_warm_decode(&w, data, len, 7, 5010000, 300000, position, err, sizeof(err)) == 0);
	CHECK(strcmp(position, "17-0~abc") == 0);
	CHECK(w.count == 2 && w.loaded == 2);
	/* nothing answers before the feed was replayed */
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-a", "", 8, &expires) == 0);
	w.ready = true;
	CHECK(cr_warm_match(&w, "alice", "wrong", "dev-a", "", 8, &expires) == 0);
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-x", "", 8, &expires) == 0);
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-a", FP64, 8, &expires) == 0);
	CHECK(cr_warm_match(&w, "bob", "pw-b", "dev-b", "", 8, &expires) == 0); /* the grant is per certificate */
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-a", "", 8, &expires) == 1);
	CHECK(expires == 7 + 50000); /* 60 s less the 10 s at rest */
	CHECK(w.hits == 1);
	/* used: the cache has it now; the entry stays for the next file, answering no more */
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-a", "", 9, &expires) == 0);
	CHECK(w.count == 2);
	CHECK(cr_warm_match(&w, "bob", "pw-b", "dev-b", FP64, 8, &expires) == 1 && expires == 7 + 20000);
	cr_warm_free(&w);
	free(data);
}

static void test_warm_lifetimes(void)
{
	struct cr_warm w;
	unsigned char *data;
	size_t len;
	char position[CR_POSITION_MAX + 1];
	char err[160];
	int64_t expires = 0;

	begin("warm file: the time at rest counts, never longer than cache_seconds");
	warm_two(&data, &len);
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	/* 40 s at rest: bob's 30 s ran out, alice's has 20 s */
	CHECK(cr_warm_decode(&w, data, len, 0, 5040000, 300000, position, err, sizeof(err)) == 0);
	CHECK(w.count == 1);
	w.ready = true;
	CHECK(cr_warm_match(&w, "bob", "pw-b", "dev-b", FP64, 1, &expires) == 0);
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-a", "", 1, &expires) == 1 && expires == 20000);
	cr_warm_free(&w);

	/* a shorter cache_seconds now: capped at it */
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_decode(&w, data, len, 0, 5000000, 5000, position, err, sizeof(err)) == 0);
	w.ready = true;
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-a", "", 1, &expires) == 1 && expires == 5000);
	/* an entry found expired when checked answers nothing and goes */
	CHECK(cr_warm_match(&w, "bob", "pw-b", "dev-b", FP64, 5000, &expires) == 0);
	CHECK(w.count == 1);
	cr_warm_free(&w);

	/* written "in the future" (the clock went back): nothing is trusted */
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_decode(&w, data, len, 0, 4999999, 300000, position, err, sizeof(err)) == -1);
	CHECK(w.count == 0 && position[0] == '\0');
	cr_warm_free(&w);

	/* entries that expired before the encode are not written */
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_record(&w, "carol", "pw", "dev-c", "", 500) == 0);
	free(data);
	CHECK(cr_warm_encode(&w, "1-0", 500, 5000000, &data, &len) == 0);
	cr_warm_free(&w);
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_decode(&w, data, len, 0, 5000000, 300000, position, err, sizeof(err)) == 0 && w.count == 0);
	cr_warm_free(&w);
	free(data);
}

/* Bytes with a valid trailer again after a change in the middle, so that the
 * check past the checksum is what refuses them. */
static void warm_reseal(unsigned char *data, size_t len)
{
	SHA256(data, len - 32, data + len - 32);
}

static int warm_decode_copy(const unsigned char *data, size_t len, uint32_t iterations, char *err, size_t errlen)
{
	struct cr_warm w;
	char position[CR_POSITION_MAX + 1];
	int rc;

	CHECK(cr_warm_init(&w, WARM_KEY, iterations, 100) == 0);
	rc = cr_warm_decode(&w, data, len, 0, 5000000, 300000, position, err, errlen);
	if(rc != 0){
		CHECK(w.count == 0 && position[0] == '\0'); /* a refused file leaves nothing behind */
	}
	cr_warm_free(&w);
	return rc;
}

static void test_warm_bad_bytes(void)
{
	unsigned char *data, *copy;
	size_t len;
	char err[160];
	int refused_all = 1;

	begin("warm file: corrupt, truncated, foreign or weaker files are refused whole");
	warm_two(&data, &len);
	copy = malloc(len);
	CHECK(warm_decode_copy(data, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) == 0);
	/* every truncation */
	for(size_t cut = 0; cut < len; cut++){
		memcpy(copy, data, cut);
		if(warm_decode_copy(copy, cut, CR_WARM_ITERATIONS_20, err, sizeof(err)) != -1){
			refused_all = 0;
		}
	}
	CHECK(refused_all);
	/* every single flipped bit */
	refused_all = 1;
	for(size_t i = 0; i < len * 8; i++){
		memcpy(copy, data, len);
		copy[i / 8] ^= (unsigned char)(1u << (i % 8));
		if(warm_decode_copy(copy, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) != -1){
			refused_all = 0;
		}
	}
	CHECK(refused_all);
	/* another format version, resealed */
	memcpy(copy, data, len);
	copy[8] = 2;
	warm_reseal(copy, len);
	CHECK(warm_decode_copy(copy, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) == -1 && strstr(err, "version"));
	/* more entries than the header says there are bytes for, resealed */
	memcpy(copy, data, len);
	copy[12] = 3;
	warm_reseal(copy, len);
	CHECK(warm_decode_copy(copy, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) == -1 && strstr(err, "truncated"));
	/* fewer: bytes left over */
	copy[12] = 1;
	warm_reseal(copy, len);
	CHECK(warm_decode_copy(copy, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) == -1 && strstr(err, "after"));
	/* a user name with a huge length, resealed */
	memcpy(copy, data, len);
	copy[26 + 8 + 12] = 0xff; /* the header, the position, then the first entry's user length */
	copy[26 + 8 + 13] = 0xff;
	warm_reseal(copy, len);
	CHECK(warm_decode_copy(copy, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) == -1);
	/* a position that could not go out in a header */
	memcpy(copy, data, len);
	copy[26] = '\n'; /* the position's first byte */
	warm_reseal(copy, len);
	CHECK(warm_decode_copy(copy, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) == -1 && strstr(err, "position"));
	/* 101 iterations are too few where the broker's dynamic security uses 1000 */
	CHECK(warm_decode_copy(data, len, CR_WARM_ITERATIONS_21, err, sizeof(err)) == -1 && strstr(err, "iterations"));
	/* more entries than the table may hold */
	memcpy(copy, data, len);
	copy[12] = 0xff;
	copy[13] = 0xff;
	warm_reseal(copy, len);
	CHECK(warm_decode_copy(copy, len, CR_WARM_ITERATIONS_20, err, sizeof(err)) == -1 && strstr(err, "more than"));
	CHECK(warm_decode_copy((const unsigned char *)"", 0, CR_WARM_ITERATIONS_20, err, sizeof(err)) == -1);
	free(copy);
	free(data);
}

static void test_warm_file(void)
{
	struct cr_warm w;
	char dir[] = "/tmp/cr-warm-XXXXXX";
	char path[128], link_path[160], position[CR_POSITION_MAX + 1], err[160];
	struct stat st;
	int64_t expires;

	begin("warm file: written atomically with mode 0600; loaded only when the broker's user's alone");
	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/warm", dir);
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_load(&w, path, 0, 5000000, 300000, position, err, sizeof(err)) == 0); /* none there */
	CHECK(cr_warm_record(&w, "alice", "pw-a", "dev-a", "", 60000) == 0);
	umask(022);
	CHECK(cr_warm_save(&w, path, "9-0", 0, 5000000, err, sizeof(err)) == 0);
	CHECK(!w.dirty && w.saves == 1);
	cr_warm_free(&w);
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_uid == geteuid());
	snprintf(link_path, sizeof(link_path), "%s.tmp", path);
	CHECK(access(link_path, F_OK) != 0); /* no temporary file left */

	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_load(&w, path, 0, 5001000, 300000, position, err, sizeof(err)) == 1);
	CHECK(w.count == 1 && strcmp(position, "9-0") == 0);
	w.ready = true;
	CHECK(cr_warm_match(&w, "alice", "pw-a", "dev-a", "", 1, &expires) == 1 && expires == 59000);
	cr_warm_free(&w);

	/* group- or world-readable: refused */
	CHECK(chmod(path, 0644) == 0);
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_load(&w, path, 0, 5001000, 300000, position, err, sizeof(err)) == -1 && strstr(err, "0644"));
	CHECK(w.count == 0);
	CHECK(chmod(path, 0640) == 0);
	CHECK(cr_warm_load(&w, path, 0, 5001000, 300000, position, err, sizeof(err)) == -1 && w.count == 0);
	CHECK(chmod(path, 0600) == 0);
	/* a symbolic link to it, and a directory: refused */
	snprintf(link_path, sizeof(link_path), "%s/link", dir);
	CHECK(symlink(path, link_path) == 0);
	CHECK(cr_warm_load(&w, link_path, 0, 5001000, 300000, position, err, sizeof(err)) == -1 && w.count == 0);
	CHECK(cr_warm_load(&w, dir, 0, 5001000, 300000, position, err, sizeof(err)) == -1 && w.count == 0);
	/* a file cut short on disk */
	CHECK(truncate(path, 40) == 0);
	CHECK(cr_warm_load(&w, path, 0, 5001000, 300000, position, err, sizeof(err)) == -1 && w.count == 0);
	cr_warm_free(&w);
	unlink(link_path);
	unlink(path);
	rmdir(dir);
}

static void test_warm_feed(void)
{
	struct cr_warm w;
	struct cr_feed_answer a;
	int64_t expires;

	begin("warm entries follow the change feed like the cache, a reset drops them all");
	CHECK(cr_warm_init(&w, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
	CHECK(cr_warm_record(&w, "alice", "pw", "a1", "", 1000) == 0);
	CHECK(cr_warm_record(&w, "alice", "pw", "a2", "", 1000) == 0);
	CHECK(cr_warm_record(&w, "bob", "pw", "b1", "", 1000) == 0);
	CHECK(cr_warm_record(&w, "carol", "pw", "c1", "", 1000) == 0);
	CHECK(parse("{\"position\":\"3-0\",\"changes\":[{\"user\":\"alice\",\"kick\":true}]}", &a) == 0);
	CHECK(cr_warm_apply(&w, &a));
	cr_feed_answer_free(&a);
	CHECK(w.count == 2);
	CHECK(parse("{\"position\":\"4-0\",\"changes\":[{\"user\":\"dave\",\"kick\":false,\"clientId\":\"c1\"}]}", &a) == 0);
	CHECK(cr_warm_apply(&w, &a)); /* a client ID changed hands: every CONNECT grant goes */
	cr_feed_answer_free(&a);
	CHECK(w.count == 0);
	CHECK(cr_warm_record(&w, "bob", "pw", "b1", "", 1000) == 0);
	CHECK(parse("{\"position\":\"5-0\",\"reset\":true,\"changes\":[]}", &a) == 0);
	CHECK(!cr_warm_apply(&w, &a));
	cr_feed_answer_free(&a);
	CHECK(w.count == 0);
	/* too long to keep; a full table keeps no more */
	CHECK(cr_warm_record(&w, "", "pw", "b1", "", 1000) == -1);
	w.max_entries = 1;
	CHECK(cr_warm_record(&w, "bob", "pw", "b1", "", 1000) == 0);
	CHECK(cr_warm_record(&w, "bob", "pw2", "b1", "", 1000) == 0); /* replaces its own */
	CHECK(cr_warm_record(&w, "eve", "pw", "e1", "", 1000) == -1);
	w.ready = true;
	CHECK(cr_warm_match(&w, "bob", "pw2", "b1", "", 0, &expires) == 0); /* recorded now, not loaded: the cache answers */
	cr_warm_free(&w);

	begin("the plugin's feed drops warm entries with the cache's");
	{
		static struct cr_plugin p;
		memset(&p, 0, sizeof(p));
		CHECK(cr_cache_init(&p.cache, 100, HASH_KEY) == 0);
		CHECK(cr_warm_init(&p.warm, WARM_KEY, CR_WARM_ITERATIONS_20, 100) == 0);
		CHECK(cr_warm_record(&p.warm, "alice", "pw", "a1", "", 1000) == 0);
		CHECK(cr_warm_record(&p.warm, "bob", "pw", "b1", "", 1000) == 0);
		CHECK(parse("{\"position\":\"3-0\",\"changes\":[{\"user\":\"alice\",\"kick\":false}]}", &a) == 0);
		cr_apply_feed_answer(&p, &a);
		cr_feed_answer_free(&a);
		CHECK(p.warm.count == 1);
		CHECK(parse("{\"position\":\"4-0\",\"reset\":true}", &a) == 0);
		cr_apply_feed_answer(&p, &a);
		cr_feed_answer_free(&a);
		CHECK(p.warm.count == 0);
		cr_warm_free(&p.warm);
		cr_cache_free(&p.cache);
		cr_http_cleanup(&p.http);
	}
}

int main(void)
{
	test_cache_hit_miss_expiry();
	test_cache_eviction_at_bound();
	test_cache_buckets_follow_entries();
	test_cache_invalidation();
	test_cache_bytes_bound();
	test_cache_user_share();
	test_cache_users_by_digest();
	test_cache_bytes_per_entry();
	test_cache_key_beyond_mqtt();
	test_siphash128();
	test_digest();
	test_siphash_parts();
	test_feed_parse();
	test_feed_apply();
	test_position_header();
	test_tick_names_the_next();
	test_next_tick();
	test_answer_grants();
	test_options();
	test_certificate_identity();
	test_connect_body();
	test_connect_grant_is_per_certificate();
	test_refusals();
	test_feed_drops_refusals();
	test_answer_unknown_user();
	test_options_unknown_users();
	test_delayed();
	test_warm_round_trip();
	test_warm_lifetimes();
	test_warm_bad_bytes();
	test_warm_file();
	test_warm_feed();
	finish_case();
	printf("%d passed, %d failed (%d checks)\n", passed, failed, checks);
	return failed ? 1 : 0;
}
