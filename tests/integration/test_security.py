"""The security matrix (issue #16): a secure cluster as `ringcast up` makes it, real clients, each row
an attack or a mistake, refused with its code and reason, and History unchanged by it.

Meanwhile an honest workload publishes and subscribes with 2-second tokens from a token provider
(so its tokens expire many times under it); at the end the history checker finds nothing lost,
duplicated or out of order in what it was acknowledged and delivered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import ringcast
from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster import pki, tokens
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology
from services.common import revocations
from services.core.entries import Entry, Message, Position
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc
from services.internal.v1 import placement_service_pb2 as placement_pb2
from services.internal.v1 import placement_service_pb2_grpc as placement_grpc
from services.internal.v1 import store_service_pb2 as store_pb2
from services.internal.v1 import store_service_pb2_grpc as store_grpc
from tests.integration.secure_cluster import TARGET, HonestWorkload, Secure, assert_refused, refusal
from tests.integration.store_rpc import channel_append

EPOCH_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    state = tmp_path_factory.mktemp("secure")
    launcher = Launcher(local_topology(state / "data", tls_dir=state / "tls"), state)
    launcher.start_all()
    try:
        cluster = Secure(launcher)
        link, stub, metadata = cluster.realtime(cluster.token({"chat:*": ["publish"]}, sub="owner"))
        with link:
            stub.Publish(
                realtime_pb2.PublishRequest(channel=TARGET, messages=[message_pb2.Message(id="real-1", data=b"x")]),
                metadata=metadata,
                timeout=30,
            )
        yield cluster
    finally:
        launcher.stop_all()


def publish_with(secure: Secure, token: str | None, channel: str = TARGET) -> grpc.RpcError:
    link, stub, metadata = secure.realtime(token)
    request = realtime_pb2.PublishRequest(channel=channel, messages=[message_pb2.Message(id="evil", data=b"evil")])
    with link:
        return refusal(lambda: stub.Publish(request, metadata=metadata, timeout=10))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(now: float | None = None) -> dict[str, Any]:
    issued = int(time.time() if now is None else now)
    return {"sub": "mallory", "iat": issued, "exp": issued + 60, "jti": "j-" + str(issued), "capability": {"*": ["*"]}}


def _forged_signature(secure: Secure) -> str:
    other = Ed25519PrivateKey.generate()
    return jwt.encode(_claims(), other, algorithm="EdDSA", headers={"kid": secure.kid})


def _alg_none(secure: Secure) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": secure.kid}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def _hs256_with_public_key(secure: Secure) -> str:
    public = json.loads((secure.tls_dir / tokens.KEYSET_FILE).read_text())["keys"][0]["public_key"].encode()
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": secure.kid}).encode())
        + "."
        + _b64(json.dumps(_claims()).encode())
    )
    signature = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


TOKEN_ROWS: list[tuple[str, Callable[[Secure], str | None], grpc.StatusCode, str]] = [
    ("no token", lambda s: None, grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_MISSING),
    ("forged signature", _forged_signature, grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_INVALID),
    ("alg none", _alg_none, grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_INVALID),
    (
        "alg HS256 keyed with the public key",
        _hs256_with_public_key,
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.TOKEN_INVALID,
    ),
    (
        "expired",
        lambda s: s.token({"*": ["*"]}, ttl=60, now=time.time() - 3600),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.TOKEN_EXPIRED,
    ),
    (
        "not yet valid",
        lambda s: s.token({"*": ["*"]}, ttl=60, now=time.time() + 3600),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.TOKEN_INVALID,
    ),
    (
        "chat:* publishing to news:1",
        lambda s: s.token({"chat:*": ["publish"]}),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.CAPABILITY_DENIED,
    ),
    (
        "subscribe-only token publishing",
        lambda s: s.token({"*": ["subscribe"]}),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.CAPABILITY_DENIED,
    ),
]


@pytest.mark.parametrize(("row", "make", "code", "reason"), TOKEN_ROWS, ids=[row[0] for row in TOKEN_ROWS])
def test_a_bad_token_is_refused_and_changes_nothing(
    secure: Secure,
    honest: HonestWorkload,
    row: str,
    make: Callable[[Secure], str | None],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    before = secure.history()
    channel = "news:1" if "news:1" in row else TARGET
    assert_refused(publish_with(secure, make(secure), channel), code, reason)
    link, stub, metadata = secure.realtime(make(secure))
    with link:
        subscription = stub.Subscribe(realtime_pb2.SubscribeRequest(channel=channel, after_serial=0), metadata=metadata)
        if row == "subscribe-only token publishing":
            next(subscription)  # subscribing is what it may do
            subscription.cancel()
        else:
            assert_refused(refusal(lambda: next(subscription)), code, reason)
    assert secure.history() == before


def test_the_publisher_is_stamped_and_cannot_be_claimed(secure: Secure, honest: HonestWorkload) -> None:
    link, stub, metadata = secure.realtime(secure.token({"chat:*": ["publish"]}, sub="carol"))
    with link:
        response = stub.Publish(
            realtime_pb2.PublishRequest(channel="chat:stamped", messages=[message_pb2.Message(id="c1", data=b"x")]),
            metadata=metadata,
            timeout=30,
        )
        claimed = message_pb2.Message(id="c2", data=b"x", client_id="admin")
        error = refusal(
            lambda: stub.Publish(
                realtime_pb2.PublishRequest(channel="chat:stamped", messages=[claimed]), metadata=metadata, timeout=30
            )
        )
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, Reason.PLATFORM_FIELD_SET)
    assert secure.history("chat:stamped") == [(response.serials[0], "c1", "carol")]


def test_presence_needs_the_capability_and_a_member_is_its_token_s_sub(secure: Secure, honest: HonestWorkload) -> None:
    """Entering and reading presence need `presence` on the channel; the member's client id is the
    token's `sub` (another one is refused), and nothing else can make it someone else."""
    link, stub, metadata = secure.realtime(secure.token({"chat:*": ["publish", "subscribe"]}, sub="erin"))
    with link:
        error = refusal(
            lambda: stub.GetPresence(
                realtime_pb2.GetPresenceRequest(channel="chat:room"), metadata=metadata, timeout=30
            )
        )
    assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, Reason.CAPABILITY_DENIED)
    link, stub, metadata = secure.realtime(secure.token({"chat:*": ["presence"]}, sub="erin"))
    with link:
        entering = stub.EnterPresence(
            realtime_pb2.EnterPresenceRequest(channel="chat:room", connection_id="c1", data=b"hi"), metadata=metadata
        )
        assert next(entering).serial > 0
        claimed = realtime_pb2.UpdatePresenceRequest(channel="chat:room", connection_id="c1", client_id="admin")
        error = refusal(lambda: stub.UpdatePresence(claimed, metadata=metadata, timeout=30))
        assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, Reason.CLIENT_ID_MISMATCH)
        present = stub.GetPresence(realtime_pb2.GetPresenceRequest(channel="chat:room"), metadata=metadata, timeout=30)
        assert [(m.client_id, m.connection_id, m.data) for m in present.members] == [("erin", "c1", b"hi")]
        stub.LeavePresence(
            realtime_pb2.LeavePresenceRequest(channel="chat:room", connection_id="c1"), metadata=metadata, timeout=30
        )
        entering.cancel()


