# `make run` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the test tiers need; installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# One list of Debian packages for every tier, shared with .ci/run
APT_PACKAGES := $(shell sed 's/\#.*//' system-packages.txt)
GO_AUTH_SO := mosquitto/go-auth.so
# The versions the tests ran with (make lock); pyproject.toml has lower bounds only.
CONSTRAINTS := $(if $(wildcard constraints.txt),-c constraints.txt)

.PHONY: install run test test-unit test-integration test-broker-asan test-broker-2.1 mosquitto-2.1 test-fuzz test-failover test-browser lint lock system-deps go-auth try-go-auth bench bench-quick clean

$(STAMP): pyproject.toml $(wildcard constraints.txt)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: start cregistry (embedded in-memory Redis unless CREGISTRY_REDIS_URL is set)
run: $(STAMP)
	$(BIN)/cregistry serve

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

## go-auth: build the pinned go-auth plugin into mosquitto/go-auth.so (reuses a build)
go-auth: system-deps
	mosquitto/build-go-auth.sh $(GO_AUTH_SO)

# go-auth's broker tests need its plugin; where it cannot be built they skip
# (and fail under CREGISTRY_REQUIRE_GO_AUTH=1), so say loudly why.
try-go-auth: system-deps
	@mosquitto/build-go-auth.sh $(GO_AUTH_SO) || \
		echo "WARNING: go-auth could not be built (error above): the go-auth broker tests will not run"

## test: both tiers (unit on fakeredis, integration on real processes, mosquitto with cregistry's plugin),
## then the broker tier again on Mosquitto 2.1.2 (test-broker-2.1)
test: $(STAMP) system-deps plugin plugin-test try-go-auth
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-broker-2.1

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP) system-deps plugin
	$(BIN)/python -m pytest tests/integration

## test-broker-asan: the broker tier once more with the plugin's ASan + UBSan build, on 2.0.11 and on 2.1.2; any report fails it
test-broker-asan: $(STAMP) system-deps plugin-asan
	CREGISTRY_PLUGIN_SO=$(CURDIR)/mosquitto/cregistry_auth-asan.so $(BIN)/python -m pytest -m broker tests/integration
	$(call on_mosquitto_21,CREGISTRY_PLUGIN_SO=$(CURDIR)/mosquitto/cregistry_auth-asan.so $(BIN)/python -m pytest -m broker tests/integration)

# Mosquitto 2.1.2, built from ../shared/brokers/ once per machine into
# ${XDG_CACHE_HOME:-~/.cache}/cregistry/ (never into the repository).
MOSQUITTO_21_BUILD := mosquitto/build-mosquitto-2.1.sh
## mosquitto-2.1: build (or find) Mosquitto 2.1.2 and print its path
mosquitto-2.1:
	@$(MOSQUITTO_21_BUILD)

# $(call on_mosquitto_21,COMMAND): COMMAND with CREGISTRY_MOSQUITTO naming the
# 2.1.2 broker; where it cannot be had (no ../shared in a fresh clone), with
# CREGISTRY_MOSQUITTO_UNAVAILABLE giving the reason, so that every broker test
# is reported as skipped with it (and fails under CI / CREGISTRY_REQUIRE_BROKER=1).
define on_mosquitto_21
	@why=$$(mktemp); \
	if broker=$$($(MOSQUITTO_21_BUILD) 2>$$why); then \
		rm -f $$why; echo "== the broker tier on Mosquitto 2.1.2 ($$broker) =="; \
		CREGISTRY_MOSQUITTO=$$broker $(1); \
	else \
		reason="Mosquitto 2.1.2 is not available: $$(tail -1 $$why)"; rm -f $$why; \
		echo "WARNING: $$reason"; \
		CREGISTRY_MOSQUITTO_UNAVAILABLE="$$reason" $(1); \
	fi
endef

