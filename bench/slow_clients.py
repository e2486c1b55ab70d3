"""How a running API listener answers while slow clients hold connections (SPEC §15).

Opens N connections that each send the headers of a registration and half
its body, then times GET /healthz, the console's sign-in page and an admin
API call. docs/listeners.md has the figures that chose the server.

    python -m bench.slow_clients --api http://127.0.0.1:8080 --token "$CREGISTRY_ADMIN_TOKEN" 17 200 1000
"""

from __future__ import annotations

import argparse
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

HALF_BODY = (
    b"POST /api/client-registry/register HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"username": "slow'
)


def timed_get(url: str, token: str | None, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = str(response.status)
    except urllib.error.HTTPError as error:
        status = str(error.code)
    except OSError as error:
        return f"no answer ({type(error).__name__})"
    return f"{status} in {(time.monotonic() - started) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--token", default=None)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("counts", nargs="+", type=int)
    args = parser.parse_args()
    address = urllib.parse.urlsplit(args.api)
    for count in args.counts:
        held = []
        try:
            for _ in range(count):
                sock = socket.create_connection((address.hostname, address.port or 80), timeout=5)
                sock.sendall(HALF_BODY)
                held.append(sock)
            for path, token in (("/healthz", None), ("/console/sign-in", None), ("/api/client-registry", args.token)):
                print(f"{count:5d} held: GET {path}: {timed_get(args.api + path, token, args.timeout)}")
        finally:
            for sock in held:
                sock.close()
        time.sleep(1)  # the server notices the closes before the next round


if __name__ == "__main__":
    main()