def test_a_revoked_token_ends_its_subscription_within_a_second(secure: Secure, honest: HonestWorkload) -> None:
    token = secure.token({"chat:*": ["subscribe"]}, sub="revoked-one")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    link, stub, metadata = secure.realtime(token)
    with link:
        subscription = stub.Subscribe(realtime_pb2.SubscribeRequest(channel=TARGET, after_serial=0), metadata=metadata)
        next(subscription)
        revoked_at = time.monotonic()
        asyncio.run(_revoke(secure, jti))
        error = refusal(lambda: next(subscription))
        ended_after = time.monotonic() - revoked_at
    assert_refused(error, grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_REVOKED)
    assert ended_after <= 1.5, ended_after  # the write itself, and the gateways' 0.5 s reading
    assert_refused(publish_with(secure, token), grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_REVOKED)


async def _revoke(secure: Secure, jti: str) -> None:
    from services.common import revocations, tls
    from services.common.etcd import Etcd

    tls.configure(str(secure.tls_dir), "admin")
    try:
        etcd = await Etcd.connect(secure.address("etcd"))
        try:
            await revocations.revoke(etcd, "jti", jti, time.time())
        finally:
            await etcd.close()
    finally:
        tls.configure("", "admin")


def test_plaintext_to_a_gateway_gets_no_service(secure: Secure, honest: HonestWorkload) -> None:
    token = secure.token({"*": ["*"]})
    with grpc.insecure_channel(secure.gateway) as link:
        request = realtime_pb2.PublishRequest(channel=TARGET, messages=[message_pb2.Message(id="plain", data=b"x")])
        error = refusal(
            lambda: realtime_grpc.RealtimeServiceStub(link).Publish(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=5
            )
        )
    assert_refused(error, grpc.StatusCode.UNAVAILABLE, None)
    assert [entry[1] for entry in secure.history()].count("plain") == 0


