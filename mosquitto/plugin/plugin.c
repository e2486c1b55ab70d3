/* cregistry_auth: cregistry's authentication and authorisation plugin for
 * Mosquitto 2.0 (plugin interface version 5). Entry points only; the checks
 * are in checks.c, the change feed and counters in poll.c. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <mosquitto.h>

#include "state.h"

/* everything else in the .so is hidden (-fvisibility=hidden) */
#define CR_EXPORT __attribute__((visibility("default")))

static char *join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = malloc(la + lb + 1);

	if(s){
		memcpy(s, a, la);
		memcpy(s + la, b, lb + 1);
	}
	return s;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	struct cr_plugin *p = userdata;

	(void)event;
	(void)event_data;
	cr_cache_drop_all(&p->cache);
	cr_refusals_drop_all(&p->refusals);
	cr_warm_drop_all(&p->warm);
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: reload: dropped the whole cache");
	return MOSQ_ERR_SUCCESS;
}

static void plugin_free(struct cr_plugin *p)
{
	if(p == NULL){
		return;
	}
	cr_delayed_cleanup(&p->delayed);
	cr_warm_free(&p->warm);
	cr_http_cleanup(&p->http);
	cr_cache_free(&p->cache);
	cr_refusals_free(&p->refusals);
	cr_options_free(&p->opt);
	free(p->url_user);
	free(p->url_acl);
	free(p->url_changes);
	OPENSSL_cleanse(p->digest_key, sizeof(p->digest_key));
	free(p);
	curl_global_cleanup();
}

static const struct {
	int event;
	MOSQ_FUNC_generic_callback cb;
} CALLBACKS[] = {
	{MOSQ_EVT_BASIC_AUTH, cr_on_basic_auth},
	{MOSQ_EVT_ACL_CHECK, cr_on_acl_check},
	{MOSQ_EVT_TICK, cr_on_tick},
	{MOSQ_EVT_RELOAD, on_reload},
};
#define CALLBACK_COUNT (sizeof(CALLBACKS) / sizeof(CALLBACKS[0]))

CR_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

