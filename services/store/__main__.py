"""python -m services.store --id store-a --zone a --listen 127.0.0.1:7101 --data-dir DIR [--etcd HOST:PORT]

One store replica: a durable, group-committed log per channel in DIR. With --etcd it registers
itself as a member (kind "store") once it serves, and leaves (revokes its lease) when it stops; and
it follows the namespaces' retention options kept there (the --retention-* flags are for the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import redis

from services.common import probes, tls
from services.common.server import deliberate_bugs, env_default, not_serving, run_service, serve, supervise
from services.core.entries import epoch_ring_version
from services.core.namespaces import Namespaces
from services.core.replica_log import Retention
from services.internal.v1 import store_service_pb2, store_service_pb2_grpc
from services.store import redis_engine
from services.store.epoch_ceiling import EpochCeiling
from services.store.server import StoreService

log = logging.getLogger("ringcast.store")


class Membership:
    """This replica's registration in etcd, as MemberRecord(kind="store", id, address, zone).

    It registers in the background: the store's data does not depend on etcd, so etcd being down
    delays the registration (which retries by itself) but never keeps the store from serving.
    The etcd adapter is imported only here, so a store run without --etcd never loads an etcd client.
    """

    def __init__(
        self,
        endpoints: str,
        store_id: str,
        address: str,
        zone: str,
        floor: Callable[[], int],
        on_namespaces: Callable[[Namespaces], None],
    ) -> None:
        self.endpoints = endpoints
        self.store_id, self.address, self.zone = store_id, address, zone
        self.floor = floor
        self.on_namespaces = on_namespaces
        self._task: asyncio.Task[None] | None = None
        self._leave: Callable[[], Awaitable[None]] | None = None
        self._etcd: Any = None

    async def ring_version_ceiling(self) -> int:
        """The highest ring version etcd can have made by now (for `EpochCeiling`)."""
        if self._etcd is None:
            raise ConnectionError("not connected to etcd yet")
        return int(await self._etcd.ring_version_ceiling())

    def start(self) -> None:
        self._task = asyncio.create_task(self._join_or_log(), name="store-membership")

    async def _join_or_log(self) -> None:
        try:
            await self._join()
        except Exception:
            log.exception("registering in etcd at %s failed; serving without membership", self.endpoints)

    async def _join(self) -> None:
        from services.common import namespaces
        from services.common.etcd import Etcd, MemberRecord
        from services.common.registration import Registration

        etcd = await Etcd.connect(self.endpoints)
        self._etcd = etcd
        try:
            record = MemberRecord(kind="store", id=self.store_id, address=self.address, zone=self.zone)
            registration = await Registration.start(
                etcd,
                record,
                floor=self.floor,
                on_failed=lambda error: not_serving(f"keeping the etcd registration failed: {error!r}"),
            )
        except BaseException:
            self._etcd = None
            await etcd.close()
            raise

        following = supervise(
            asyncio.create_task(namespaces.follow(etcd, self.on_namespaces), name="namespaces"),
            "following the namespaces",
        )

        async def leave() -> None:
            following.cancel()
            try:
                await registration.stop()  # revokes the lease: the member key goes at once
            finally:
                self._etcd = None
                await etcd.close()

        self._leave = leave

    async def stop(self) -> None:
        """Leave the membership (or stop trying to join it)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._leave is not None:
            await self._leave()


async def main(arguments: argparse.Namespace) -> None:
    retention = Retention(
        age_ms=int(arguments.retention_hours * 3_600_000),
        entries_max=arguments.retention_entries,
        keep_recent_ms=int(arguments.retention_keep_recent_s * 1000),
    )
    redis_url = _redis_url(arguments)
    if redis_url:
        await _wait_for_redis(redis_url)
    service = StoreService(
        arguments.data_dir or f"data/{arguments.id}",
        redis_url=redis_url,
        retention=retention,
        trim_every_s=arguments.trim_every_s,
        scrub_entries_per_s=arguments.scrub_entries_per_s,
        bugs=deliberate_bugs(),
    )
    probes.set_readiness(service.readiness)
    membership: Membership | None = None

    def register(server: grpc.aio.Server) -> list[str]:
        store_service_pb2_grpc.add_StoreServiceServicer_to_server(service, server)
        return [store_service_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name]

    async def ready() -> None:
        nonlocal membership
        service.start_trimming()
        service.start_scrubbing()
        if arguments.etcd:
            address = arguments.advertise or arguments.listen
            # The ring version of our highest fence: placement keeps ring versions above it even when
            # etcd loses its data, so new owners' epochs pass the fences we hold.
            floor = lambda: epoch_ring_version(service.max_fence())  # noqa: E731 - read at each registration
            membership = Membership(
                arguments.etcd, arguments.id, address, arguments.zone, floor, service.set_namespaces
            )
            membership.start()
            service.epochs = EpochCeiling(membership.ring_version_ceiling)

    async def stopping() -> None:
        if membership is not None:
            await membership.stop()  # leave the membership first, so nobody picks this replica any more

    try:
        await serve(arguments.listen, register, ready=ready, stopping=stopping, admission=tls.STORE)
    finally:
        await service.close()


