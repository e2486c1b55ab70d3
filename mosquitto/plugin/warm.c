/* The warm file: format, the table of kept grants, atomic writes (warm.h).
 *
 * Format, integers little-endian:
 *   "CRWARM\r\n"  u32 version  u32 entries  i64 written (wall ms)
 *   u16 position length, position
 *   per entry: i64 expires (wall ms)  u32 iterations  u16 user length
 *              u16 client ID length  u8 fingerprint length (0 or 64)
 *              salt[16]  PBKDF2-HMAC-SHA512[64]  user  client ID  fingerprint
 *   SHA-256 of everything before it (a torn or corrupt file is refused whole) */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <mosquitto.h>

#include "digest.h"
#include "siphash.h"
#include "state.h"

static const unsigned char MAGIC[8] = {'C', 'R', 'W', 'A', 'R', 'M', '\r', '\n'};
#define HEADER_LEN (8 + 4 + 4 + 8 + 2)
#define ENTRY_FIXED_LEN (8 + 4 + 2 + 2 + 1 + CR_WARM_SALT_LEN + CR_WARM_HASH_LEN)
#define TRAILER_LEN SHA256_DIGEST_LENGTH
#define FINGERPRINT_LEN 64

size_t cr_warm_file_max(size_t max_entries)
{
	return HEADER_LEN + CR_POSITION_MAX + max_entries * (ENTRY_FIXED_LEN + 2 * CR_WARM_NAME_MAX + FINGERPRINT_LEN)
		+ TRAILER_LEN;
}

int cr_warm_init(struct cr_warm *w, const unsigned char key[16], uint32_t iterations, size_t max_entries)
{
	size_t nbuckets = 1024;

	memset(w, 0, sizeof(*w));
	if(max_entries > CR_WARM_MAX_ENTRIES){
		max_entries = CR_WARM_MAX_ENTRIES;
	}
	while(nbuckets < max_entries){
		nbuckets <<= 1;
	}
	w->buckets = calloc(nbuckets, sizeof(*w->buckets));
	if(w->buckets == NULL){
		return -1;
	}
	w->mask = nbuckets - 1;
	w->max_entries = max_entries;
	w->iterations = iterations;
	memcpy(w->key, key, sizeof(w->key));
	return 0;
}

static void entry_free(struct cr_warm_entry *e)
{
	free(e->user);
	free(e->client_id);
	OPENSSL_cleanse(e, sizeof(*e));
	free(e);
}

void cr_warm_drop_all(struct cr_warm *w)
{
	if(w->buckets == NULL){
		return;
	}
	for(size_t i = 0; i <= w->mask; i++){
		struct cr_warm_entry *e = w->buckets[i], *next;
		for(; e != NULL; e = next){
			next = e->next;
			entry_free(e);
		}
		w->buckets[i] = NULL;
	}
	if(w->count > 0){
		w->dirty = true;
	}
	w->count = 0;
}

void cr_warm_free(struct cr_warm *w)
{
	cr_warm_drop_all(w);
	free(w->buckets);
	OPENSSL_cleanse(w, sizeof(*w));
}

void cr_warm_drop_user(struct cr_warm *w, const char *user)
{
	if(w->count == 0){
		return;
	}
	for(size_t i = 0; i <= w->mask; i++){
		struct cr_warm_entry **pp = &w->buckets[i];
		while(*pp != NULL){
			struct cr_warm_entry *e = *pp;
			if(strcmp(e->user, user) == 0){
				*pp = e->next;
				entry_free(e);
				w->count--;
				w->dirty = true;
			}else{
				pp = &e->next;
			}
		}
	}
}

/* With the NULs: no two triples feed the same bytes. */
static uint64_t key_hash(const struct cr_warm *w, const char *user, const char *client_id, const char *fingerprint)
{
	struct cr_sip s;

	cr_sip_init(&s, w->key);
	cr_sip_update(&s, user, strlen(user) + 1);
	cr_sip_update(&s, client_id, strlen(client_id) + 1);
	cr_sip_update(&s, fingerprint, strlen(fingerprint));
	return cr_sip_final(&s);
}

