/* CONNECT and ACL checks: the cache first, then cregistry's broker routes.
 *
 * Answers by HTTP status: 200 with the service's own body ({"ok": true, ...})
 * allow, 403/400 deny (with "unknown_user": true, a user cregistry lacks:
 * plugin_opt_unknown_users defer leaves the check to the broker's other
 * authentication with MOSQ_ERR_PLUGIN_DEFER), anything else (a 200 with
 * another body, 5xx, other statuses, timeout, no connection) is a fault:
 * nothing is cached and the broker is told MOSQ_ERR_UNKNOWN, which
 * mosquitto 2.0.11 handles as
 *   CONNECT   -> socket closed without CONNACK (handle_connect.c; an MQTT 5
 *                CONNECT is told "server unavailable" instead, cr_connect_fault)
 *   PUBLISH   -> handle__publish returns the error: the publisher is
 *                disconnected before any PUBACK/PUBREC, so QoS 1/2 are re-sent
 *   SUBSCRIBE -> handle__subscribe returns the error: client disconnected.
 * Deliveries (MOSQ_ACL_READ) that cannot be decided are answered as denied:
 * the message is not delivered to that subscriber (fail closed; lost for it at
 * every QoS), and the publisher and other subscribers are not affected. An
 * error there would instead disconnect a QoS 0 publisher and make mosquitto
 * retry a QoS 2 release for every subscriber. Reads are cached like every
 * ACL answer, so subscribers whose answers are cached keep receiving. */
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>

#include <mosquitto.h>

#include "answer.h"
#include "certificate.h"
#include "state.h"

static void service_state(struct cr_plugin *p, int ok, const char *why)
{
	if(p->service_state == ok){
		return;
	}
	p->service_state = ok;
	if(ok){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: service answering at %s", p->opt.url);
	}else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cregistry_auth: service not answering at %s (%s): refusing what is not cached",
				p->opt.url, why);
	}
}


/* Mosquitto waits on its only thread while a check runs. When cregistry gave
 * no answer at all (timeout, no connection), the checks that miss the cache
 * fail at once for fault_backoff_ms instead of each waiting up to timeout_ms,
 * so that clients whose answers are cached are not stalled behind a queue of
 * reconnecting devices. The first miss after the window asks again, and any
 * HTTP answer of the change feed ends the window early (poll.c). */
/* Within the fault backoff after a check got no answer (the window ends by
 * itself, or early on any answer of the change feed, poll.c). */
bool cr_fault_window(struct cr_plugin *p)
{
	if(p->fault_until_ms != 0 && cr_now_ms() < p->fault_until_ms){
		return true;
	}
	p->fault_until_ms = 0;
	return false;
}

static enum cr_verdict ask(struct cr_plugin *p, const char *url, cJSON *body)
{
	char *json;
	long status;

	if(cr_fault_window(p)){
		p->counters.fast_fails++;
		return CR_FAULT;
	}
	if(!p->warned_no_tick && p->counters.feed_polls == 0 && cr_now_ms() - p->loaded_ms > 5000){
		p->warned_no_tick = true;
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cregistry_auth: mosquitto sends no ticks, so the change feed is never"
				" read: set per_listener_settings false");
	}
	json = cJSON_PrintUnformatted(body);
	if(json == NULL){
		p->counters.http_errors++;
		return CR_FAULT;
	}
	status = cr_http_post_json(&p->http, url, json);
	OPENSSL_cleanse(json, strlen(json));
	cJSON_free(json);
	return cr_judge(p, status, &p->http.check_body, p->http.check_error);
}

/* The verdict of a check's answer (`status` 0: none came, `error` says why),
 * with the service's state, counters and fault backoff updated. */
enum cr_verdict cr_judge(struct cr_plugin *p, long status, const struct cr_buf *body, const char *error)
{
	char why[64];

