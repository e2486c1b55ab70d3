/* Mosquitto's plugin API under the names of the headers present: 2.1 names
 * them <mosquitto/broker.h> and <mosquitto/broker_plugin.h> and keeps the 2.0
 * names (all Debian 12's mosquitto-dev has) as shims that #warning, which
 * -Werror would stop. What differs between versions at run time is found at
 * load (plugin.c), not here. */
#ifndef CR_BROKER_API_H
#define CR_BROKER_API_H

#if defined(__has_include) && __has_include(<mosquitto/broker.h>)
#include <mosquitto/broker.h>
#include <mosquitto/broker_plugin.h>
#else
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#endif

#endif