static struct cr_warm_entry **find(struct cr_warm *w, uint64_t hash, const char *user, const char *client_id,
		const char *fingerprint)
{
	struct cr_warm_entry **pp;

	for(pp = &w->buckets[hash & w->mask]; *pp != NULL; pp = &(*pp)->next){
		const struct cr_warm_entry *e = *pp;
		if(e->hash == hash && strcmp(e->user, user) == 0 && strcmp(e->client_id, client_id) == 0
				&& strcmp(e->fingerprint, fingerprint) == 0){
			return pp;
		}
	}
	return NULL;
}

/* PBKDF2 over user \0 password \0 client ID \0 fingerprint: a hash of one
 * entry says nothing about another's, nor fits it. */
static int derive(const char *user, const char *password, const char *client_id, const char *fingerprint,
		const unsigned char salt[CR_WARM_SALT_LEN], uint32_t iterations, unsigned char out[CR_WARM_HASH_LEN])
{
	size_t ul = strlen(user), pl = strlen(password), cl = strlen(client_id), fl = strlen(fingerprint);
	size_t total = ul + 1 + pl + 1 + cl + 1 + fl;
	char *buf = malloc(total);
	int ok;

	if(buf == NULL){
		return -1;
	}
	memcpy(buf, user, ul + 1);
	memcpy(buf + ul + 1, password, pl + 1);
	memcpy(buf + ul + 1 + pl + 1, client_id, cl + 1);
	memcpy(buf + ul + 1 + pl + 1 + cl + 1, fingerprint, fl);
	ok = PKCS5_PBKDF2_HMAC(buf, (int)total, salt, CR_WARM_SALT_LEN, (int)iterations, EVP_sha512(),
			CR_WARM_HASH_LEN, out);
	OPENSSL_cleanse(buf, total);
	free(buf);
	return ok == 1 ? 0 : -1;
}

static bool name_keepable(const char *s)
{
	size_t len = strlen(s);

	return len > 0 && len <= CR_WARM_NAME_MAX;
}

/* A new entry linked into the table (the caller fills salt and hash). */
static struct cr_warm_entry *insert(struct cr_warm *w, const char *user, const char *client_id, const char *fingerprint,
		int64_t expires_ms, uint32_t iterations, bool loaded)
{
	uint64_t hash = key_hash(w, user, client_id, fingerprint);
	struct cr_warm_entry **old = find(w, hash, user, client_id, fingerprint);
	struct cr_warm_entry *e;

	if(old != NULL){
		e = *old;
		*old = e->next;
		entry_free(e);
		w->count--;
	}
	if(w->count >= w->max_entries){
		return NULL;
	}
	e = calloc(1, sizeof(*e));
	if(e == NULL){
		return NULL;
	}
	e->user = strdup(user);
	e->client_id = strdup(client_id);
	if(e->user == NULL || e->client_id == NULL){
		entry_free(e);
		return NULL;
	}
	snprintf(e->fingerprint, sizeof(e->fingerprint), "%s", fingerprint);
	e->hash = hash;
	e->expires_ms = expires_ms;
	e->iterations = iterations;
	e->loaded = loaded;
	e->next = w->buckets[hash & w->mask];
	w->buckets[hash & w->mask] = e;
	w->count++;
	w->dirty = true;
	return e;
}

static void unlink_entry(struct cr_warm *w, struct cr_warm_entry *victim)
{
	struct cr_warm_entry **pp;

	for(pp = &w->buckets[victim->hash & w->mask]; *pp != NULL; pp = &(*pp)->next){
		if(*pp == victim){
			*pp = victim->next;
			entry_free(victim);
			w->count--;
			w->dirty = true;
			return;
		}
	}
}

int cr_warm_record(struct cr_warm *w, const char *user, const char *password, const char *client_id,
		const char *fingerprint, int64_t expires_ms)
{
	unsigned char salt[CR_WARM_SALT_LEN];
	unsigned char hash[CR_WARM_HASH_LEN];
	struct cr_warm_entry *e;

	if(w->buckets == NULL || !name_keepable(user) || !name_keepable(client_id) || strlen(fingerprint) > 64){
		return -1;
	}
	if(cr_random_bytes(salt, sizeof(salt)) != 0
			|| derive(user, password, client_id, fingerprint, salt, w->iterations, hash) != 0){
		return -1;
	}
	e = insert(w, user, client_id, fingerprint, expires_ms, w->iterations, false);
	if(e == NULL){
		OPENSSL_cleanse(hash, sizeof(hash));
		return -1;
	}
	memcpy(e->salt, salt, sizeof(salt));
	memcpy(e->pbkdf2, hash, sizeof(hash));
	OPENSSL_cleanse(hash, sizeof(hash));
	return 0;
}