CR_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
		int option_count)
{
	struct cr_plugin *p;
	unsigned char hash_key[16];
	unsigned char refusal_key[16];
	char err[256];
	size_t registered = 0;
	cr_complete_fn complete;
	struct cr_cache_limits limits;
	cr_apply_fn apply_on_all_clients;

	if(curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK){
		mosquitto_log_printf(MOSQ_LOG_ERR, "cregistry_auth: libcurl could not be initialised");
		return MOSQ_ERR_UNKNOWN;
	}
	p = calloc(1, sizeof(*p));
	if(p == NULL){
		curl_global_cleanup();
		return MOSQ_ERR_NOMEM;
	}
	p->pid = identifier;
	p->service_state = -1;
	p->feed_state = -1;
	if(cr_options_parse(&p->opt, options, option_count, err, sizeof(err)) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "cregistry_auth: %s", err);
		plugin_free(p);
		return MOSQ_ERR_INVAL;
	}
	if(cr_digest_new_key(p->digest_key) != 0 || cr_random_bytes(hash_key, sizeof(hash_key)) != 0
			|| cr_random_bytes(refusal_key, sizeof(refusal_key)) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "cregistry_auth: no random bytes for the cache keys");
		plugin_free(p);
		return MOSQ_ERR_UNKNOWN;
	}
	/* Found at run time, so that one build loads on 2.0 and 2.1 alike. */
	complete = (cr_complete_fn)dlsym(RTLD_DEFAULT, "mosquitto_complete_basic_auth");
	apply_on_all_clients = (cr_apply_fn)dlsym(RTLD_DEFAULT, "mosquitto_apply_on_all_clients");
	p->broker_21 = complete != NULL;
	p->url_user = join(p->opt.url, "/mqtt/user");
	p->url_acl = join(p->opt.url, "/mqtt/acl");
	p->url_changes = join(p->opt.url, "/mqtt/changes?after=");
	limits.max_bytes = (size_t)p->opt.cache_bytes;
	limits.max_entries = (size_t)p->opt.cache_size;
	limits.user_percent = (unsigned)p->opt.cache_user_percent;
	if(p->url_user == NULL || p->url_acl == NULL || p->url_changes == NULL
			|| cr_cache_init_limits(&p->cache, &limits, hash_key) != 0
			|| cr_refusals_init(&p->refusals, refusal_key) != 0
			|| cr_http_init(&p->http, p->opt.timeout_ms) != 0
			|| cr_delayed_init(&p->delayed, p->opt.delayed_auth ? complete : NULL, apply_on_all_clients,
					(size_t)p->opt.delayed_max) != 0){
		OPENSSL_cleanse(hash_key, sizeof(hash_key));
		OPENSSL_cleanse(refusal_key, sizeof(refusal_key));
		mosquitto_log_printf(MOSQ_LOG_ERR, "cregistry_auth: out of memory, or libcurl refused its settings");
		plugin_free(p);
		return MOSQ_ERR_NOMEM;
	}
	cr_warm_start(p, hash_key); /* before the first CONNECT: the broker accepts none until init returns */
	OPENSSL_cleanse(hash_key, sizeof(hash_key));
	OPENSSL_cleanse(refusal_key, sizeof(refusal_key));
	p->loaded_ms = cr_now_ms();
	p->next_feed_ms = p->loaded_ms;
	p->next_stats_ms = p->loaded_ms;

	for(registered = 0; registered < CALLBACK_COUNT; registered++){
		if(mosquitto_callback_register(identifier, CALLBACKS[registered].event, CALLBACKS[registered].cb, NULL, p)
				!= MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_ERR, "cregistry_auth: could not register callback %d",
					CALLBACKS[registered].event);
			while(registered-- > 0){
				mosquitto_callback_unregister(identifier, CALLBACKS[registered].event, CALLBACKS[registered].cb, NULL);
			}
			plugin_free(p);
			return MOSQ_ERR_UNKNOWN;
		}
	}
	*userdata = p;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: loaded by Mosquitto %s", p->broker_21
			? "2.1 or newer (mosquitto_complete_basic_auth found; ticks named by the plugin)"
			: "2.0 (no mosquitto_complete_basic_auth; ticks on every pass of its loop)");
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: CONNECT checks %s",
			p->delayed.complete ? "delayed (the broker serves other clients meanwhile)" : "synchronous");
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"cregistry_auth: asking %s (timeout %ld ms, cache %ld s / denials %ld s, %zu entries in %zu bytes,"
			" %zu per user, feed every %ld ms, fault backoff %ld ms)",
			p->opt.url, p->opt.timeout_ms, p->opt.cache_seconds, p->opt.deny_cache_seconds, p->cache.max_entries,
			p->cache.bytes, p->cache.user_max, p->opt.feed_interval_ms, p->opt.fault_backoff_ms);
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: usernames cregistry does not know: %s; refused CONNECTs"
			" of known users remembered %ld s", p->opt.defer_unknown_users
			? "deferred to Mosquitto's other authentication (unknown_users defer; CONNECTs checked synchronously)"
			: "refused (unknown_users refuse)", p->opt.refusal_cache_seconds);
	return MOSQ_ERR_SUCCESS;
}

CR_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct cr_plugin *p = userdata;

	(void)options;
	(void)option_count;
	if(p == NULL){
		return MOSQ_ERR_SUCCESS;
	}
	for(size_t i = 0; i < CALLBACK_COUNT; i++){
		mosquitto_callback_unregister(p->pid, CALLBACKS[i].event, CALLBACKS[i].cb, NULL);
	}
	cr_warm_stop(p);
	plugin_free(p);
	return MOSQ_ERR_SUCCESS;
}
