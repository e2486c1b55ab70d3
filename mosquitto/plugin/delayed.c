#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <mosquitto.h>

#include "certificate.h"
#include "state.h"

#define POSITION_HEADER "X-Cregistry-Position: "

int cr_delayed_init(struct cr_delayed *d, cr_complete_fn complete, cr_apply_fn apply_on_all_clients, size_t max)
{
	memset(d, 0, sizeof(*d));
	if(complete == NULL){
		return 0;
	}
	d->slots = calloc(max, sizeof(*d->slots));
	d->multi = curl_multi_init();
	if(d->slots == NULL || d->multi == NULL){
		free(d->slots);
		if(d->multi){
			curl_multi_cleanup(d->multi);
		}
		memset(d, 0, sizeof(*d));
		return -1;
	}
	d->slot_count = max;
	d->complete = complete;
	d->apply_on_all_clients = apply_on_all_clients;
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
	for(size_t i = 0; i < d->slot_count; i++){
		slot_free(d, &d->slots[i]);
	}
	if(d->multi){
		curl_multi_cleanup(d->multi);
	}
	free(d->slots);
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

	for(size_t i = 0; i < d->slot_count && s == NULL; i++){
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
	s->refusal_epoch = p->refusals.epoch;
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

struct user_search {
	const char *user;
	bool found;
};

static int find_user(const struct mosquitto *client, void *context)
{
	struct user_search *search = context;
	const char *name = mosquitto_client_username(client);

	if(name != NULL && strcmp(name, search->user) == 0){
		search->found = true;
		return MOSQ_ERR_NOT_FOUND; /* anything but success ends the walk */
	}
	return MOSQ_ERR_SUCCESS;
}

/* 2.1.2's mosquitto_complete_basic_auth sends "not authorised" for every
 * result but success (src/plugin_public.c), a fault too, which a device takes
 * for refused credentials (SPEC §11). So a delayed CONNECT whose check failed
 * is closed without a CONNACK instead, by kicking its username -- only when no
 * client of that username has a session (a kick would close those too, while
 * the cache keeps them working). Every delayed CONNECT of that username is
 * closed by the kick: none of them may be completed. */
static void answer_fault(struct cr_delayed *d, struct cr_pending *s)
{
	struct user_search search = {s->user, false};

	if(d->apply_on_all_clients == NULL || (d->apply_on_all_clients(find_user, &search), search.found)){
		d->complete(s->client_id, MOSQ_ERR_AUTH);
		return;
	}
	mosquitto_kick_client_by_username(s->user, false);
	for(size_t i = 0; i < d->slot_count; i++){
		if(d->slots[i].easy != NULL && strcmp(d->slots[i].user, s->user) == 0){
			d->slots[i].gone = true;
		}
	}
}

void cr_delayed_forget(struct cr_delayed *d, const char *client_id)
{
	for(size_t i = 0; i < d->slot_count && d->in_flight > 0; i++){
		if(d->slots[i].easy != NULL && strcmp(d->slots[i].client_id, client_id) == 0){
			slot_free(d, &d->slots[i]);
		}
	}
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
		cr_connect_key(&key, s->user, s->digest, s->cert_fingerprint); /* as cr_on_basic_auth keys it */
		(void)cr_cache_put(&p->cache, &key, MOSQ_ERR_SUCCESS, cr_now_ms() + p->opt.cache_seconds * 1000);
	}
	if(v == CR_ALLOW){
		cr_wearer_granted(p, s->client_id, s->user);
	}
	if(v == CR_DENY){
		cr_remember_refusal(p, s->user, s->digest, s->cert_fingerprint, s->refusal_epoch);
	}
	if(v == CR_FAULT){
		answer_fault(&p->delayed, s);
	}else{
		/* CR_UNKNOWN is a refusal here: with unknown_users defer nothing is delayed */
		p->delayed.complete(s->client_id, v == CR_ALLOW ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH);
	}
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
		if(!s->gone){
			finish(p, s, msg->data.result);
		}
		slot_free(d, s);
	}
}