def _fence(name: str, epoch: int) -> store_pb2.FenceRequest:
    return store_pb2.FenceRequest(fences=[store_pb2.ChannelFence(channel=name, epoch=epoch)])


def _forged_append(serial: int, epoch: int) -> store_pb2.AppendRequest:
    entry = Entry.make(serial, epoch, Message(f"forged-{serial}", data=b"forged"))
    return store_pb2.AppendRequest(appends=[channel_append(TARGET, epoch, Position(serial - 1, 0), [entry])])


def test_internal_services_refuse_callers_without_the_right_certificate(
    secure: Secure, honest: HonestWorkload, tmp_path: Path
) -> None:
    before = secure.history()
    store = secure.address("store-a")
    # No client certificate, and a certificate from another CA: the TLS handshake refuses them.
    no_cert = grpc.secure_channel(store, grpc.ssl_channel_credentials(secure.ca))
    with no_cert:
        error = refusal(lambda: store_grpc.StoreServiceStub(no_cert).Read(store_pb2.ReadRequest(), timeout=5))
    assert_refused(error, grpc.StatusCode.UNAVAILABLE, None)
    pki.ensure(tmp_path / "other", [pki.Identity("channel-1", "channel")])
    other = tmp_path / "other"
    credentials = grpc.ssl_channel_credentials(
        secure.ca, (other / "channel-1.key").read_bytes(), (other / "channel-1.pem").read_bytes()
    )
    with grpc.secure_channel(store, credentials) as foreign:
        error = refusal(lambda: store_grpc.StoreServiceStub(foreign).Fence(_fence(TARGET, EPOCH_MAX), timeout=5))
    assert_refused(error, grpc.StatusCode.UNAVAILABLE, None)
    # A gateway's certificate on the store's writes (and reads): the role is refused.
    with secure.as_process("gateway-1", store) as as_gateway:
        stub = store_grpc.StoreServiceStub(as_gateway)
        for call in (
            lambda: stub.Append(_forged_append(2, 1 << 16), timeout=5),
            lambda: stub.Fence(_fence(TARGET, EPOCH_MAX), timeout=5),
            lambda: stub.Read(store_pb2.ReadRequest(reads=[store_pb2.ChannelRead(channel=TARGET)]), timeout=5),
        ):
            assert_refused(refusal(call), grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_DENIED)
    assert secure.history() == before


