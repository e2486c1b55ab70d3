# cregistry's own Mosquitto plugin (mosquitto/plugin/), included by the top-level Makefile.
#
#   make plugin        mosquitto/cregistry_auth.so
#   make plugin-test   the C unit tests, plain and under AddressSanitizer + UBSan
#   make plugin-asan   mosquitto/cregistry_auth-asan.so (ASan + UBSan) for the broker tier
#
# A mosquitto loading the ASan build must have the ASan runtime preloaded
# (mosquitto itself is not instrumented):
#   LD_PRELOAD=$$(gcc -print-file-name=libasan.so) \
#   ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
#   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
#   mosquitto -c mosquitto.conf        (with: plugin .../cregistry_auth-asan.so)
# See mosquitto/plugin/README.md for what that was checked with.

PLUGIN_DIR := mosquitto/plugin
PLUGIN_BUILD := $(PLUGIN_DIR)/build
PLUGIN_SO := mosquitto/cregistry_auth.so
PLUGIN_ASAN_SO := mosquitto/cregistry_auth-asan.so
PLUGIN_SRCS := $(addprefix $(PLUGIN_DIR)/,plugin.c checks.c poll.c cache.c siphash.c digest.c options.c feed.c http.c answer.c delayed.c \
	certificate.c refusals.c warm.c)
PLUGIN_HDRS := $(wildcard $(PLUGIN_DIR)/*.h)
# the pieces the C unit tests link (the test stubs the few broker functions poll.c calls)
PLUGIN_TEST_SRCS := $(PLUGIN_DIR)/tests/test_main.c \
	$(addprefix $(PLUGIN_DIR)/,poll.c http.c cache.c siphash.c digest.c options.c feed.c answer.c delayed.c \
		certificate.c refusals.c warm.c)
PLUGIN_CC ?= gcc
PLUGIN_CFLAGS := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -Werror -O2 -g -fPIC \
	-fvisibility=hidden
PLUGIN_LIBS := -lcurl -lcrypto -lcjson
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1

.PHONY: plugin plugin-deps plugin-test plugin-asan

# the Debian packages come from the top-level Makefile's one list (system-packages.txt)
plugin-deps: system-deps

plugin: plugin-deps $(PLUGIN_SO)

$(PLUGIN_SO): $(PLUGIN_SRCS) $(PLUGIN_HDRS)
	$(PLUGIN_CC) $(PLUGIN_CFLAGS) -shared -o $@ $(PLUGIN_SRCS) $(PLUGIN_LIBS)

plugin-asan: plugin-deps $(PLUGIN_ASAN_SO)

$(PLUGIN_ASAN_SO): $(PLUGIN_SRCS) $(PLUGIN_HDRS)
	$(PLUGIN_CC) $(PLUGIN_CFLAGS) $(SAN_FLAGS) -shared -Wl,-z,nodelete -o $@ $(PLUGIN_SRCS) $(PLUGIN_LIBS)

$(PLUGIN_BUILD)/test_plain: $(PLUGIN_TEST_SRCS) $(PLUGIN_HDRS)
	@mkdir -p $(PLUGIN_BUILD)
	$(PLUGIN_CC) $(PLUGIN_CFLAGS) -I$(PLUGIN_DIR) -o $@ $(PLUGIN_TEST_SRCS) $(PLUGIN_LIBS)

$(PLUGIN_BUILD)/test_asan: $(PLUGIN_TEST_SRCS) $(PLUGIN_HDRS)
	@mkdir -p $(PLUGIN_BUILD)
	$(PLUGIN_CC) $(PLUGIN_CFLAGS) $(SAN_FLAGS) -I$(PLUGIN_DIR) -o $@ $(PLUGIN_TEST_SRCS) $(PLUGIN_LIBS)

## plugin-test: the plugin's C unit tests, plain and under ASan + UBSan (with leak checks)
plugin-test: plugin-deps $(PLUGIN_SO) $(PLUGIN_BUILD)/test_plain $(PLUGIN_BUILD)/test_asan
	$(PLUGIN_BUILD)/test_plain
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(PLUGIN_BUILD)/test_asan