## test-broker-2.1: the broker tier (`pytest -m broker tests/integration`) on Mosquitto 2.1.2
test-broker-2.1: $(STAMP) system-deps plugin
	$(call on_mosquitto_21,$(BIN)/python -m pytest -m broker tests/integration)

## test-fuzz: only the schemathesis tier (part of test-integration); CREGISTRY_FUZZ_EXAMPLES=N for a longer run
test-fuzz: $(STAMP) system-deps
	$(BIN)/python -m pytest -m fuzz tests/integration

## test-failover: a Redis primary, two replicas, three sentinels, two brokers with the plugin; the primary is killed (about 40 s)
test-failover: $(STAMP) system-deps plugin
	$(BIN)/python -m pytest tests/failover

# The web console in Debian's headless chromium (apt-get install chromium);
# CREGISTRY_SCREENSHOTS=docs also rewrites docs/console.md's screenshots.
test-browser: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/browser

## bench: start everything, measure on Debian's mosquitto and on 2.1.2 (mosquitto-2.1), write
## bench/results.json and bench/out/{report.md,chart-<version>.png}
# (bench-quick: the same with small counts, a few minutes; it fails only when
# something could not be measured, never because a goal was missed; where 2.1.2
# cannot be had, its figures are skipped with the reason in the results, except
# in CI or under CREGISTRY_REQUIRE_BROKER=1; docs/performance.md)
LOADGEN := bench/build/loadgen
ALLOW_ALL_SO := bench/build/allow_all.so
BENCH_CFLAGS := -std=gnu11 -O2 -Wall -Wextra -Werror
$(LOADGEN): bench/loadgen.c | system-deps
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $$(pkg-config --cflags --libs libmosquitto libcurl) -lpthread -lm

# What a warm ACL look-up costs in the plugin's cache (a C micro benchmark, not run by bench)
ACL_LOOKUP := bench/build/acl_lookup
$(ACL_LOOKUP): bench/acl_lookup.c mosquitto/plugin/cache.c mosquitto/plugin/siphash.c mosquitto/plugin/cache.h \
		mosquitto/plugin/siphash.h
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -Imosquitto/plugin -o $@ bench/acl_lookup.c mosquitto/plugin/cache.c mosquitto/plugin/siphash.c

# The bench's floor: a plugin that allows everything (one build loads on 2.0 and 2.1).
$(ALLOW_ALL_SO): bench/allow_all.c | system-deps
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -fPIC -fvisibility=hidden -shared -o $@ $<

bench: $(STAMP) system-deps plugin $(LOADGEN) $(ALLOW_ALL_SO) try-go-auth
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e '.[bench]'
	$(BIN)/python bench/run.py

bench-quick: $(STAMP) system-deps plugin $(LOADGEN) $(ALLOW_ALL_SO) try-go-auth
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e '.[bench]'
	$(BIN)/python bench/run.py --quick

## lock: rewrite constraints.txt from the venv with every extra of pyproject.toml installed
## (keeps the pinned versions and adds new dependencies; FRESH=1 moves everything to the newest allowed)
lock: $(STAMP)
	$(BIN)/pip install --quiet $(if $(FRESH),--upgrade --upgrade-strategy eager,$(CONSTRAINTS)) \
		-e ".[$$($(BIN)/python -c 'import tomllib; print(",".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]))')]"
	{ echo "# Versions the tests run with: pip install -c constraints.txt -e '.[dev]'. Regenerate with: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -iv '^cregistry[ =@]'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

lint: $(STAMP)
	$(BIN)/ruff check cregistry harness tests bench
	$(BIN)/ruff format --check cregistry harness tests bench
	$(BIN)/mypy

# plugin, plugin-test, plugin-asan: cregistry's own Mosquitto plugin
include mosquitto/plugin/plugin.mk

clean:
	rm -rf $(VENV) $(PLUGIN_BUILD) $(PLUGIN_SO) $(PLUGIN_ASAN_SO) *.egg-info .pytest_cache .mypy_cache .ruff_cache
