#!/usr/bin/env bash
# Build the mosquitto-go-auth plugin (github.com/iegomez/mosquitto-go-auth)
# as a shared object that Debian's mosquitto 2.0.x can load.
#
#   mosquitto/build-go-auth.sh [--force] [OUTPUT.so]
#
# Output:  mosquitto/go-auth.so (override with the first argument or GO_AUTH_SO)
# Stamp:   .go-auth.version next to the output; if the output exists and the
#          stamp names the pinned version, the script exits at once (idempotent).
#
# Source:  fetched with `go mod download` through the Go module proxy
#          (GOPROXY as configured), pinned to GO_AUTH_REF below.  Set
#          GO_AUTH_SRC=/path/to/a/checkout to build from a local source tree
#          instead (no download; the stamp then records that path).
#
# Build:   the same two steps as go-auth's own Makefile:
#            CGO_CFLAGS="-I/usr/local/include -fPIC" go build -buildmode=c-archive go-auth.go
#            CGO_LDFLAGS="-shared" go build -buildmode=c-shared -o go-auth.so
#          (the c-archive step only generates go-auth.h, which auth-plugin.c includes)
#
# Needs:   go (>= 1.18; GOTOOLCHAIN=local, no toolchain download), gcc, and the
#          mosquitto plugin headers: apt-get install -y mosquitto-dev libmosquitto-dev
#
# Env:     GO_AUTH_REF   git tag / version to fetch (default below)
#          GO_AUTH_SRC   build from this local source tree instead of fetching
#          GO_AUTH_SO    output path (same as the positional argument)
#          GO_AUTH_FORCE=1 / --force   rebuild even if the stamp matches
#          GO            go binary (default: `go` on PATH, else /usr/local/go/bin/go)
set -euo pipefail

GO_AUTH_MODULE="github.com/iegomez/mosquitto-go-auth"
# go-auth tags its releases without a leading "v" (e.g. "2.1.0"), so the Go
# module proxy resolves the tag to a v0.0.0-<date>-<commit> pseudo-version.
# The resolved version and its go.sum hash are written into the stamp file.
GO_AUTH_REF="${GO_AUTH_REF:-2.1.0}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[build-go-auth] %s\n' "$*" >&2; }
die() { printf '[build-go-auth] ERROR: %s\n' "$*" >&2; exit 1; }

FORCE="${GO_AUTH_FORCE:-0}"
OUT="${GO_AUTH_SO:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --force|-f) FORCE=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) die "unknown option: $1" ;;
    *) OUT="$1" ;;
  esac
  shift
done
OUT="${OUT:-$SCRIPT_DIR/go-auth.so}"
mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
STAMP="$(dirname "$OUT")/.go-auth.version"

if [ -n "${GO_AUTH_SRC:-}" ]; then
  [ -d "$GO_AUTH_SRC" ] || die "GO_AUTH_SRC=$GO_AUTH_SRC is not a directory"
  GO_AUTH_SRC="$(cd "$GO_AUTH_SRC" && pwd)"
  PIN="local:$GO_AUTH_SRC"
else
  PIN="$GO_AUTH_MODULE@$GO_AUTH_REF"
fi

# ---- idempotence -----------------------------------------------------------
if [ "$FORCE" != 1 ] && [ -s "$OUT" ] && [ -f "$STAMP" ] \
   && [ "$(head -n1 "$STAMP")" = "pin=$PIN" ]; then
  log "up to date: $OUT (built from $PIN; use --force to rebuild)"
  echo "$OUT"
  exit 0
fi

# ---- prerequisites ---------------------------------------------------------
GO="${GO:-}"
if [ -z "$GO" ]; then
  if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
  else die "go not found (set GO=/path/to/go or put go on PATH)"; fi
fi
command -v gcc >/dev/null 2>&1 || die "gcc not found (apt-get install -y gcc)"
for h in mosquitto.h mosquitto_plugin.h mosquitto_broker.h; do
  if [ ! -f "/usr/include/$h" ] && [ ! -f "/usr/local/include/$h" ]; then
    die "mosquitto header $h not found in /usr/include or /usr/local/include (apt-get install -y mosquitto-dev libmosquitto-dev)"
  fi
