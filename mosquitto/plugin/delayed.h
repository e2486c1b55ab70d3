/* Delayed basic auth (Mosquitto 2.1): a CONNECT that misses the cache is
 * answered MOSQ_ERR_AUTH_DELAYED and checked without blocking the broker, on
 * a curl multi handle advanced on every tick; its answer goes to the broker
 * with mosquitto_complete_basic_auth. At most plugin_opt_delayed_max checks
 * are in flight, each bounded by timeout_ms. Not used on 2.0 (no such function). */
#ifndef CR_DELAYED_H
#define CR_DELAYED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

struct mosquitto;

#include "digest.h"
#include "http.h"

#define CR_ERR_AUTH_DELAYED (-5) /* 2.1's MOSQ_ERR_AUTH_DELAYED; not in 2.0's header */

typedef void (*cr_complete_fn)(const char *clientid, int result);
/* 2.1's mosquitto_apply_on_all_clients (not in 2.0's header) */
typedef int (*cr_apply_fn)(int (*functor)(const struct mosquitto *, void *), void *context);

struct cr_pending {
	CURL *easy; /* NULL: the slot is free */
	struct curl_slist *headers;
	char *json;
	char *client_id;
	char *user;
	unsigned char digest[CR_DIGEST_LEN];
	char cert_fingerprint[2 * 32 + 1]; /* "" without a client certificate: part of the cache key */
	uint64_t refusal_epoch; /* the refusal table's epoch at the start (refusals.h) */
	struct cr_buf body;
	char error[CURL_ERROR_SIZE];
	bool gone; /* its CONNECT was closed (a kick of its username): never answered */
};

struct cr_delayed {
	cr_complete_fn complete; /* NULL: the broker has no delayed basic auth */
	cr_apply_fn apply_on_all_clients; /* NULL: a fault is answered "not authorised" */
	CURLM *multi;
	size_t in_flight;
	size_t slot_count;
	struct cr_pending *slots;
};

struct cr_plugin;

/* 0, or -1 when out of memory. `complete` NULL leaves it unused; else at
 * most `max` checks are in flight. */
int cr_delayed_init(struct cr_delayed *d, cr_complete_fn complete, cr_apply_fn apply_on_all_clients, size_t max);
/* Frees every check still in flight, answering none (the broker is stopping). */
void cr_delayed_cleanup(struct cr_delayed *d);

/* Starts the check of a CONNECT: 0 (answer the broker CR_ERR_AUTH_DELAYED), or
 * -1 (no free slot, out of memory: the caller answers at once). `json` is the
 * request body (taken over: cleansed and freed by the delayed check). */
int cr_delayed_start(struct cr_plugin *p, const char *url, char *json, const char *client_id, const char *user,
		const unsigned char digest[CR_DIGEST_LEN], const char *cert_fingerprint);

/* Drops, unanswered, the check in flight for `client_id`: a new CONNECT with
 * that ID means the client it was for has gone (the broker refuses a CONNECT
 * while one with its ID waits), and its answer must not reach the newcomer. */
void cr_delayed_forget(struct cr_delayed *d, const char *client_id);

/* Advances the checks in flight without blocking; completes those done. */
void cr_delayed_poll(struct cr_plugin *p);

#endif
