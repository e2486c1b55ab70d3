#!/usr/bin/env bash
# Build Mosquitto 2.1.2 (upstream, unmodified) for the 2.1 broker tier, once
# per machine, outside the repository, and print the broker's path.
#
#   mosquitto/build-mosquitto-2.1.sh        prints <prefix>/sbin/mosquitto
#
# Source:  ../shared/brokers/mosquitto-2.1.2.tar.gz beside the repository (or
#          beside the main checkout of a git worktree; MOSQUITTO_21_TARBALL overrides), checked against its sha256.
# Prefix:  ${XDG_CACHE_HOME:-$HOME/.cache}/cregistry/mosquitto-2.1.2
#          (MOSQUITTO_21_PREFIX overrides). A build there whose stamp names the
#          tarball's sha256 is reused: the script then exits at once.
# Build:   as ../shared/brokers/README.md says (cmake, about a minute on 2 cores);
#          the broker, its libraries and the bundled plugins, no clients or docs.
# Needs:   cmake, gcc, libssl-dev, libcjson-dev.
# Exit 1 with the reason on stderr when there is no tarball or the build fails;
# the Makefile's test-broker-2.1 then reports the 2.1 tier as skipped (or fails
# it under CI). Neither the tarball nor the build is ever part of the repository.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$SCRIPT_DIR")"
VERSION=2.1.2
SHA256=cdad3ac1f474a87b1f7888f7f705e6ca3bd79e68a1376961e4c37575c30b7bcd
TARBALL="${MOSQUITTO_21_TARBALL:-$REPO/../shared/brokers/mosquitto-$VERSION.tar.gz}"
# A git worktree elsewhere finds shared/ beside its main checkout.
if [ -z "${MOSQUITTO_21_TARBALL:-}" ] && [ ! -f "$TARBALL" ]; then
  common="$(git -C "$REPO" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)"
  [ -n "$common" ] && TARBALL="$(dirname "$common")/../shared/brokers/mosquitto-$VERSION.tar.gz"
fi
PREFIX="${MOSQUITTO_21_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/cregistry/mosquitto-$VERSION}"
STAMP="$PREFIX/.built-from-sha256"

log() { printf '[build-mosquitto-2.1] %s\n' "$*" >&2; }
die() { printf '[build-mosquitto-2.1] %s\n' "$*" >&2; exit 1; }

if [ -x "$PREFIX/sbin/mosquitto" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$SHA256" ]; then
  echo "$PREFIX/sbin/mosquitto"
  exit 0
fi
[ -f "$TARBALL" ] || die "no Mosquitto $VERSION source at $TARBALL (it comes with ../shared/brokers/)"
echo "$SHA256  $TARBALL" | sha256sum --check --status || die "$TARBALL does not have the sha256 $SHA256"
for tool in cmake make gcc; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install cmake build-essential)"
done

mkdir -p "$(dirname "$PREFIX")"
# Two test runs starting at once build once: the second waits for the first.
exec 9>"$PREFIX.lock"
flock 9
if [ -x "$PREFIX/sbin/mosquitto" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$SHA256" ]; then
  echo "$PREFIX/sbin/mosquitto"
  exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log "building Mosquitto $VERSION into $PREFIX (once per machine, about a minute)"
tar -xzf "$TARBALL" -C "$WORK"
mkdir "$WORK/mosquitto-$VERSION/build"
(
  cd "$WORK/mosquitto-$VERSION/build"
  cmake .. -DWITH_TESTS=OFF -DWITH_DOCS=OFF -DWITH_CTRL_SHELL=OFF -DWITH_WEBSOCKETS=OFF \
    -DWITH_CLIENTS=OFF -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" >"$WORK/cmake.log" 2>&1 \
    || { tail -30 "$WORK/cmake.log" >&2; exit 1; }
  make -j2 >"$WORK/make.log" 2>&1 || { tail -30 "$WORK/make.log" >&2; exit 1; }
  rm -rf "$PREFIX"
  make install >"$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log" >&2; exit 1; }
) || die "the build failed (output above)"
echo "$SHA256" >"$STAMP"
echo "$PREFIX/sbin/mosquitto"