	if(status == 200 && cr_answer_grants(body->data, body->len)){
		service_state(p, 1, "");
		return CR_ALLOW;
	}
	if(status == 403 || status == 400){
		service_state(p, 1, "");
		return cr_answer_unknown_user(body->data, body->len) ? CR_UNKNOWN : CR_DENY;
	}
	p->counters.http_errors++;
	p->last_fault_ms = cr_now_ms();
	if(status == 200){
		service_state(p, 0, "HTTP 200 without {\"ok\": true}: not cregistry's answer");
		return CR_FAULT;
	}
	if(status == 0){
		if(p->opt.fault_backoff_ms > 0){
			p->fault_until_ms = cr_now_ms() + p->opt.fault_backoff_ms;
		}
		service_state(p, 0, error[0] ? error : "no answer");
	}else{
		snprintf(why, sizeof(why), "HTTP %ld", status);
		service_state(p, 0, why);
	}
	return CR_FAULT;
}

/* What a client is told when its CONNECT could not be checked (cregistry
 * unreachable, slow, or not cregistry): never "not authorised", which a
 * device takes for refused credentials (SPEC §11).
 * - MQTT 5: MOSQ_ERR_SERVER_UNAVAILABLE (136). Mosquitto 2.1 sends it as the
 *   CONNACK's reason code 0x88; 2.0 sends a CONNACK only for MOSQ_ERR_AUTH and
 *   closes the connection without one for any other code.
 * - MQTT 3.1.1: MOSQ_ERR_UNKNOWN, closed without a CONNACK on both: 2.1 would
 *   turn 136 into 3.1.1's "not authorised" (5). */
#define CR_ERR_SERVER_UNAVAILABLE 136 /* 2.1's MOSQ_ERR_SERVER_UNAVAILABLE; not in 2.0's header */

int cr_connect_fault(const struct mosquitto *client)
{
	return mosquitto_client_protocol_version(client) == 5 ? CR_ERR_SERVER_UNAVAILABLE : MOSQ_ERR_UNKNOWN;
}

static void wipe_string_item(cJSON *item)
{
	if(item && item->valuestring){
		OPENSSL_cleanse(item->valuestring, strlen(item->valuestring));
	}
}

/* Whether cregistry is known to be unreachable just now: the change feed is
 * failing, or a check failed moments ago (CR_KNOWN_DOWN_MS). A CONNECT is then
 * answered synchronously (within the fault backoff at once; MQTT 5: 0x88),
 * never delayed: a delayed check that fails can be closed without a CONNACK or,
 * at worst, told "not authorised", never "server unavailable" (delayed.c). */
static bool cregistry_known_down(struct cr_plugin *p)
{
	if(cr_fault_window(p) || p->feed_state == 0
			|| (p->last_fault_ms != 0 && cr_now_ms() - p->last_fault_ms < CR_KNOWN_DOWN_MS)){
		return true; /* not a fast fail yet: ask() counts those it fails without asking */
	}
	return false;
}

/* The client certificate of a TLS listener with require_certificate (SPEC
 * §14), through certificate.c: 1 with one, 0 without, -1 when it cannot be
 * read. mosquitto_client_certificate returns a copy the caller frees. */
static int client_certificate(struct mosquitto *client, char fingerprint[CR_CERT_FINGERPRINT_LEN + 1], char *cn,
		size_t cn_size)
{
	X509 *cert = mosquitto_client_certificate(client);
	int read;

	if(cert == NULL){
		return 0;
	}
	read = cr_certificate_identity(cert, fingerprint, cn, cn_size);
	X509_free(cert);
	return read == 0 ? 1 : -1;
}

