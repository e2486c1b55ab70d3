/* The warm file (plugin_opt_warm_file, docs/plugin.md "Warm restart"): the
 * CONNECT grants and the change feed's position kept across a broker restart.
 *
 * A grant at rest is as hard to guess from as dynamic security's own stored
 * hashes: PBKDF2-HMAC-SHA512 with a random salt per entry and at least that
 * broker version's iteration count (101 on 2.0, common/password_mosq.h; 1000
 * on 2.1, libcommon/password_common.c), over username, password, client ID and
 * certificate fingerprint. The in-memory cache keys (a per-process HMAC key,
 * SipHash) never reach the file. Usernames, client IDs and fingerprints are
 * kept in the clear, as dynamic security keeps them.
 *
 * Loaded entries answer nothing until the change feed was read from the saved
 * position up to now and applied (cr_warm_replay); a reset or no answer drops
 * them all. An entry keeps its remaining lifetime from before the restart:
 * expiry is kept in wall-clock time in the file, so the time at rest counts.
 *
 * The table is a chained hash of malloc'd entries keyed by a keyed hash of
 * user, client ID and fingerprint; it is touched only on a CONNECT that missed
 * the cache, on a change of the feed and when the file is written. */
#ifndef CR_WARM_H
#define CR_WARM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "feed.h"

#define CR_WARM_VERSION 1
#define CR_WARM_SALT_LEN 16
#define CR_WARM_HASH_LEN 64       /* SHA-512 */
#define CR_WARM_NAME_MAX 256      /* longer usernames or client IDs are never kept */
#define CR_WARM_MAX_ENTRIES 200000
#define CR_WARM_ITERATIONS_MAX 10000 /* a file asking more is refused: each check would stall the broker */
#define CR_WARM_ITERATIONS_20 101
#define CR_WARM_ITERATIONS_21 1000

struct cr_warm_entry {
	struct cr_warm_entry *next; /* in its bucket */
	uint64_t hash;
	int64_t expires_ms; /* monotonic, like the cache's */
	uint32_t iterations;
	bool loaded; /* from the file and not yet used: may answer once the feed was replayed */
	unsigned char salt[CR_WARM_SALT_LEN];
	unsigned char pbkdf2[CR_WARM_HASH_LEN];
	char *user;
	char *client_id;
	char fingerprint[65]; /* "" without a client certificate */
};

struct cr_warm {
	struct cr_warm_entry **buckets;
	size_t mask;
	size_t count;
	size_t max_entries;
	uint32_t iterations; /* what new entries get, and the least a loaded one may have */
	bool ready;          /* the feed was replayed: loaded entries may answer */
	bool dirty;          /* changed since the file was last written */
	unsigned char key[16];
	uint64_t loaded;     /* entries taken from the file at start */
	uint64_t hits;       /* CONNECTs granted from a loaded entry */
	uint64_t saves;      /* files written */
};

/* 0, or -1 out of memory. */
int cr_warm_init(struct cr_warm *w, const unsigned char key[16], uint32_t iterations, size_t max_entries);
void cr_warm_free(struct cr_warm *w);

/* Keeps a grant (replacing one of the same user, client ID and fingerprint):
 * a fresh salt and PBKDF2. 0, or -1 when it is not kept (full, too long, no
 * random bytes, out of memory). */
int cr_warm_record(struct cr_warm *w, const char *user, const char *password, const char *client_id,
		const char *fingerprint, int64_t expires_ms);

/* 1 when a loaded entry answers (ready, fresh, the PBKDF2 matches): *expires_ms
 * is its lifetime's end, and the entry answers no more (the cache has it now).
 * 0 otherwise: the caller asks the service. */
int cr_warm_match(struct cr_warm *w, const char *user, const char *password, const char *client_id,
		const char *fingerprint, int64_t now_ms, int64_t *expires_ms);

void cr_warm_drop_user(struct cr_warm *w, const char *user);
void cr_warm_drop_all(struct cr_warm *w);

/* Applies one change-feed answer to the loaded entries, as the cache applies
 * it (poll.c): false on a reset (every entry is gone then). */
bool cr_warm_apply(struct cr_warm *w, const struct cr_feed_answer *answer);

/* The file's bytes: entries fresh at now_ms, their lifetimes as wall-clock
 * times. Free *out with free(). 0, or -1 out of memory. */
int cr_warm_encode(const struct cr_warm *w, const char *position, int64_t now_ms, int64_t now_wall_ms,
		unsigned char **out, size_t *len);

/* Takes a file's entries (as loaded, not yet ready) into an empty table,
 * each with its remaining lifetime, at most max_ttl_ms. 0 with the saved
 * position, or -1 with a one-line reason (the table is left empty). */
int cr_warm_decode(struct cr_warm *w, const unsigned char *data, size_t len, int64_t now_ms, int64_t now_wall_ms,
		int64_t max_ttl_ms, char position[CR_POSITION_MAX + 1], char *err, size_t errlen);

/* Writes the file atomically (a temporary file beside it, fsync, rename),
 * mode 0600. 0, or -1 with a reason. */
int cr_warm_save(struct cr_warm *w, const char *path, const char *position, int64_t now_ms, int64_t now_wall_ms,
		char *err, size_t errlen);

/* Reads the file: 1 loaded (maybe no entries), 0 none there, -1 refused or
 * unreadable with a reason (a file that is not regular, is readable or
 * writable by group or others, is another user's, is too large or does not
 * decode). */
int cr_warm_load(struct cr_warm *w, const char *path, int64_t now_ms, int64_t now_wall_ms, int64_t max_ttl_ms,
		char position[CR_POSITION_MAX + 1], char *err, size_t errlen);

/* The largest file a table of max_entries may write. */
size_t cr_warm_file_max(size_t max_entries);

static inline int64_t cr_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
