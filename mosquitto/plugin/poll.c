/* MOSQ_EVT_TICK: polls the change feed without blocking the broker (a multi
 * handle advanced on every tick, never waited on) and publishes the counters. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>

#include "siphash.h"
#include "state.h"

static void feed_state(struct cr_plugin *p, int ok, const char *why)
{
	if(p->feed_state == ok){
		return;
	}
	p->feed_state = ok;
	if(ok){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "cregistry_auth: change feed ok");
	}else{
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"cregistry_auth: change feed failing (%s): keeping the cache until entries expire", why);
	}
}

static uint64_t wearer_hash(const struct cr_plugin *p, const char *client_id, const char *user)
{
	struct cr_sip s;

	cr_sip_init(&s, p->cache.hash_key);
	cr_sip_update(&s, client_id, strlen(client_id) + 1); /* with its NUL: no two pairs feed the same bytes */
	if(user != NULL){
		cr_sip_update(&s, user, strlen(user));
	}
	return cr_sip_final(&s) | 1; /* never 0, the empty slot */
}

static struct cr_wearer *wearer_slot(struct cr_plugin *p, const char *client_id)
{
	return &p->wearers[wearer_hash(p, client_id, NULL) % CR_WEARER_SLOTS];
}

void cr_wearer_granted(struct cr_plugin *p, const char *client_id, const char *user)
{
	wearer_slot(p, client_id)->pair = wearer_hash(p, client_id, user);
}

/* Whether the last CONNECT granted with client_id was user's; false when not known. */
static bool worn_by(struct cr_plugin *p, const char *client_id, const char *user)
{
	return wearer_slot(p, client_id)->pair == wearer_hash(p, client_id, user);
}

void cr_apply_feed_answer(struct cr_plugin *p, const struct cr_feed_answer *answer)
{
	/* A reset's changes are those recorded after Redis lost the data the old
	 * position named: dropped anyway with the whole cache, but their kicks
	 * must still happen (docs/change-feed.md, "Positions and resets"). */
	(void)cr_warm_apply(&p->warm, answer); /* the warm file's grants go as the cache's do */
	if(answer->reset){
		cr_cache_drop_all(&p->cache);
		cr_refusals_drop_all(&p->refusals);
		if(p->position[0] != '\0'){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"cregistry_auth: change feed reset (changes may have been missed): dropped the whole cache,"
					" %zu change(s) since applied", answer->count);
		}
	}
	for(size_t i = 0; i < answer->count; i++){
		const struct cr_change *c = &answer->changes[i];
		if(c->type == CR_CHANGE_ALL){
			cr_cache_drop_all(&p->cache);
			cr_refusals_drop_all(&p->refusals);
		}else if(c->type == CR_CHANGE_USER){
			cr_cache_drop_user(&p->cache, c->user);
			cr_refusals_drop_user(&p->refusals, c->user);
			if(c->kick){
				mosquitto_kick_client_by_username(c->user, false);
				p->counters.kicks++;
			}
			if(c->client_id != NULL){
				/* Owned by c->user now: no grant of another user may stay cached
				 * for it, and no client of another user stays connected with it. */
				cr_cache_drop_all(&p->cache);
				/* Unless the new owner itself wears it now (it connected with it
				 * just before the entry came): not known means someone else. */
				if(!worn_by(p, c->client_id, c->user)){
					mosquitto_kick_client_by_clientid(c->client_id, false);
					p->counters.kicks++;
				}
			}
		}
	}
	if(strcmp(p->position, answer->position) != 0){
		memcpy(p->position, answer->position, sizeof(p->position));
		if(cr_http_set_position(&p->http, p->position) != 0){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"cregistry_auth: out of memory; checks go without the feed position");
		}
	}
}

static void feed_done(struct cr_plugin *p, long status, int64_t now)
{
	struct cr_feed_answer answer;
	char why[CURL_ERROR_SIZE + 32];

	if(status != 0){
		p->fault_until_ms = 0; /* cregistry answers again: checks may ask it */
	}
	if(status != 200){
		p->counters.feed_errors++;
		if(status == 0){
			snprintf(why, sizeof(why), "%s", p->http.feed_error[0] ? p->http.feed_error : "no answer");
		}else{
			snprintf(why, sizeof(why), "HTTP %ld", status);
		}
		feed_state(p, 0, why);
		return;
	}
	if(cr_feed_parse(p->http.feed_body.data, p->http.feed_body.len, &answer, why, sizeof(why)) != 0){
		p->counters.feed_errors++;
		feed_state(p, 0, why);
		return;
	}
	cr_apply_feed_answer(p, &answer);
	cr_feed_answer_free(&answer);
	p->last_feed_ok_ms = now;
	feed_state(p, 1, "");
}