int cr_on_basic_auth(int event, void *event_data, void *userdata)
{
	struct cr_plugin *p = userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *user = ed->username;
	const char *password = ed->password ? ed->password : "";
	const char *id = mosquitto_client_id(ed->client);
	unsigned char digest[CR_DIGEST_LEN];
	struct cr_key key;
	int cached;
	cJSON *body;
	cJSON *pw_item = NULL;
	enum cr_verdict v;
	char cert_fingerprint[CR_CERT_FINGERPRINT_LEN + 1] = "";
	char cert_cn[256] = "";
	int has_cert;
	uint64_t refusal_epoch;
	int64_t warm_expires;

	(void)event;
	if(user == NULL || user[0] == '\0' || id == NULL || id[0] == '\0'){
		return MOSQ_ERR_AUTH;
	}
	if(p->delayed.in_flight > 0){
		cr_delayed_forget(&p->delayed, id); /* its client has gone: its answer is not this one's */
	}
	if(strpbrk(user, "+#") || strpbrk(id, "+#")){
		return MOSQ_ERR_AUTH; /* mosquitto leaves this check to version 5 plugins */
	}
	has_cert = client_certificate(ed->client, cert_fingerprint, cert_cn, sizeof(cert_cn));
	if(has_cert < 0){
		return MOSQ_ERR_AUTH;
	}
	if(cr_connect_digest(p->digest_key, user, password, id, digest) != 0){
		p->counters.http_errors++;
		return cr_connect_fault(ed->client);
	}
	cr_connect_key(&key, user, digest, cert_fingerprint); /* a grant is per certificate */
	if(cr_cache_get(&p->cache, &key, cr_now_ms(), &cached)){
		p->counters.hits++;
		cr_wearer_granted(p, id, user);
		return MOSQ_ERR_SUCCESS; /* only grants are cached */
	}
	if(!has_cert && cr_refusals_has(&p->refusals, digest, cr_now_ms())){
		OPENSSL_cleanse(digest, sizeof(digest));
		p->counters.refusal_hits++;
		return MOSQ_ERR_AUTH; /* the same credentials cregistry refused moments ago */
	}
	/* after the refusals: a repeated wrong password costs no PBKDF2 */
	if(p->warm.ready && cr_warm_match(&p->warm, user, password, id, cert_fingerprint, cr_now_ms(), &warm_expires)){
		/* a grant kept across the restart, brought up to date by the feed (warm.h) */
		(void)cr_cache_put(&p->cache, &key, MOSQ_ERR_SUCCESS, warm_expires);
		OPENSSL_cleanse(digest, sizeof(digest));
		cr_wearer_granted(p, id, user);
		return MOSQ_ERR_SUCCESS;
	}
	p->counters.misses++;
	refusal_epoch = p->refusals.epoch;

	body = cr_connect_body(user, password, id, cert_fingerprint, cert_cn, &pw_item);
	if(body == NULL){
		p->counters.http_errors++;
		return cr_connect_fault(ed->client);
	}
	/* 2.1.2's mosquitto_complete_basic_auth cannot pass a check on to the
	 * broker's other authentication (any result but success is "not
	 * authorised"): with unknown_users defer, every CONNECT is synchronous. */
	if(p->delayed.complete != NULL && !p->opt.defer_unknown_users && !cregistry_known_down(p)){
		char *json = cJSON_PrintUnformatted(body);
		wipe_string_item(pw_item);
		cJSON_Delete(body);
		if(json != NULL && cr_delayed_start(p, p->url_user, json, id, user, digest, cert_fingerprint) == 0){
			OPENSSL_cleanse(digest, sizeof(digest));
			p->counters.delayed++;
			return CR_ERR_AUTH_DELAYED;
		}
		/* json (if any) is freed by cr_delayed_start; no slot: a fault */
		OPENSSL_cleanse(digest, sizeof(digest));
		p->counters.http_errors++;
		return cr_connect_fault(ed->client);
	}
	v = ask(p, p->url_user, body);
	wipe_string_item(pw_item);
	cJSON_Delete(body);
	if(v == CR_ALLOW){
		if(p->opt.cache_seconds > 0){
			/* out of memory only costs a later re-check */
			int64_t expires = cr_now_ms() + p->opt.cache_seconds * 1000;
			(void)cr_cache_put(&p->cache, &key, MOSQ_ERR_SUCCESS, expires);
			(void)cr_warm_record(&p->warm, user, password, id, cert_fingerprint, expires); /* without a file: nothing */
		}
		OPENSSL_cleanse(digest, sizeof(digest));
		cr_wearer_granted(p, id, user);
		return MOSQ_ERR_SUCCESS;
	}
	/* A known user's refusal is remembered briefly (refusals.h); an unknown
	 * user's never: each attempt may be recorded as a registration request,
	 * and an unlock reaches no change feed. Faults are never remembered. */
	if(v == CR_DENY){
		cr_remember_refusal(p, user, digest, cert_fingerprint, refusal_epoch);
	}
	OPENSSL_cleanse(digest, sizeof(digest));
	if(v == CR_UNKNOWN){
		return p->opt.defer_unknown_users ? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_AUTH;
	}
	return v == CR_DENY ? MOSQ_ERR_AUTH : cr_connect_fault(ed->client);
}