int cr_warm_match(struct cr_warm *w, const char *user, const char *password, const char *client_id,
		const char *fingerprint, int64_t now_ms, int64_t *expires_ms)
{
	struct cr_warm_entry **pp, *e;
	unsigned char hash[CR_WARM_HASH_LEN];
	int same;

	if(!w->ready || w->count == 0){
		return 0;
	}
	pp = find(w, key_hash(w, user, client_id, fingerprint), user, client_id, fingerprint);
	if(pp == NULL || !(*pp)->loaded){
		return 0;
	}
	e = *pp;
	if(e->expires_ms <= now_ms){
		unlink_entry(w, e);
		return 0;
	}
	if(derive(user, password, client_id, fingerprint, e->salt, e->iterations, hash) != 0){
		return 0;
	}
	same = CRYPTO_memcmp(hash, e->pbkdf2, sizeof(hash)) == 0;
	OPENSSL_cleanse(hash, sizeof(hash));
	if(!same){
		return 0; /* a wrong password, or another: the service decides */
	}
	e->loaded = false; /* a grant in the cache now; kept for the next file */
	w->hits++;
	*expires_ms = e->expires_ms;
	return 1;
}

bool cr_warm_apply(struct cr_warm *w, const struct cr_feed_answer *answer)
{
	if(answer->reset){
		cr_warm_drop_all(w);
		return false;
	}
	for(size_t i = 0; i < answer->count; i++){
		const struct cr_change *c = &answer->changes[i];
		/* a client ID given to a user ends every CONNECT grant, as in the cache */
		if(c->type == CR_CHANGE_ALL || (c->type == CR_CHANGE_USER && c->client_id != NULL)){
			cr_warm_drop_all(w);
		}else if(c->type == CR_CHANGE_USER){
			cr_warm_drop_user(w, c->user);
		}
	}
	return true;
}

/* -- the bytes ------------------------------------------------------------ */

static void put_le(unsigned char *p, uint64_t v, size_t n)
{
	for(size_t i = 0; i < n; i++){
		p[i] = (unsigned char)(v >> (8 * i));
	}
}

static uint64_t get_le(const unsigned char *p, size_t n)
{
	uint64_t v = 0;

	for(size_t i = 0; i < n; i++){
		v |= (uint64_t)p[i] << (8 * i);
	}
	return v;
}

int cr_warm_encode(const struct cr_warm *w, const char *position, int64_t now_ms, int64_t now_wall_ms,
		unsigned char **out, size_t *len)
{
	size_t plen = strlen(position);
	size_t cap = HEADER_LEN + plen + TRAILER_LEN, pos, n = 0;
	unsigned char *buf;

	for(size_t i = 0; w->buckets != NULL && i <= w->mask; i++){
		for(const struct cr_warm_entry *e = w->buckets[i]; e != NULL; e = e->next){
			cap += ENTRY_FIXED_LEN + strlen(e->user) + strlen(e->client_id) + strlen(e->fingerprint);
		}
	}
	buf = malloc(cap);
	if(buf == NULL){
		return -1;
	}
	memcpy(buf, MAGIC, sizeof(MAGIC));
	put_le(buf + 8, CR_WARM_VERSION, 4);
	put_le(buf + 16, (uint64_t)now_wall_ms, 8);
	put_le(buf + 24, plen, 2);
	memcpy(buf + HEADER_LEN, position, plen);
	pos = HEADER_LEN + plen;
	for(size_t i = 0; w->buckets != NULL && i <= w->mask; i++){
		for(const struct cr_warm_entry *e = w->buckets[i]; e != NULL; e = e->next){
			size_t ul = strlen(e->user), cl = strlen(e->client_id), fl = strlen(e->fingerprint);
			if(e->expires_ms <= now_ms){
				continue;
			}
			put_le(buf + pos, (uint64_t)(now_wall_ms + (e->expires_ms - now_ms)), 8);
			put_le(buf + pos + 8, e->iterations, 4);
			put_le(buf + pos + 12, ul, 2);
			put_le(buf + pos + 14, cl, 2);
			buf[pos + 16] = (unsigned char)fl;
			memcpy(buf + pos + 17, e->salt, CR_WARM_SALT_LEN);
			memcpy(buf + pos + 17 + CR_WARM_SALT_LEN, e->pbkdf2, CR_WARM_HASH_LEN);
			pos += ENTRY_FIXED_LEN;
			memcpy(buf + pos, e->user, ul);
			memcpy(buf + pos + ul, e->client_id, cl);
			memcpy(buf + pos + ul + cl, e->fingerprint, fl);
			pos += ul + cl + fl;
			n++;
		}
	}
	put_le(buf + 12, n, 4);
	SHA256(buf, pos, buf + pos);
	*out = buf;
	*len = pos + TRAILER_LEN;
	return 0;
}

