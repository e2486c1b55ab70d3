#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "broker_api.h"

#include "options.h"

struct int_option {
	const char *name;
	size_t offset;
	long def;
	long min;
	long max;
};

static const struct int_option INT_OPTIONS[] = {
	/* cregistry/budget.py PLUGIN_TIMEOUT_SECONDS: the service answers 503 250 ms earlier */
	{"timeout_ms", offsetof(struct cr_options, timeout_ms), 1750, 50, 2000},
	{"cache_seconds", offsetof(struct cr_options, cache_seconds), 300, 0, 86400},
	{"deny_cache_seconds", offsetof(struct cr_options, deny_cache_seconds), 60, 0, 86400},
	/* 64 MiB: about 645,000 entries at 104 bytes (docs/plugin.md, "Cache memory") */
	{"cache_bytes", offsetof(struct cr_options, cache_bytes), 64L << 20, 64L << 10, 64L << 30},
	{"cache_size", offsetof(struct cr_options, cache_size), 0, 0, 10000000},
	{"cache_user_percent", offsetof(struct cr_options, cache_user_percent), 25, 1, 100},
	{"feed_interval_ms", offsetof(struct cr_options, feed_interval_ms), 500, 50, 1500},
	{"fault_backoff_ms", offsetof(struct cr_options, fault_backoff_ms), 1000, 0, 10000},
	{"stats_interval", offsetof(struct cr_options, stats_interval), 10, 0, 86400},
	/* On where the broker has it (2.1, found at load); 0: synchronous checks, as on 2.0 */
	{"delayed_auth", offsetof(struct cr_options, delayed_auth), 1, 0, 1},
	/* CONNECT checks in flight at once (2.1); beyond, a CONNECT is answered as a fault */
	{"delayed_max", offsetof(struct cr_options, delayed_max), 64, 1, 1024},
	/* A few seconds: a flood of one wrong password costs one bcrypt per window,
	 * and the user's change-feed entry ends the window early (refusals.h). */
	{"refusal_cache_seconds", offsetof(struct cr_options, refusal_cache_seconds), 5, 0, 60},
	/* A crash loses at most this much of the grants made since the last write;
	 * one write of 10,000 grants takes a few milliseconds on the broker's thread. */
	{"warm_save_interval", offsetof(struct cr_options, warm_save_interval), 60, 0, 86400},
};
#define INT_OPTION_COUNT (sizeof(INT_OPTIONS) / sizeof(INT_OPTIONS[0]))

static int parse_long(const char *text, long *out)
{
	char *end = NULL;
	long v;

	if(text == NULL || *text == '\0' || *text == ' ' || *text == '+'){
		return -1;
	}
	errno = 0;
	v = strtol(text, &end, 10);
	if(errno != 0 || end == text || *end != '\0'){
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_url(const char *value, char **out)
{
	size_t len;
	char *url;

	if(value == NULL){
		return -1;
	}
	if(strncasecmp(value, "http://", 7) != 0 && strncasecmp(value, "https://", 8) != 0){
		return -1;
	}
	if(strpbrk(value, " \t\r\n?#") != NULL){
		return -1;
	}
	len = strlen(value);
	if(len > CR_URL_MAX){
		return -1;
	}
	while(len > 0 && value[len - 1] == '/'){
		len--;
	}
	if(len <= (strncasecmp(value, "http://", 7) == 0 ? 7u : 8u)){
		return -1;
	}
	url = malloc(len + 1);
	if(url == NULL){
		return -1;
	}
	memcpy(url, value, len);
	url[len] = '\0';
	*out = url;
	return 0;
}

int cr_options_parse(struct cr_options *o, const struct mosquitto_opt *opts, int count, char *err, size_t errlen)
{
	memset(o, 0, sizeof(*o));
	for(size_t i = 0; i < INT_OPTION_COUNT; i++){
		*(long *)((char *)o + INT_OPTIONS[i].offset) = INT_OPTIONS[i].def;
	}
	for(int i = 0; i < count; i++){
		const char *key = opts[i].key;
		const char *value = opts[i].value;
		size_t j;

		if(key == NULL){
			continue;
		}
		if(strcmp(key, "url") == 0){
			free(o->url);
			o->url = NULL;
			if(parse_url(value, &o->url) != 0){
				snprintf(err, errlen, "plugin_opt_url must be an http:// or https:// base URL of at most %d characters (got \"%.100s\")",
						CR_URL_MAX, value ? value : "");
				goto fail;
			}
			continue;
		}
		if(strcmp(key, "warm_file") == 0){
			free(o->warm_file);
			o->warm_file = NULL;
			/* absolute: a broker started as a daemon runs from / */
			if(value == NULL || value[0] != '/' || strlen(value) > CR_WARM_PATH_MAX
					|| (o->warm_file = strdup(value)) == NULL){
				snprintf(err, errlen, "plugin_opt_warm_file must be an absolute path of at most %d characters"
						" (got \"%.100s\")", CR_WARM_PATH_MAX, value ? value : "");
				goto fail;
			}
			continue;
		}
		if(strcmp(key, "unknown_users") == 0){
			if(value != NULL && strcmp(value, "defer") == 0){
				o->defer_unknown_users = true;
			}else if(value != NULL && strcmp(value, "refuse") == 0){
				o->defer_unknown_users = false;
			}else{
				snprintf(err, errlen, "plugin_opt_unknown_users must be defer or refuse (got \"%.100s\")",
						value ? value : "");
				goto fail;
			}
			continue;
		}
		for(j = 0; j < INT_OPTION_COUNT; j++){
			if(strcmp(key, INT_OPTIONS[j].name) == 0){
				break;
			}
		}
		if(j == INT_OPTION_COUNT){
			snprintf(err, errlen, "unknown option plugin_opt_%s", key);
			goto fail;
		}
		long v;
		if(parse_long(value, &v) != 0 || v < INT_OPTIONS[j].min || v > INT_OPTIONS[j].max){
			snprintf(err, errlen, "plugin_opt_%s must be a whole number from %ld to %ld (got \"%s\")", key,
					INT_OPTIONS[j].min, INT_OPTIONS[j].max, value ? value : "");
			goto fail;
		}
		*(long *)((char *)o + INT_OPTIONS[j].offset) = v;
	}
	if(o->url == NULL){
		snprintf(err, errlen, "plugin_opt_url is required (the base URL of cregistry's broker listener)");
		goto fail;
	}
	return 0;
fail:
	cr_options_free(o);
	return -1;
}

void cr_options_free(struct cr_options *o)
{
	free(o->url);
	o->url = NULL;
	free(o->warm_file);
	o->warm_file = NULL;
}
