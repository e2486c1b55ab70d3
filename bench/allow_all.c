/*
 * allow_all: the benchmark's floor, a Mosquitto plugin that allows every
 * CONNECT and every ACL check without looking at either.
 *
 * It registers the same two events that cregistry's plugin answers
 * (MOSQ_EVT_BASIC_AUTH, MOSQ_EVT_ACL_CHECK), so the broker does the same
 * plugin dispatch per message: what a run with it costs above a broker
 * without auth is the price of having a plugin at all, and what cregistry's
 * plugin costs above it is the price of its checks. Built by the Makefile into
 * bench/build/ (never committed); never load it in front of real devices.
 */
#include <stddef.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define ALLOW_EXPORT __attribute__((visibility("default")))

static mosquitto_plugin_id_t *plugin_id;

static int allow(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	return MOSQ_ERR_SUCCESS;
}

ALLOW_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

ALLOW_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	plugin_id = identifier;
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, allow, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		return rc;
	}
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, allow, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, allow, NULL);
	}
	return rc;
}

ALLOW_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, allow, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, allow, NULL);
	return MOSQ_ERR_SUCCESS;
}