/* A string of `len` bytes without NUL, copied out. */
static bool take_name(const unsigned char *p, size_t len, size_t max, char *out)
{
	if(len == 0 || len > max || memchr(p, '\0', len) != NULL){
		return false;
	}
	memcpy(out, p, len);
	out[len] = '\0';
	return true;
}

static bool fingerprint_hex(const char *f)
{
	for(; *f; f++){
		if(!((*f >= '0' && *f <= '9') || (*f >= 'a' && *f <= 'f'))){
			return false;
		}
	}
	return true;
}

int cr_warm_decode(struct cr_warm *w, const unsigned char *data, size_t len, int64_t now_ms, int64_t now_wall_ms,
		int64_t max_ttl_ms, char position[CR_POSITION_MAX + 1], char *err, size_t errlen)
{
	unsigned char sum[SHA256_DIGEST_LENGTH];
	uint64_t version, count;
	int64_t written;
	size_t plen, pos;
	char user[CR_WARM_NAME_MAX + 1], client_id[CR_WARM_NAME_MAX + 1], fingerprint[FINGERPRINT_LEN + 1];

	position[0] = '\0';
	if(len < HEADER_LEN + TRAILER_LEN || memcmp(data, MAGIC, sizeof(MAGIC)) != 0){
		snprintf(err, errlen, "not a warm file");
		return -1;
	}
	version = get_le(data + 8, 4);
	if(version != CR_WARM_VERSION){
		snprintf(err, errlen, "format version %llu, not %d", (unsigned long long)version, CR_WARM_VERSION);
		return -1;
	}
	SHA256(data, len - TRAILER_LEN, sum);
	if(CRYPTO_memcmp(sum, data + len - TRAILER_LEN, sizeof(sum)) != 0){
		snprintf(err, errlen, "checksum does not match (truncated or corrupt)");
		return -1;
	}
	len -= TRAILER_LEN;
	count = get_le(data + 12, 4);
	written = (int64_t)get_le(data + 16, 8);
	plen = get_le(data + 24, 2);
	if(written > now_wall_ms){
		snprintf(err, errlen, "written in the future (the clock went back): lifetimes cannot be trusted");
		return -1;
	}
	if(count > w->max_entries){
		snprintf(err, errlen, "%llu entries, more than %zu", (unsigned long long)count, w->max_entries);
		return -1;
	}
	if(plen > CR_POSITION_MAX || HEADER_LEN + plen > len){
		snprintf(err, errlen, "bad position");
		return -1;
	}
	memcpy(position, data + HEADER_LEN, plen);
	position[plen] = '\0';
	if(!cr_feed_position_valid(position)){
		position[0] = '\0';
		snprintf(err, errlen, "bad position");
		return -1;
	}
	pos = HEADER_LEN + plen;
	for(uint64_t i = 0; i < count; i++){
		const unsigned char *e = data + pos;
		size_t ul, cl, fl;
		int64_t expires, remaining;
		uint32_t iterations;
		struct cr_warm_entry *entry;

		if(len - pos < ENTRY_FIXED_LEN){
			goto truncated;
		}
		expires = (int64_t)get_le(e, 8);
		iterations = (uint32_t)get_le(e + 8, 4);
		ul = get_le(e + 12, 2);
		cl = get_le(e + 14, 2);
		fl = e[16];
		if(len - pos - ENTRY_FIXED_LEN < ul + cl + fl){
			goto truncated;
		}
		if(!take_name(e + ENTRY_FIXED_LEN, ul, CR_WARM_NAME_MAX, user)
				|| !take_name(e + ENTRY_FIXED_LEN + ul, cl, CR_WARM_NAME_MAX, client_id)
				|| (fl != 0 && fl != FINGERPRINT_LEN)
				|| (fl != 0 && (!take_name(e + ENTRY_FIXED_LEN + ul + cl, fl, FINGERPRINT_LEN, fingerprint)
						|| !fingerprint_hex(fingerprint)))){
			snprintf(err, errlen, "entry %llu is malformed", (unsigned long long)i);
			goto fail;
		}
		if(fl == 0){
			fingerprint[0] = '\0';
		}
		if(iterations < w->iterations || iterations > CR_WARM_ITERATIONS_MAX){
			snprintf(err, errlen, "entry %llu has %u PBKDF2 iterations (%u to %d allowed)", (unsigned long long)i,
					iterations, w->iterations, CR_WARM_ITERATIONS_MAX);
			goto fail;
		}
		pos += ENTRY_FIXED_LEN + ul + cl + fl;
		remaining = expires - now_wall_ms;
		if(remaining > max_ttl_ms){
			remaining = max_ttl_ms; /* never longer than a grant made now */
		}
		if(remaining <= 0){
			continue; /* its lifetime ran out while the broker was down */
		}
		entry = insert(w, user, client_id, fingerprint, now_ms + remaining, iterations, true);
		if(entry == NULL){
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		memcpy(entry->salt, e + 17, CR_WARM_SALT_LEN);
		memcpy(entry->pbkdf2, e + 17 + CR_WARM_SALT_LEN, CR_WARM_HASH_LEN);
		w->loaded++;
	}
	if(pos != len){
		snprintf(err, errlen, "%zu bytes after the last entry", len - pos);
		goto fail;
	}
	w->dirty = false;
	return 0;
truncated:
	snprintf(err, errlen, "truncated");
fail:
	cr_warm_drop_all(w);
	w->loaded = 0;
	position[0] = '\0';
	return -1;
}

/* -- the file ------------------------------------------------------------- */

static int write_all(int fd, const unsigned char *p, size_t len)
{
	while(len > 0){
		ssize_t n = write(fd, p, len);
		if(n < 0){
			if(errno == EINTR){
				continue;
			}
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The directory holding path, so that the rename itself is made durable. */
static void sync_dir(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	int fd;

	if(slash == NULL || (size_t)(slash - path) >= sizeof(dir)){
		return;
	}
	if(slash == path){
		snprintf(dir, sizeof(dir), "/");
	}else{
		memcpy(dir, path, (size_t)(slash - path));
		dir[slash - path] = '\0';
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if(fd >= 0){
		(void)fsync(fd);
		close(fd);
	}
}

int cr_warm_save(struct cr_warm *w, const char *path, const char *position, int64_t now_ms, int64_t now_wall_ms,
		char *err, size_t errlen)
{
	char tmp[4096 + 8];
	unsigned char *data = NULL;
	size_t len = 0;
	int fd;

	if((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)){
		snprintf(err, errlen, "path too long");
		return -1;
	}
	if(cr_warm_encode(w, position, now_ms, now_wall_ms, &data, &len) != 0){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	(void)unlink(tmp); /* a leftover of a crash; never followed if a link */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if(fd < 0){
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		free(data);
		return -1;
	}
	if(fchmod(fd, 0600) != 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0){
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		close(fd);
		(void)unlink(tmp);
		free(data);
		return -1;
	}
	free(data);
	if(close(fd) != 0 || rename(tmp, path) != 0){
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		(void)unlink(tmp);
		return -1;
	}
	sync_dir(path);
	w->dirty = false;
	w->saves++;
	return 0;
}

int cr_warm_load(struct cr_warm *w, const char *path, int64_t now_ms, int64_t now_wall_ms, int64_t max_ttl_ms,
		char position[CR_POSITION_MAX + 1], char *err, size_t errlen)
{
	struct stat st;
	unsigned char *data;
	size_t got = 0;
	int fd, rc;

	position[0] = '\0';
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if(fd < 0){
		if(errno == ENOENT){
			return 0;
		}
		snprintf(err, errlen, "%s", strerror(errno)); /* ELOOP: a symbolic link */
		return -1;
	}
	if(fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)){
		snprintf(err, errlen, "not a regular file");
		close(fd);
		return -1;
	}
	if((st.st_mode & 077) != 0 || st.st_uid != geteuid()){
		snprintf(err, errlen, "mode %04o owner %u: must be the broker's user's alone (0600)",
				(unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
		close(fd);
		return -1;
	}
	if((uint64_t)st.st_size > cr_warm_file_max(w->max_entries)){
		snprintf(err, errlen, "%lld bytes, larger than %zu entries take", (long long)st.st_size, w->max_entries);
		close(fd);
		return -1;
	}
	data = malloc((size_t)st.st_size + 1);
	if(data == NULL){
		snprintf(err, errlen, "out of memory");
		close(fd);
		return -1;
	}
	while(got < (size_t)st.st_size){
		ssize_t n = read(fd, data + got, (size_t)st.st_size - got);
		if(n < 0 && errno == EINTR){
			continue;
		}
		if(n <= 0){
			break;
		}
		got += (size_t)n;
	}
	close(fd);
	if(got != (size_t)st.st_size){
		snprintf(err, errlen, "short read");
		free(data);
		return -1;
	}
	rc = cr_warm_decode(w, data, got, now_ms, now_wall_ms, max_ttl_ms, position, err, errlen);
	free(data);
	return rc == 0 ? 1 : -1;
}

/* -- the plugin's side ----------------------------------------------------- */

#define REPLAY_ROUNDS_MAX 200 /* the feed's CHANGES_MAX in answers of 1000, and then some */

/* Reads the change feed from the saved position until an answer brings no
 * more changes, applying each to the loaded entries. 0 with the position
 * reached, or -1 with a reason (a reset, no answer, garbage, too slow). A
 * blocking request, made once at load, before the broker accepts a client. */
static int replay(struct cr_plugin *p, char position[CR_POSITION_MAX + 1], char *err, size_t errlen)
{
	struct cr_buf body = {NULL, 0, 0, CR_FEED_BODY_MAX};
	char curl_error[CURL_ERROR_SIZE] = "";
	CURL *c = curl_easy_init();
	int64_t deadline = cr_now_ms() + 3 * p->opt.timeout_ms;
	int rc = -1;

	snprintf(err, errlen, "libcurl refused its settings");
	if(c == NULL || cr_http_easy_options(c, &body, curl_error, p->opt.timeout_ms) != 0){
		goto done;
	}
	for(int round = 0; round < REPLAY_ROUNDS_MAX; round++){
		char url[CR_URL_MAX + 3 * CR_POSITION_MAX + 64];
		char *escaped = curl_easy_escape(c, position, 0);
		struct cr_feed_answer answer;
		long status = 0;
		CURLcode done;
		bool more;

		if(escaped == NULL){
			snprintf(err, errlen, "out of memory");
			goto done;
		}
		snprintf(url, sizeof(url), "%s%s", p->url_changes, escaped);
		curl_free(escaped);
		if(cr_now_ms() > deadline){
			snprintf(err, errlen, "the change feed took longer than %ld ms", 3 * p->opt.timeout_ms);
			goto done;
		}
		body.len = 0;
		curl_error[0] = '\0';
		(void)curl_easy_setopt(c, CURLOPT_URL, url);
		done = curl_easy_perform(c);
		if(done != CURLE_OK){
			snprintf(err, errlen, "change feed: %.200s", curl_error[0] ? curl_error : curl_easy_strerror(done));
			goto done;
		}
		(void)curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		if(status != 200){
			snprintf(err, errlen, "change feed: HTTP %ld", status);
			goto done;
		}
		if(cr_feed_parse(body.data, body.len, &answer, err, errlen) != 0){
			goto done;
		}
		if(!cr_warm_apply(&p->warm, &answer)){
			cr_feed_answer_free(&answer);
			snprintf(err, errlen, "the change feed was reset (the saved position is gone, or Redis lost changes)");
			goto done;
		}
		more = answer.count > 0;
		memcpy(position, answer.position, CR_POSITION_MAX + 1);
		cr_feed_answer_free(&answer);
		if(!more){
			rc = 0;
			goto done;
		}
	}
	snprintf(err, errlen, "the change feed had more than %d answers of changes", REPLAY_ROUNDS_MAX);
done:
	if(c != NULL){
		curl_easy_cleanup(c);
	}
	free(body.data);
	return rc;
}

void cr_warm_start(struct cr_plugin *p, const unsigned char key[16])
{
	char position[CR_POSITION_MAX + 1];
	char err[256];
	size_t max = p->cache.max_entries < CR_WARM_MAX_ENTRIES ? p->cache.max_entries : CR_WARM_MAX_ENTRIES;
	int rc;

	if(p->opt.warm_file == NULL){
		return;
	}
	/* 2.1's dynamic security needs 1000 iterations, about 0.75 ms of the
	 * broker's thread per CONNECT; a delayed check costs it less, and keeps
	 * it serving others meanwhile (docs/performance.md, "Warm restart"). */
	if(p->delayed.complete != NULL){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: warm file %s unused: CONNECT checks are delayed"
				" (plugin_opt_delayed_auth 0 uses it on 2.1)", p->opt.warm_file);
		return;
	}
	if(cr_warm_init(&p->warm, key, p->broker_21 ? CR_WARM_ITERATIONS_21 : CR_WARM_ITERATIONS_20, max) != 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cregistry_auth: out of memory: no warm restart");
		return;
	}
	p->next_warm_save_ms = cr_now_ms() + p->opt.warm_save_interval * 1000;
	rc = cr_warm_load(&p->warm, p->opt.warm_file, cr_now_ms(), cr_wall_ms(), p->opt.cache_seconds * 1000, position,
			err, sizeof(err));
	if(rc == 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: no warm file at %s yet: a cold start", p->opt.warm_file);
		return;
	}
	if(rc < 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cregistry_auth: warm file %s ignored (%s): a cold start",
				p->opt.warm_file, err);
		return;
	}
	if(p->warm.count == 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: warm file %s holds no live grant: a cold start",
				p->opt.warm_file);
		return;
	}
	if(replay(p, position, err, sizeof(err)) != 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cregistry_auth: warm file %s: %zu grant(s) dropped, a cold start: %s",
				p->opt.warm_file, p->warm.count, err);
		cr_warm_drop_all(&p->warm);
		p->warm.loaded = 0;
		return;
	}
	/* the feed goes on from where the entries are up to date */
	memcpy(p->position, position, sizeof(p->position));
	if(cr_http_set_position(&p->http, p->position) != 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cregistry_auth: out of memory; checks go without the feed position");
	}
	p->warm.loaded = p->warm.count;
	p->warm.ready = true;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: warm start: %zu grant(s) from %s, the change feed read"
			" up to now", p->warm.count, p->opt.warm_file);
}

/* 0 written, -1 not (and said why). */
static int save(struct cr_plugin *p)
{
	char err[256];

	/* Without a position the entries could not be brought up to date: the
	 * file left there still names the older one its entries are good from. */
	if(p->position[0] == '\0'){
		return -1;
	}
	if(cr_warm_save(&p->warm, p->opt.warm_file, p->position, cr_now_ms(), cr_wall_ms(), err, sizeof(err)) != 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cregistry_auth: warm file not written: %s", err);
		return -1;
	}
	return 0;
}

void cr_warm_tick(struct cr_plugin *p, int64_t now)
{
	if(p->warm.buckets == NULL || !p->warm.dirty || p->opt.warm_save_interval == 0 || now < p->next_warm_save_ms){
		return;
	}
	p->next_warm_save_ms = now + p->opt.warm_save_interval * 1000;
	(void)save(p);
}

void cr_warm_stop(struct cr_plugin *p)
{
	if(p->warm.buckets == NULL){
		return;
	}
	/* the counts the broker tests read: $SYS may not be published before a stop */
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: warm file %s: %llu CONNECT(s) answered from it,"
			" %zu grant(s) %s", p->opt.warm_file, (unsigned long long)p->warm.hits, p->warm.count,
			save(p) == 0 ? "written" : "not written (no feed position yet)");
	cr_warm_free(&p->warm);
}
