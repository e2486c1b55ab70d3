#include <stdlib.h>
#include <string.h>

#include "feed.h"
#include "http.h"

#define CHECK_BODY_MAX 65536u
#define POSITION_HEADER "X-Cregistry-Position: "

static size_t buf_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct cr_buf *b = userdata;
	size_t n = size * nmemb;

	if(n > b->max - b->len){
		return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
	}
	if(b->len + n + 1 > b->cap){
		size_t cap = b->cap ? b->cap : 1024;
		char *data;
		while(cap < b->len + n + 1){
			cap *= 2;
		}
		data = realloc(b->data, cap);
		if(data == NULL){
			return 0;
		}
		b->data = data;
		b->cap = cap;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

int cr_http_easy_options(CURL *c, struct cr_buf *body, char *errbuf, long timeout_ms)
{
	int rc = 0;

	rc |= (int)curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	rc |= (int)curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	rc |= (int)curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	rc |= (int)curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	rc |= (int)curl_easy_setopt(c, CURLOPT_PROXY, "");   /* never an http_proxy from the environment */
	rc |= (int)curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	rc |= (int)curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	rc |= (int)curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	rc |= (int)curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
	rc |= (int)curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
	rc |= (int)curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	return rc == 0 ? 0 : -1;
}

int cr_http_init(struct cr_http *h, long timeout_ms)
{
	memset(h, 0, sizeof(*h));
	h->check_body.max = CHECK_BODY_MAX;
	h->feed_body.max = CR_FEED_BODY_MAX;
	h->check = curl_easy_init();
	h->feed = curl_easy_init();
	h->multi = curl_multi_init();
	h->json_headers = curl_slist_append(NULL, "Content-Type: application/json");
	if(h->check == NULL || h->feed == NULL || h->multi == NULL || h->json_headers == NULL){
		goto fail;
	}
	if(cr_http_easy_options(h->check, &h->check_body, h->check_error, timeout_ms) != 0
			|| cr_http_easy_options(h->feed, &h->feed_body, h->feed_error, timeout_ms) != 0){
		goto fail;
	}
	if(curl_easy_setopt(h->check, CURLOPT_HTTPHEADER, h->json_headers) != CURLE_OK){
		goto fail;
	}
	return 0;
fail:
	cr_http_cleanup(h);
	return -1;
}

void cr_http_cleanup(struct cr_http *h)
{
	if(h->multi && h->feed && h->feed_running){
		curl_multi_remove_handle(h->multi, h->feed);
	}
	if(h->multi){
		curl_multi_cleanup(h->multi);
	}
	if(h->feed){
		curl_easy_cleanup(h->feed);
	}
	if(h->check){
		curl_easy_cleanup(h->check);
	}
	curl_slist_free_all(h->json_headers);
	curl_slist_free_all(h->check_headers);
	free(h->check_body.data);
	free(h->feed_body.data);
	memset(h, 0, sizeof(*h));
}

int cr_http_set_position(struct cr_http *h, const char *position)
{
	char line[sizeof(POSITION_HEADER) + CR_POSITION_MAX];
	struct curl_slist *headers = NULL;
	int rc = 0;

	if(position[0] != '\0' && strlen(position) <= CR_POSITION_MAX){
		snprintf(line, sizeof(line), "%s%s", POSITION_HEADER, position);
		headers = curl_slist_append(NULL, "Content-Type: application/json");
		if(headers != NULL){
			struct curl_slist *more = curl_slist_append(headers, line);
			if(more == NULL){
				curl_slist_free_all(headers);
				headers = NULL;
			}
		}
		rc = headers != NULL ? 0 : -1;
	}
	/* curl keeps a pointer to the list: switch before freeing the old one. */
	if(curl_easy_setopt(h->check, CURLOPT_HTTPHEADER, headers != NULL ? headers : h->json_headers) != CURLE_OK){
		curl_slist_free_all(headers);
		return -1;
	}
	curl_slist_free_all(h->check_headers);
	h->check_headers = headers;
	return rc;
}

long cr_http_post_json(struct cr_http *h, const char *url, const char *json)
{
	long status = 0;

	h->check_body.len = 0;
	h->check_error[0] = '\0';
	if(curl_easy_setopt(h->check, CURLOPT_URL, url) != CURLE_OK
			|| curl_easy_setopt(h->check, CURLOPT_POSTFIELDS, json) != CURLE_OK){
		return 0;
	}
	if(curl_easy_perform(h->check) != CURLE_OK){
		return 0;
	}
	if(curl_easy_getinfo(h->check, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK){
		return 0;
	}
	return status;
}

int cr_http_feed_start(struct cr_http *h, const char *url)
{
	int running = 0;

	if(h->feed_running){
		return 0;
	}
	h->feed_body.len = 0;
	h->feed_error[0] = '\0';
	if(curl_easy_setopt(h->feed, CURLOPT_URL, url) != CURLE_OK
			|| curl_easy_setopt(h->feed, CURLOPT_HTTPGET, 1L) != CURLE_OK){
		return -1;
	}
	if(curl_multi_add_handle(h->multi, h->feed) != CURLM_OK){
		return -1;
	}
	h->feed_running = true;
	curl_multi_perform(h->multi, &running);
	return 0;
}

int cr_http_feed_poll(struct cr_http *h, long *status)
{
	int running = 0, queued = 0;
	CURLMsg *msg;
	int done = 0;

	if(!h->feed_running){
		return 0;
	}
	curl_multi_perform(h->multi, &running);
	while((msg = curl_multi_info_read(h->multi, &queued)) != NULL){
		if(msg->msg != CURLMSG_DONE || msg->easy_handle != h->feed){
			continue;
		}
		*status = 0;
		if(msg->data.result == CURLE_OK){
			curl_easy_getinfo(h->feed, CURLINFO_RESPONSE_CODE, status);
		}else if(h->feed_error[0] == '\0'){
			strncpy(h->feed_error, curl_easy_strerror(msg->data.result), sizeof(h->feed_error) - 1);
		}
		done = 1;
	}
	if(done){
		curl_multi_remove_handle(h->multi, h->feed);
		h->feed_running = false;
	}
	return done;
}
