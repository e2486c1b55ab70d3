/* All state of one plugin instance, passed to every callback as userdata:
 * nothing is global, so a second instance shares nothing. */
#ifndef CR_STATE_H
#define CR_STATE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "broker_api.h"

#include "cache.h"
#include "delayed.h"
#include "digest.h"
#include "feed.h"
#include "http.h"
#include "options.h"
#include "refusals.h"
#include "warm.h"

struct cr_counters {
	uint64_t hits;
	uint64_t misses;
	uint64_t http_errors;
	uint64_t kicks;
	uint64_t feed_polls;
	uint64_t feed_errors;
	uint64_t fast_fails;
	uint64_t ticks;
	uint64_t delayed;
	uint64_t refusal_hits; /* CONNECTs refused from the refusal table, without asking */
};

/* Who was last granted a CONNECT with a client ID (keyed hashes, a slot per
 * hash of the client ID, overwritten by the next): so that a client ID given to
 * a user disconnects another user wearing it, not the new owner itself. */
#define CR_WEARER_SLOTS 4096
struct cr_wearer {
	uint64_t pair; /* keyed hash of client ID and username; 0: none */
};

struct cr_plugin {
	mosquitto_plugin_id_t *pid;
	struct cr_options opt;
	struct cr_cache cache;
	struct cr_http http;
	struct cr_delayed delayed;
	struct cr_refusals refusals;
	struct cr_warm warm; /* all zero (no-ops) without plugin_opt_warm_file */
	int64_t next_warm_save_ms;
	unsigned char digest_key[CR_DIGEST_KEY_LEN];
	char *url_user;
	char *url_acl;
	char *url_changes;
	char position[CR_POSITION_MAX + 1]; /* "" until the first answer */
	int64_t loaded_ms;
	int64_t next_feed_ms;
	int64_t last_feed_ok_ms; /* 0: never */
	int64_t next_stats_ms;
	int64_t fault_until_ms; /* checks that miss the cache fail without asking until then */
	int64_t last_fault_ms; /* the last check that got no answer or a fault's answer; 0: none */
	int service_state; /* -1 unknown, 0 failing, 1 answering */
	int feed_state;
	bool warned_no_tick;
	bool broker_21; /* Mosquitto 2.1 or newer: mosquitto_complete_basic_auth found at load */
	struct cr_counters counters;
	struct cr_wearer wearers[CR_WEARER_SLOTS];
};

static inline int64_t cr_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Remembers a refused CONNECT of a known user (refusals.h); not one with a
 * client certificate (its digest does not cover the certificate). `epoch`:
 * p->refusals.epoch when the check began. */
static inline void cr_remember_refusal(struct cr_plugin *p, const char *user, const unsigned char digest[CR_DIGEST_LEN],
		const char *cert_fingerprint, uint64_t epoch)
{
	if(p->opt.refusal_cache_seconds > 0 && cert_fingerprint[0] == '\0'){
		cr_refusals_put(&p->refusals, digest, user, cr_now_ms() + p->opt.refusal_cache_seconds * 1000, epoch);
	}
}

/* checks.c */
/* After a check's fault, CONNECTs are checked synchronously for this long (a
 * delayed check that fails could not be answered as a fault, delayed.c). */
#define CR_KNOWN_DOWN_MS 2000
/* CR_DENY: refused; CR_UNKNOWN: refused, and the registry has no such user
 * (the answer's "unknown_user"), so plugin_opt_unknown_users defer may leave
 * the check to the broker's other authentication; CR_FAULT: no answer. */
enum cr_verdict { CR_ALLOW, CR_DENY, CR_UNKNOWN, CR_FAULT };
enum cr_verdict cr_judge(struct cr_plugin *p, long status, const struct cr_buf *body, const char *error);
bool cr_fault_window(struct cr_plugin *p);
int cr_connect_fault(const struct mosquitto *client);
int cr_on_basic_auth(int event, void *event_data, void *userdata);
int cr_on_acl_check(int event, void *event_data, void *userdata);

/* poll.c */
#define CR_TICK_BUSY_MS 10  /* next tick while the feed's transfer runs (2.1) */
/* Next tick while a delayed CONNECT check runs (2.1): its device waits for the
 * tick that finds the answer, and 2.1 offers a plugin no way to wake its loop
 * or to watch a socket, so the shortest wait it takes (whole milliseconds). */
#define CR_TICK_DELAYED_MS 1
#define CR_TICK_IDLE_MS 100 /* at the latest (2.1; 2.0 ticks at least this often itself) */
void cr_tick_ask_next(struct mosquitto_evt_tick *tick, long ms);
/* The wait the tick names at `now`: in milliseconds, 1 to CR_TICK_IDLE_MS. */
long cr_next_tick_ms(const struct cr_plugin *p, int64_t now);
int cr_on_tick(int event, void *event_data, void *userdata);
void cr_apply_feed_answer(struct cr_plugin *p, const struct cr_feed_answer *answer);
void cr_wearer_granted(struct cr_plugin *p, const char *client_id, const char *user);

/* warm.c, the plugin's side of the warm file */
void cr_warm_start(struct cr_plugin *p, const unsigned char key[16]);
void cr_warm_tick(struct cr_plugin *p, int64_t now);
void cr_warm_stop(struct cr_plugin *p);

#endif
