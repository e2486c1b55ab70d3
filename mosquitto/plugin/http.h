/* HTTP with libcurl: one reused easy handle for the (blocking, bounded) checks,
 * and a second one driven by a multi handle for the feed, so that polling the
 * feed never blocks the broker's loop. */
#ifndef CR_HTTP_H
#define CR_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>

struct cr_buf {
	char *data;
	size_t len;
	size_t cap;
	size_t max; /* larger answers fail the transfer */
};

struct cr_http {
	CURL *check;
	CURL *feed;
	CURLM *multi;
	struct curl_slist *json_headers;
	struct curl_slist *check_headers; /* json_headers plus the feed position; NULL before the first */
	struct cr_buf check_body;
	struct cr_buf feed_body;
	bool feed_running;
	char check_error[CURL_ERROR_SIZE];
	char feed_error[CURL_ERROR_SIZE];
};

int cr_http_init(struct cr_http *h, long timeout_ms);

/* The options every handle has: timeouts, no proxy, no redirects, http(s)
 * only, the answer into `body`, errors into `errbuf`; 0 or -1. */
int cr_http_easy_options(CURL *c, struct cr_buf *body, char *errbuf, long timeout_ms);
void cr_http_cleanup(struct cr_http *h);

/* The HTTP status of POST url with a JSON body, or 0 when no answer came
 * (no connection, timeout, too large); then h->check_error says why. */
long cr_http_post_json(struct cr_http *h, const char *url, const char *json);

/* Sends `position` (the feed position this plugin has applied, "" for none)
 * with every later check, so that the service may answer from caches that
 * are at least that new; 0, or -1 when out of memory (then checks go without
 * it, which only costs the service a Redis round trip). */
int cr_http_set_position(struct cr_http *h, const char *position);

/* Starts GET url on the feed handle; 0, or -1 (h->feed_error says why). */
int cr_http_feed_start(struct cr_http *h, const char *url);

/* Advances the feed transfer without blocking: 0 while it runs (or none runs),
 * 1 when it finished: *status is the HTTP status (0: no answer), the body is in
 * h->feed_body. */
int cr_http_feed_poll(struct cr_http *h, long *status);

#endif
