/* plugin_opt_* values, checked once at load: a bad value refuses to load. */
#ifndef CR_OPTIONS_H
#define CR_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>

#define CR_URL_MAX 1024
#define CR_WARM_PATH_MAX 4000

struct mosquitto_opt;

struct cr_options {
	char *url;              /* base URL of cregistry's broker listener, no trailing '/' */
	long timeout_ms;        /* one whole HTTP check (connect + answer) */
	long cache_seconds;     /* CONNECT grants and ACL allows */
	long deny_cache_seconds; /* ACL denials (refused CONNECTs are never cached) */
	long cache_bytes;       /* the whole cache: entries, user records, buckets */
	long cache_size;        /* entries of both kinds together; 0: as many as cache_bytes holds */
	long cache_user_percent; /* the share of the cache's entries one user may hold */
	long feed_interval_ms;
	long fault_backoff_ms;  /* after a check got no answer, fail misses at once for this long */
	long stats_interval;    /* seconds between $SYS/broker/cregistry/... publishes; 0: never */
	long delayed_auth;      /* 1: delayed basic auth where the broker has it (2.1); 0: synchronous */
	long refusal_cache_seconds; /* refused CONNECTs of known users (refusals.h); 0: never remembered */
	bool defer_unknown_users; /* plugin_opt_unknown_users defer: users cregistry lacks go to the broker's other auth */
	long delayed_max;       /* delayed CONNECT checks in flight at most */
	char *warm_file;        /* absolute path of the warm file (warm.h); NULL: none, every start is cold */
	long warm_save_interval; /* seconds between writes of the warm file while grants change; 0: at stop only */
};

/* 0, or -1 with a one-line reason in err. On success free with cr_options_free. */
int cr_options_parse(struct cr_options *o, const struct mosquitto_opt *opts, int count, char *err, size_t errlen);
void cr_options_free(struct cr_options *o);

#endif
