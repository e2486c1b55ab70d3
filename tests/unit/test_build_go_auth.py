"""mosquitto/build-go-auth.sh's check of the built plugin's exports, with a
stand-in `go` that builds a shared object through gcc (no Go, no download)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "mosquitto" / "build-go-auth.sh"
EXPORTS = [
    "mosquitto_auth_plugin_version",
    "mosquitto_auth_plugin_init",
    "mosquitto_auth_unpwd_check",
    "mosquitto_auth_acl_check",
]
# Enough symbols after the wanted ones (nm sorts by name) that nm is still
# writing when a `grep -q` reading it has found its match and exited.
FILLER_SYMBOLS = 3000

FAKE_GO = """#!/bin/sh
case "$1" in
  version) echo "go version go1.99 stand-in" ;;
  env) case "$2" in GOVERSION) echo go1.99 ;; *) echo off ;; esac ;;
  build)
    case "$*" in
      *c-archive*) echo '/* stand-in */' > go-auth.h ;;
      *c-shared*) gcc -shared -fPIC -o go-auth.so plugin.c ;;
    esac ;;
esac
"""

HEADERS = ("mosquitto.h", "mosquitto_plugin.h", "mosquitto_broker.h")
pytestmark = pytest.mark.skipif(
    not (shutil.which("gcc") and shutil.which("nm"))
    or not all(os.path.exists(f"/usr/include/{h}") or os.path.exists(f"/usr/local/include/{h}") for h in HEADERS),
    reason="go-auth's build needs gcc, nm and mosquitto-dev (apt-get install -y gcc binutils mosquitto-dev)",
)


def build(tmp_path: Path, exports: list[str]) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "go-auth-src"
    source.mkdir()
    (source / "go-auth.go").write_text("package main\n")
    names = exports + [f"zz_filler_{i:05d}" for i in range(FILLER_SYMBOLS)]
    (source / "plugin.c").write_text("".join(f"int {name}(void) {{ return 0; }}\n" for name in names))
    go = tmp_path / "go"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    env = {**os.environ, "GO": str(go), "GO_AUTH_SRC": str(source), "TMPDIR": str(tmp_path)}
    output = tmp_path / "out" / "go-auth.so"
    return subprocess.run(
        ["bash", str(SCRIPT), "--force", str(output)], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_plugin_with_every_export_passes_the_check(tmp_path: Path) -> None:
    result = build(tmp_path, EXPORTS)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "go-auth.so").exists()
    assert "does not export" not in result.stderr


def test_a_missing_export_is_still_refused(tmp_path: Path) -> None:
    result = build(tmp_path, [e for e in EXPORTS if e != "mosquitto_auth_acl_check"])
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "[build-go-auth] ERROR: built go-auth.so does not export mosquitto_auth_acl_check"
    )
    assert not (tmp_path / "out" / "go-auth.so").exists()