static void feed_start(struct cr_plugin *p)
{
	char url[2048];
	char *escaped = curl_easy_escape(p->http.feed, p->position, 0);

	if(escaped == NULL){
		return;
	}
	snprintf(url, sizeof(url), "%s%s", p->url_changes, escaped);
	curl_free(escaped);
	p->counters.feed_polls++;
	if(cr_http_feed_start(&p->http, url) != 0){
		p->counters.feed_errors++;
		feed_state(p, 0, "could not start a request");
	}
}

static void publish_counter(const char *name, uint64_t value)
{
	char topic[96];
	char payload[32];
	int len;

	snprintf(topic, sizeof(topic), "$SYS/broker/cregistry/%s", name);
	len = snprintf(payload, sizeof(payload), "%" PRIu64, value);
	mosquitto_broker_publish_copy(NULL, topic, len, payload, 0, true, NULL);
}

static void publish_stats(struct cr_plugin *p, int64_t now)
{
	int64_t since = p->last_feed_ok_ms ? p->last_feed_ok_ms : p->loaded_ms;

	publish_counter("cache/hits", p->counters.hits);
	publish_counter("cache/misses", p->counters.misses);
	publish_counter("cache/entries", p->cache.count);
	publish_counter("cache/evictions", p->cache.evictions);
	publish_counter("http/errors", p->counters.http_errors);
	publish_counter("http/fast_fails", p->counters.fast_fails);
	publish_counter("kicks", p->counters.kicks);
	publish_counter("feed/polls", p->counters.feed_polls);
	publish_counter("feed/errors", p->counters.feed_errors);
	publish_counter("feed/lag_ms", (uint64_t)(now - since));
	publish_counter("ticks", p->counters.ticks);
	publish_counter("delayed", p->counters.delayed);
	publish_counter("refusals/hits", p->counters.refusal_hits);
	if(p->warm.buckets != NULL){
		publish_counter("warm/loaded", p->warm.loaded);
		publish_counter("warm/hits", p->warm.hits);
		publish_counter("warm/entries", p->warm.count);
		publish_counter("warm/saves", p->warm.saves);
	}
}

/* How soon the plugin needs its next tick: soon while a delayed CONNECT check
 * or the feed's transfer runs (curl is advanced only on ticks), else when the
 * next poll is due. A device waits for its check's answer, the feed only
 * delays a change by up to a busy tick. */
long cr_next_tick_ms(const struct cr_plugin *p, int64_t now)
{
	int64_t wait;

	if(p->delayed.in_flight > 0){
		return CR_TICK_DELAYED_MS;
	}
	if(p->http.feed_running){
		return CR_TICK_BUSY_MS;
	}
	wait = p->next_feed_ms - now;
	return wait < 1 ? 1 : (wait > CR_TICK_IDLE_MS ? CR_TICK_IDLE_MS : (long)wait);
}

/* Mosquitto 2.0 ticks every plugin on every pass of its loop (at least every
 * 100 ms) and ignores the next-tick fields. Mosquitto 2.1 (src/plugin_tick.c)
 * calls a tick callback only on a pass that comes after the time the previous
 * tick named (now + next_s s + next_ms ms), waits at most next_s * 1000 +
 * next_ms ms for it, and forgets that bound on any earlier pass (a client's
 * packet, another timer): naming "in 100 ms" would leave an idle broker without
 * ticks until its next other timer (up to sys_interval, or a day). So the tick
 * names a time already past on every later pass and bounds the wait to `ms`:
 * next_s = -2 and next_ms = 2000 + ms add up to `ms` for the wait, while 2.1.2
 * carries the nanoseconds over into the seconds once only, leaving the next
 * tick at (now - 1 s, now_ns + 1 s + ms) -- due on the very next pass. A broker
 * that normalised fully would tick after `ms` as named, which is as good until
 * an earlier pass comes. 2.0's header calls the field next_ns (ignored there). */
void cr_tick_ask_next(struct mosquitto_evt_tick *tick, long ms)
{
	tick->next_s = -2;
#if LIBMOSQUITTO_MINOR >= 1
	tick->next_ms = 2000 + ms;
#else
	tick->next_ns = 2000 + ms;
#endif
}

int cr_on_tick(int event, void *event_data, void *userdata)
{
	struct cr_plugin *p = userdata;
	int64_t now = cr_now_ms();
	long status = 0;

	(void)event;
	if(p->http.feed_running){
		if(cr_http_feed_poll(&p->http, &status)){
			feed_done(p, status, now);
		}
	}else if(now >= p->next_feed_ms){
		p->next_feed_ms = now + p->opt.feed_interval_ms;
		feed_start(p);
	}
	if(p->opt.stats_interval > 0 && now >= p->next_stats_ms){
		p->next_stats_ms = now + p->opt.stats_interval * 1000;
		publish_stats(p, now);
	}
	cr_delayed_poll(p);
	cr_warm_tick(p, now);
	p->counters.ticks++;
	cr_tick_ask_next(event_data, cr_next_tick_ms(p, cr_now_ms()));
	return MOSQ_ERR_SUCCESS;
}