def test_the_five_attacks_of_the_issue_are_refused(secure: Secure, honest: HonestWorkload) -> None:
    before = secure.history()
    anonymous = grpc.ssl_channel_credentials(secure.ca)
    # 1. Read anything: the store and the ring are closed to a client without a service certificate.
    for address, call in (
        (secure.address("store-b"), lambda c: store_grpc.StoreServiceStub(c).Read(store_pb2.ReadRequest(), timeout=5)),
        (
            secure.address("placement-1"),
            lambda c: placement_grpc.PlacementServiceStub(c).GetRing(placement_pb2.GetRingRequest(), timeout=5),
        ),
    ):
        with grpc.secure_channel(address, anonymous) as link:
            assert_refused(refusal(lambda link=link, call=call: call(link)), grpc.StatusCode.UNAVAILABLE, None)
    # 2. Forge committed messages, 4. split the replicas: appends from anything but a channel node.
    for process in ("gateway-1", "placement-1", "store-c"):
        for store in ("store-a", "store-b"):
            with secure.as_process(process, secure.address(store)) as link:
                error = refusal(lambda link=link: store_grpc.StoreServiceStub(link).Append(_forged_append(2, 1 << 16)))
                assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_DENIED)
    # 3. Disable a channel for good: a fence at 2^63-1, even from a channel node's certificate.
    for store in ("store-a", "store-b", "store-c"):
        with secure.as_process("channel-1", secure.address(store)) as link:
            error = refusal(lambda link=link: store_grpc.StoreServiceStub(link).Fence(_fence(TARGET, EPOCH_MAX)))
            assert_refused(error, grpc.StatusCode.FAILED_PRECONDITION, Reason.EPOCH_AHEAD_OF_RING)
    # 5. Skip validation: the channel node serves gateways only.
    bypass = channel_pb2.PublishRequest(channel="bypass ch\n", messages=[message_pb2.Message(data=b"x" * 200_000)])
    for process in ("store-a", "placement-1", "admin"):
        with secure.as_process(process, secure.address("channel-1")) as link:
            error = refusal(lambda link=link: channel_grpc.ChannelServiceStub(link).Publish(bypass, timeout=5))
            assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_DENIED)
    assert secure.history() == before
    link, stub, metadata = secure.realtime(secure.token({"chat:*": ["publish"]}, sub="owner"))
    with link:
        stub.Publish(
            realtime_pb2.PublishRequest(channel=TARGET, messages=[message_pb2.Message(id="real-2", data=b"x")]),
            metadata=metadata,
            timeout=30,
        )
    assert [entry[1] for entry in secure.history()] == [entry[1] for entry in before] + ["real-2"]


def test_a_client_over_its_rate_is_told_when_to_come_back_and_the_sdk_does(
    secure: Secure, honest: HonestWorkload
) -> None:
    token = secure.tokens_with_limits(publish_rate=5)
    link, stub, metadata = secure.realtime(token)
    refused_at = None
    with link:
        for n in range(30):
            request = realtime_pb2.PublishRequest(
                channel="chat:rated", messages=[message_pb2.Message(id=f"r{n}", data=b"x")]
            )
            try:
                stub.Publish(request, metadata=metadata, timeout=10)
            except grpc.RpcError as error:
                assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED)
                delay = ringcast.retry_delay(error)
                assert delay is not None and 0 < delay <= 1.0, delay
                refused_at = n
                break
    assert refused_at is not None and refused_at >= 9, refused_at  # a burst of two seconds' worth first
    accepted = [entry[1] for entry in secure.history("chat:rated")]
    assert accepted == [f"r{n}" for n in range(refused_at)]  # the refused one changed nothing

    async def publish_many() -> tuple[list[int], int]:
        async with ringcast.Client(secure.launcher.topology.gateways, ca=secure.ca, token=token) as client:
            serials = [await client.publish("chat:rated", b"x") for _ in range(15)]
            return serials, client.stats.rate_limited

    serials, limited = asyncio.run(publish_many())
    assert serials == list(range(refused_at + 1, refused_at + 16)) and limited > 0


def test_a_client_holds_at_most_its_subscriptions(secure: Secure, honest: HonestWorkload) -> None:
    link, stub, metadata = secure.realtime(secure.tokens_with_limits(subscriptions=1))
    with link:
        first = stub.Subscribe(realtime_pb2.SubscribeRequest(channel=TARGET, after_serial=0), metadata=metadata)
        next(first)
        second = stub.Subscribe(realtime_pb2.SubscribeRequest(channel=TARGET, after_serial=0), metadata=metadata)
        assert_refused(refusal(lambda: next(second)), grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED)
        first.cancel()


def test_revoking_by_subject_from_the_command_line(secure: Secure, honest: HonestWorkload) -> None:
    """`ringcast token` mints, `ringcast token revoke --sub` revokes every token of that subject issued
    before now (and none issued after)."""
    tls = ["--tls-dir", str(secure.tls_dir)]
    minted = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringcast_tools.cli",
            "token",
            "--sub",
            "dave",
            "--capability",
            '{"chat:*":["*"]}',
            *tls,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    link, stub, metadata = secure.realtime(minted)
    with link:
        stub.GetChannel(realtime_pb2.GetChannelRequest(channel=TARGET), metadata=metadata, timeout=10)
    time.sleep(1.1)  # tokens carry whole seconds: the revocation time must be after this one's iat
    revoked = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringcast_tools.cli",
            "token",
            "revoke",
            "--sub",
            "dave",
            "--etcd",
            secure.address("etcd"),
            *tls,
        ],
        capture_output=True,
        text=True,
    )
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + 2.0  # the gateways read revocations every 0.5 s
    while True:
        link, stub, metadata = secure.realtime(minted)
        with link:
            try:
                stub.GetChannel(realtime_pb2.GetChannelRequest(channel=TARGET), metadata=metadata, timeout=10)
            except grpc.RpcError as error:
                assert_refused(error, grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_REVOKED)
                break
        assert time.monotonic() < deadline, "the revocation did not reach the gateway"
    time.sleep(1.1)
    fresh = secure.token({"chat:*": ["*"]}, sub="dave")  # issued after the revocation: good
    link, stub, metadata = secure.realtime(fresh)
    with link:
        stub.GetChannel(realtime_pb2.GetChannelRequest(channel=TARGET), metadata=metadata, timeout=10)


