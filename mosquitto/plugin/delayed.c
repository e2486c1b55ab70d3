#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <mosquitto.h>

#include "state.h"

#define POSITION_HEADER "X-Cregistry-Position: "

int cr_delayed_init(struct cr_delayed *d, cr_complete_fn complete)
{
	memset(d, 0, sizeof(*d));
	if(complete == NULL){
		return 0;
	}
	d->multi = curl_multi_init();
	if(d->multi == NULL){
		return -1;
	}
	d->complete = complete;
	return 0;
}

static void slot_free(struct cr_delayed *d, struct cr_pending *s)
{
	if(s->easy){
		curl_multi_remove_handle(d->multi, s->easy);
		curl_easy_cleanup(s->easy);
		d->in_flight--;
	}
	curl_slist_free_all(s->headers);
	if(s->json){
		OPENSSL_cleanse(s->json, strlen(s->json));
		free(s->json);
	}
	free(s->client_id);
	free(s->user);
	free(s->body.data);
	OPENSSL_cleanse(s->digest, sizeof(s->digest));
	memset(s, 0, sizeof(*s));
}

void cr_delayed_cleanup(struct cr_delayed *d)
{
	/* At the broker's shutdown: its clients go with it, so none is answered. */
	for(size_t i = 0; i < CR_DELAYED_MAX; i++){
		slot_free(d, &d->slots[i]);
	}
	if(d->multi){
		curl_multi_cleanup(d->multi);
	}
	memset(d, 0, sizeof(*d));
}

/* The JSON content type, and the feed position this plugin has applied (the
 * service may answer from caches at least that new): a list of its own, as the
 * shared one is replaced when the position moves while checks are in flight. */
static struct curl_slist *check_headers(const char *position)
{
	char line[sizeof(POSITION_HEADER) + CR_POSITION_MAX];
	struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
	struct curl_slist *more;

	if(headers == NULL || position[0] == '\0' || strlen(position) > CR_POSITION_MAX){
		return headers;
	}
	snprintf(line, sizeof(line), "%s%s", POSITION_HEADER, position);
	more = curl_slist_append(headers, line);
	if(more == NULL){
		curl_slist_free_all(headers);
		return NULL;
	}
	return more;
}

int cr_delayed_start(struct cr_plugin *p, const char *url, char *json, const char *client_id, const char *user,
		const unsigned char digest[CR_DIGEST_LEN], const char *cert_fingerprint)
{
	struct cr_delayed *d = &p->delayed;
	struct cr_pending *s = NULL;
	int running = 0;

	for(size_t i = 0; i < CR_DELAYED_MAX && s == NULL; i++){
		if(d->slots[i].easy == NULL){
			s = &d->slots[i];
		}
	}
	if(s == NULL){
		OPENSSL_cleanse(json, strlen(json));
		free(json);
		return -1;
	}
	s->json = json;
	s->body.max = 65536;
	s->client_id = strdup(client_id);
	s->user = strdup(user);
	s->headers = check_headers(p->position);
	s->easy = curl_easy_init();
	memcpy(s->digest, digest, CR_DIGEST_LEN);
	snprintf(s->cert_fingerprint, sizeof(s->cert_fingerprint), "%s", cert_fingerprint);
	if(s->easy == NULL || s->client_id == NULL || s->user == NULL || s->headers == NULL
			|| cr_http_easy_options(s->easy, &s->body, s->error, p->opt.timeout_ms) != 0
			|| curl_easy_setopt(s->easy, CURLOPT_URL, url) != CURLE_OK
			|| curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->headers) != CURLE_OK
			|| curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->json) != CURLE_OK
			|| curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s) != CURLE_OK
			|| curl_multi_add_handle(d->multi, s->easy) != CURLM_OK){
		if(s->easy){
			curl_easy_cleanup(s->easy);
			s->easy = NULL;
		}
		slot_free(d, s);
		return -1;
	}
	d->in_flight++;
	curl_multi_perform(d->multi, &running);
	return 0;
}

static void finish(struct cr_plugin *p, struct cr_pending *s, CURLcode result)
{
	long status = 0;
	enum cr_verdict v;
	struct cr_key key;

	if(result == CURLE_OK){
		curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
	}else if(s->error[0] == '\0'){
		snprintf(s->error, sizeof(s->error), "%s", curl_easy_strerror(result));
	}
	v = cr_judge(p, status, &s->body, s->error);
	if(v == CR_ALLOW && p->opt.cache_seconds > 0){
		memset(&key, 0, sizeof(key));
		key.user = s->user;
		key.user_len = strlen(s->user);
		key.kind = CR_KIND_CONNECT;
		key.part[0] = s->digest;
		key.part_len[0] = sizeof(s->digest);
		key.part[1] = s->cert_fingerprint; /* as cr_on_basic_auth keys a grant: per certificate */
		key.part_len[1] = strlen(s->cert_fingerprint);
		(void)cr_cache_put(&p->cache, &key, MOSQ_ERR_SUCCESS, cr_now_ms() + p->opt.cache_seconds * 1000);
	}
	/* 2.1.2 answers every failed delayed check "not authorised", a fault too:
	 * the README ("Reason codes") says how the plugin keeps that rare. */
	if(v == CR_ALLOW){
		cr_wearer_granted(p, s->client_id, s->user);
	}
	p->delayed.complete(s->client_id, v == CR_ALLOW ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH);
}

void cr_delayed_poll(struct cr_plugin *p)
{
	struct cr_delayed *d = &p->delayed;
	int running = 0, queued = 0;
	CURLMsg *msg;

	if(d->in_flight == 0){
		return;
	}
	curl_multi_perform(d->multi, &running);
	while((msg = curl_multi_info_read(d->multi, &queued)) != NULL){
		struct cr_pending *s = NULL;
		if(msg->msg != CURLMSG_DONE){
			continue;
		}
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
		if(s == NULL){
			continue;
		}
		finish(p, s, msg->data.result);
		slot_free(d, s);
	}
}