redis_wait_delay_s_max = 2.0
"""Longest pause between two attempts to reach a Redis that is not answering yet at start."""

redis_wait_log_interval_s = 10.0
"""While waiting for Redis at start, say so at most this often."""


async def _wait_for_redis(url: str) -> None:
    """Until the Redis at `url` answers (services start in any order: in a compose stack the store may
    come up before its Redis). A Redis that answers but refuses us (a wrong password, no permission)
    is not waited for: that is a configuration error, raised at once."""
    where = url.rpartition("@")[2]  # never the password
    delay_s, waited_s, said_s = 0.1, 0.0, -redis_wait_log_interval_s
    while True:
        client = redis_engine.open_redis(url)
        try:
            await asyncio.to_thread(client.ping)
        except redis.exceptions.AuthenticationError:
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
            if waited_s - said_s >= redis_wait_log_interval_s:
                said_s = waited_s
                log.warning("redis at %s is not answering yet (%s); waiting for it", where, error)
        else:
            if waited_s:
                log.info("redis at %s answers after %.1f s", where, waited_s)
            return
        finally:
            client.close()
        await asyncio.sleep(delay_s)
        waited_s += delay_s
        delay_s = min(delay_s * 2, redis_wait_delay_s_max)


_RETENTION_FLAGS: tuple[tuple[str, Callable[[str], float], str, str], ...] = (
    ("--retention-hours", float, "72", "entries older than this are dropped (default 72)"),
    ("--retention-entries", int, "1000000", "beyond the newest this many, entries are dropped (default 1,000,000)"),
    (
        "--retention-keep-recent-s",
        float,
        "120",
        "entries younger than this are never dropped: keep it at least the dedup window (default 120)",
    ),
    ("--trim-every-s", float, "10", "seconds between retention passes (default 10)"),
)
"""Flag, type, default and help of each retention setting (each also a RINGCAST_<FLAG> variable)."""


def _redis_url(arguments: argparse.Namespace) -> str:
    """--redis with the ACL user and the password from --redis-password-file put in."""
    url = str(arguments.redis)
    if not url or not arguments.redis_user:
        return url
    password = Path(arguments.redis_password_file).read_text().strip() if arguments.redis_password_file else ""
    scheme, _, rest = url.partition("://")
    credentials = quote(arguments.redis_user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"{scheme}://{credentials}@{rest}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.store", description=__doc__)
    parser.add_argument("--id", default=env_default("ID", "store-a"))
    parser.add_argument("--zone", default=env_default("ZONE", "a"))
    parser.add_argument("--listen", default=env_default("LISTEN", "127.0.0.1:7101"))
    parser.add_argument(
        "--advertise", default=env_default("ADVERTISE", ""), help="address others dial (default: --listen)"
    )
    parser.add_argument("--data-dir", default=env_default("DATA_DIR", ""), help="default: data/<id>")
    parser.add_argument("--etcd", default=env_default("ETCD", ""), help="etcd endpoints; empty: do not register")
    parser.add_argument(
        "--redis",
        default=env_default("REDIS", ""),
        help="keep the log in this Redis (redis://HOST:PORT/DB; it must run appendfsync always); empty: SQLite",
    )
    parser.add_argument("--redis-user", default=env_default("REDIS_USER", ""), help="the Redis ACL user to log in as")
    parser.add_argument(
        "--redis-password-file",
        default=env_default("REDIS_PASSWORD_FILE", ""),
        help="a file holding that user's password (kept out of argv and the environment)",
    )
    parser.add_argument(
        "--scrub-entries-per-s",
        type=float,
        default=float(env_default("SCRUB_ENTRIES_PER_S", "2000")),
        help="entries per second the background scrub reads and checks for damage at rest (0: no scrub)",
    )
    retention = parser.add_argument_group("retention (DESIGN §7): what each channel's log keeps")
    for flag, kind, default, what in _RETENTION_FLAGS:
        name = flag.removeprefix("--").replace("-", "_").upper()
        retention.add_argument(flag, type=_positive(kind), default=env_default(name, default), help=what)
    return parser


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not above 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


if __name__ == "__main__":
    run_service(build_parser, main)
