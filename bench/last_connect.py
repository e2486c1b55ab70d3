"""What recording a user's last connect costs the connect path.

    python bench/last_connect.py [--users 200] [--rounds 25]

Starts its own redis-server on a free loopback port, makes users whose
verified-password tokens exist (the common connect: no bcrypt), and times
Authorizer.check_user in interleaved rounds:

- before:    the recorder switched off (the connect path as it was);
- steady:    the recorder on, each user connected within the last minute
             (the process skips Redis: what nearly every connect costs);
- writing:   the recorder on and every call due for a write (read + write:
             once a minute per user and process, the worst case).

Prints per-call microseconds (median and p99 of every call, and the median
of the round means). A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cregistry.authorizer import ConnectRequest  # noqa: E402
from cregistry.config import Config  # noqa: E402
from cregistry.connections import connect  # noqa: E402
from cregistry.services import build  # noqa: E402
from harness.redis_server import RedisProcess  # noqa: E402

PASSWORD = "bench-device-secret"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()

    server = RedisProcess()
    server.start()
    try:
        connection = connect(server.url, 0.5)
        config = Config(bcrypt_cost=4, verify_secret="ab" * 16, redis_url=server.url)
        names = [f"bench-{n:04d}" for n in range(args.users)]
        setup = build(connection, config).authorizer
        for name in names:
            setup.users.add(name, PASSWORD)
            assert setup.check_user(ConnectRequest(name, PASSWORD, name)).allowed  # leaves the verified token

        calls: dict[str, list[float]] = {"before": [], "steady": [], "writing": []}
        rounds: dict[str, list[float]] = {key: [] for key in calls}
        steady = build(connection, config).authorizer
        for name in names:
            steady.check_user(ConnectRequest(name, PASSWORD, name))  # each user written once: now within the minute
        for _ in range(args.rounds):
            before = build(connection, config).authorizer
            before.last_connects.record = lambda *_args: None  # type: ignore[method-assign]
            writing = build(connection, config).authorizer
            for variant, authorizer in (("before", before), ("steady", steady), ("writing", writing)):
                if variant == "writing":
                    connection.delete(*[authorizer.users.keys.user_last_connect(n) for n in names])
                round_start = time.perf_counter()
                for name in names:
                    started = time.perf_counter()
                    authorizer.check_user(ConnectRequest(name, PASSWORD, name))
                    calls[variant].append(time.perf_counter() - started)
                rounds[variant].append((time.perf_counter() - round_start) / len(names))

        print(f"check_user, verified token, {args.users} users x {args.rounds} rounds, real redis-server on loopback")
        print(f"{'variant':<9} {'median µs':>10} {'p99 µs':>8} {'round-mean median µs':>21}")
        for variant, samples in calls.items():
            ordered = sorted(samples)
            p99 = ordered[int(0.99 * (len(ordered) - 1))]
            print(
                f"{variant:<9} {statistics.median(samples) * 1e6:>10.1f} {p99 * 1e6:>8.1f}"
                f" {statistics.median(rounds[variant]) * 1e6:>21.1f}"
            )
        connection.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