@pytest.mark.slow
def test_two_second_tokens_over_a_minute_of_traffic_lose_nothing(secure: Secure) -> None:
    """Issue #16 item 2: the SDK renews its 2 s tokens for a minute of publishing and subscribing; the
    history checker finds nothing lost, duplicated or out of order."""
    workload = HonestWorkload(secure, run_s=60.0, prefix="minute")
    workload.start()
    workload.stop()


@pytest.mark.slow
def test_a_subscription_on_a_quiet_channel_outlives_many_tokens(secure: Secure) -> None:
    """Nothing is published for longer than four token lifetimes (each stream ends at its token's
    expiry plus the skew); the subscription renews and resumes each time, and still delivers."""

    async def provide() -> str:
        return secure.token({"quiet:*": ["*"]}, sub="quiet", ttl=1)

    async def scenario() -> tuple[list[int], int]:
        async with ringcast.Client(secure.launcher.topology.gateways, ca=secure.ca, token_provider=provide) as client:
            first = await client.publish("quiet:1", b"first")
            received: list[int] = []

            async def follow() -> None:
                async for message in client.subscribe("quiet:1", after=0):
                    received.append(message.serial)
                    if len(received) == 2:
                        return

            follower = asyncio.create_task(follow())
            await asyncio.sleep(4 * (1 + revocations.clock_skew_s) + 2)
            assert not follower.done(), follower
            await client.publish("quiet:1", b"second")
            await asyncio.wait_for(follower, 30)
            return [first, *received], client.stats.subscribe_resumes

    serials, resumes = asyncio.run(scenario())
    assert serials == [1, 1, 2] and resumes >= 4, (serials, resumes)


def test_redis_wants_its_store_user_and_password(tmp_path: Path) -> None:
    """With --engine redis a secure cluster's Redis has no default user: a client without the store's
    password is refused, the store logs in as its ACL user and serves."""
    import redis

    from ringcast_tools.cluster.launcher import Launcher
    from ringcast_tools.cluster.topology import local_topology, redis_password_file

    launcher = Launcher(local_topology(tmp_path / "data", tls_dir=tmp_path / "tls", engine="redis"), tmp_path)
    launcher.start_all()
    try:
        cluster = Secure(launcher)
        link, stub, metadata = cluster.realtime(cluster.token({"*": ["*"]}))
        with link:
            stub.Publish(
                realtime_pb2.PublishRequest(channel="redis:acl", messages=[message_pb2.Message(id="r1", data=b"x")]),
                metadata=metadata,
                timeout=30,
            )
        host, port = launcher.topology.named("redis-a").address.rsplit(":", 1)
        with (
            redis.Redis(host=host, port=int(port), socket_timeout=5) as anonymous,
            pytest.raises(redis.exceptions.AuthenticationError),
        ):
            anonymous.ping()  # default user off: NOAUTH
        password = redis_password_file(tmp_path / "tls", "store-a").read_text().strip()
        with redis.Redis(host=host, port=int(port), username="store-a", password=password, socket_timeout=5) as store:
            assert store.ping()
        assert [entry[1] for entry in cluster.history("redis:acl")] == ["r1"]
    finally:
        launcher.stop_all()


def test_the_honest_workload_lost_nothing_while_the_matrix_ran(secure: Secure, honest: HonestWorkload) -> None:
    """Last in the module (under xdist, the fixture's teardown on each worker): at least
    `honest_run_s` of traffic beside the rows, then the checker's verdict."""
    honest.stop()