done

export GOTOOLCHAIN=local          # never download a toolchain
export CGO_ENABLED=1
export GO111MODULE=on
# The fetched go.sum may be incomplete for a newer Go; let go fill it in.
case " ${GOFLAGS:-} " in
  *" -mod="*) ;;
  *) export GOFLAGS="-mod=mod${GOFLAGS:+ $GOFLAGS}" ;;
esac
log "go: $("$GO" version)  GOFLAGS=$GOFLAGS GOTOOLCHAIN=$GOTOOLCHAIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/go-auth-build.XXXXXX")"
cleanup() { chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
START=$(date +%s)

# ---- fetch -----------------------------------------------------------------
RESOLVED="" SUM=""
if [ -n "${GO_AUTH_SRC:-}" ]; then
  log "using local source tree $GO_AUTH_SRC"
  SRC_DIR="$GO_AUTH_SRC"
  RESOLVED="local" SUM="-"
else
  log "fetching $PIN via the Go module proxy (GOPROXY=$("$GO" env GOPROXY))"
  DL_JSON="$WORK/download.json"
  # Run outside any module so the download is not influenced by a go.mod.
  if ! (cd "$WORK" && GOFLAGS= "$GO" mod download -json "$PIN") >"$DL_JSON" 2>"$WORK/download.err"; then
    cat "$DL_JSON" "$WORK/download.err" >&2 || true
    die "go mod download $PIN failed (exact error above). The module proxy could not deliver go-auth; set GO_AUTH_SRC to a local checkout to build without it."
  fi
  json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" "$DL_JSON" | head -n1; }
  ERR="$(json_field Error)"
  [ -z "$ERR" ] || die "go mod download $PIN: $ERR"
  SRC_DIR="$(json_field Dir)"
  RESOLVED="$(json_field Version)"
  SUM="$(json_field Sum)"
  [ -n "$SRC_DIR" ] && [ -d "$SRC_DIR" ] || { cat "$DL_JSON" >&2; die "go mod download gave no module directory"; }
  log "resolved $PIN -> $RESOLVED ($SUM)"
fi

# The module cache is read-only: build in a writable copy.
BUILD="$WORK/src"
cp -R "$SRC_DIR" "$BUILD"
chmod -R u+w "$BUILD"
[ -f "$BUILD/go-auth.go" ] || die "$BUILD/go-auth.go missing: not a go-auth source tree?"

# ---- build (mirrors go-auth's Makefile) -----------------------------------
cd "$BUILD"
log "step 1/2: go build -buildmode=c-archive go-auth.go (generates go-auth.h)"
CGO_CFLAGS="-I/usr/local/include -fPIC" "$GO" build -buildmode=c-archive go-auth.go
log "step 2/2: go build -buildmode=c-shared -o go-auth.so"
CGO_LDFLAGS="-shared" "$GO" build -buildmode=c-shared -o go-auth.so

# Read the symbol table whole, then search it: `nm | grep -q` under pipefail
# fails whenever grep stops at its first match and nm dies of SIGPIPE.
EXPORTED="$(nm -D --defined-only go-auth.so)" || die "nm cannot read the dynamic symbols of go-auth.so"
for sym in mosquitto_auth_plugin_version mosquitto_auth_plugin_init mosquitto_auth_unpwd_check mosquitto_auth_acl_check; do
  grep -qw -- "$sym" <<<"$EXPORTED" || die "built go-auth.so does not export $sym"
done

# ---- install atomically + stamp -------------------------------------------
cp go-auth.so "$OUT.tmp.$$"
mv -f "$OUT.tmp.$$" "$OUT"
{
  echo "pin=$PIN"
  echo "resolved=$RESOLVED"
  echo "sum=$SUM"
  echo "go=$("$GO" env GOVERSION)"
  echo "mosquitto-dev=$(dpkg-query -W -f='${Version}' mosquitto-dev 2>/dev/null || echo unknown)"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$STAMP"

log "built $OUT in $(( $(date +%s) - START ))s (stamp: $STAMP)"
echo "$OUT"
