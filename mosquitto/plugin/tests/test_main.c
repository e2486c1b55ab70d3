/* C unit tests of the plugin's logic that the broker tier cannot reach:
 * the cache, the feed-answer parser and its application, option parsing and
 * the CONNECT digest. A small runner of its own; prints "N passed, N failed". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "siphash.h"
#include "state.h"

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

	/* what the cache keeps of a CONNECT: the user name and the digest only */
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
	struct cr_entry *e = c.lru_head;
	size_t size = sizeof(*e) + e->part_len[0] + e->part_len[1];
	CHECK(!contains(e, size, password));
	CHECK(!contains(e, size, "horse"));
	CHECK(contains(e->user->name, e->user->len, "alice"));
	CHECK(memcmp(e->data, a, sizeof(a)) == 0);
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
	CHECK(o.cache_size == 100000 && o.feed_interval_ms == 500 && o.stats_interval == 10);
	CHECK(o.fault_backoff_ms == 1000);
	cr_options_free(&o);

	begin("options: values");
	CHECK(opts(&o, 7, "url", "https://broker.example:8081//", "timeout_ms", "2000", "cache_seconds", "0",
			"deny_cache_seconds", "5", "cache_size", "10", "feed_interval_ms", "100", "stats_interval", "0") == 0);
	CHECK(strcmp(o.url, "https://broker.example:8081") == 0);
	CHECK(o.timeout_ms == 2000 && o.cache_seconds == 0 && o.deny_cache_seconds == 5);
	CHECK(o.cache_size == 10 && o.feed_interval_ms == 100 && o.stats_interval == 0);
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
	CHECK(opts(&o, 2, "url", "http://h", "cache_size", "0") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "cache_size", "99999999999999999999999") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "feed_interval_ms", "10") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "feed_interval_ms", "1501") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "stats_interval", "-5") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "fault_backoff_ms", "10001") == -1);
	CHECK(opts(&o, 2, "url", "http://h", "fault_backoff_ms", "0") == 0);
	CHECK(o.fault_backoff_ms == 0);
	cr_options_free(&o);
	CHECK(opts(&o, 2, "url", "http://h", "cache_secs", "10") == -1);   /* a typo is not ignored */
	CHECK(opts(&o, 2, "url", "http://h", "url", "nonsense") == -1);
}

int main(void)
{
	test_cache_hit_miss_expiry();
	test_cache_eviction_at_bound();
	test_cache_invalidation();
	test_digest();
	test_siphash_parts();
	test_feed_parse();
	test_feed_apply();
	test_position_header();
	test_tick_names_the_next();
	test_answer_grants();
	test_options();
	finish_case();
	printf("%d passed, %d failed (%d checks)\n", passed, failed, checks);
	return failed ? 1 : 0;
}