int cr_on_acl_check(int event, void *event_data, void *userdata)
{
	struct cr_plugin *p = userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *user, *id;
	struct cr_key key;
	int acc, result;
	cJSON *body;
	enum cr_verdict v;

	(void)event;
	switch(ed->access){
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_READ:
			acc = 1;
			break;
		case MOSQ_ACL_WRITE:
			acc = 2;
			break;
		case MOSQ_ACL_SUBSCRIBE:
			acc = 4;
			break;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
	user = mosquitto_client_username(ed->client);
	id = mosquitto_client_id(ed->client);
	if(user == NULL || user[0] == '\0' || id == NULL || id[0] == '\0' || ed->topic == NULL){
		return MOSQ_ERR_ACL_DENIED;
	}
	key.user = user;
	key.user_len = strlen(user);
	key.kind = CR_KIND_ACL;
	key.access = (uint8_t)acc;
	key.part[0] = id;
	key.part_len[0] = strlen(id);
	key.part[1] = ed->topic;
	key.part_len[1] = strlen(ed->topic);
	if(cr_cache_get(&p->cache, &key, cr_now_ms(), &result)){
		p->counters.hits++;
		return result;
	}
	p->counters.misses++;

	body = cJSON_CreateObject();
	if(body == NULL || cJSON_AddStringToObject(body, "username", user) == NULL
			|| cJSON_AddStringToObject(body, "clientid", id) == NULL
			|| cJSON_AddStringToObject(body, "topic", ed->topic) == NULL
			|| cJSON_AddNumberToObject(body, "acc", acc) == NULL){
		cJSON_Delete(body);
		p->counters.http_errors++;
		return acc == 1 ? MOSQ_ERR_ACL_DENIED : MOSQ_ERR_UNKNOWN;
	}
	v = ask(p, p->url_acl, body);
	cJSON_Delete(body);
	if(v == CR_FAULT){
		return acc == 1 ? MOSQ_ERR_ACL_DENIED : MOSQ_ERR_UNKNOWN;
	}
	/* unknown_users defer: a user cregistry lacks (a password_file account)
	 * is left to the broker's other ACLs; cached like a denial. */
	if(v == CR_ALLOW){
		result = MOSQ_ERR_SUCCESS;
	}else if(v == CR_UNKNOWN && p->opt.defer_unknown_users){
		result = MOSQ_ERR_PLUGIN_DEFER;
	}else{
		result = MOSQ_ERR_ACL_DENIED;
	}
	long lifetime = v == CR_ALLOW ? p->opt.cache_seconds : p->opt.deny_cache_seconds;
	if(lifetime > 0){
		(void)cr_cache_put(&p->cache, &key, result, cr_now_ms() + lifetime * 1000);
	}
	return result;
}
