"""Fuzzing a real, secure gateway (issue #16, item 7; slow tier).

Hypothesis makes every public request (Publish, History, GetChannel, Subscribe) with any field
values, raw frames are mutated a byte at a time or made up whole, and token strings are garbled,
while an honest workload publishes and subscribes beside it. Every answer must be OK or a documented
code with a google.rpc.ErrorInfo whose reason is in `ringcast.Reason` (never UNKNOWN, never
INTERNAL); no process may log a traceback; and the history checker must find nothing lost or
duplicated in what the honest workload was acknowledged and delivered.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from services.common.errors import error_info
from tests.integration import secure_cluster
from tests.integration.secure_cluster import HonestWorkload, Secure

pytestmark = pytest.mark.slow

examples = int(os.environ.get("RINGCAST_FUZZ_EXAMPLES", "150"))
"""Examples per strategy (each one a real call)."""

KNOWN_REASONS = {str(reason) for reason in Reason}
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}

FUZZ = settings(
    max_examples=examples,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    cluster = secure_cluster.start(tmp_path_factory.mktemp("fuzz"))
    try:
        yield cluster
    finally:
        cluster.launcher.stop_all()
    tracebacks = {
        log.name: excerpt
        for log in Path(cluster.launcher.log_dir).glob("*.log")
        if (excerpt := traceback_in(log.read_text(errors="replace")))
    }
    assert not tracebacks, "tracebacks in " + "\n\n".join(f"{name}:\n{text}" for name, text in tracebacks.items())


def traceback_in(logged: str, lines_around: int = 40) -> str:
    """The first traceback in `logged` with the lines before and after it ("" if none), so a failure
    in CI says what went wrong without its logs."""
    lines = logged.splitlines()
    for number, line in enumerate(lines):
        if "Traceback" in line:
            return "\n".join(lines[max(0, number - 5) : number + lines_around])
    return ""


@pytest.fixture(scope="module")
def admin(secure: Secure) -> str:
    """Everything allowed, and a rate far above what the fuzzer sends: the fuzz reaches validation."""
    return secure.token({"*": ["*"]}, sub="fuzzer", ttl=3600, limits={"publish_rate": 1e6, "subscriptions": 10_000})


def judged(error: grpc.RpcError) -> None:
    """A refusal the contract allows: a documented code with an ErrorInfo naming a known reason."""
    assert error.code() not in NEVER, (error.code(), error.details())
    info = error_info(error)
    assert info is not None, (error.code(), error.details())
    assert info.reason in KNOWN_REASONS, (info.reason, error.details())


def answered(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        judged(error)


texts = st.text(max_size=300) | st.sampled_from(["", "a", "chat:x", "a" * 257, "bad\nname", "\x00", "é:ü:*"])
messages = st.builds(
    message_pb2.Message,
    id=texts,
    name=texts,
    data=st.binary(max_size=70_000),
    headers=st.dictionaries(st.text(max_size=40), st.text(max_size=40), max_size=70),
    serial=st.integers(0, 2**64 - 1) | st.just(0),
    timestamp_ms=st.integers(-(2**63), 2**63 - 1) | st.just(0),
    client_id=st.text(max_size=20) | st.just(""),
)
publishes = st.builds(
    realtime_pb2.PublishRequest,
    channel=texts,
    messages=st.lists(messages, max_size=5) | st.lists(messages, max_size=120),
)
histories = st.builds(
    realtime_pb2.HistoryRequest,
    channel=texts,
    after_serial=st.integers(0, 2**64 - 1),
    limit=st.integers(0, 2**32 - 1),
    reverse=st.booleans(),
)
subscribes = st.one_of(
    st.builds(realtime_pb2.SubscribeRequest, channel=texts, after_serial=st.integers(0, 2**64 - 1)),
    st.builds(realtime_pb2.SubscribeRequest, channel=texts, rewind=st.integers(0, 2**32 - 1)),
    st.builds(realtime_pb2.SubscribeRequest, channel=texts, batch_max=st.integers(0, 2**32 - 1)),
)


def test_every_public_request_is_answered_or_refused_with_a_reason(
    secure: Secure, honest: HonestWorkload, admin: str
) -> None:
    link, stub, metadata = secure.realtime(admin)
    with link:

        @FUZZ
        @given(publish=publishes, history=histories, channel=texts)
        def unary(publish: realtime_pb2.PublishRequest, history: realtime_pb2.HistoryRequest, channel: str) -> None:
            answered(lambda: stub.Publish(publish, metadata=metadata, timeout=30))
            answered(lambda: stub.History(history, metadata=metadata, timeout=30))
            answered(
                lambda: stub.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), metadata=metadata, timeout=30)
            )

        @FUZZ
        @given(request=subscribes)
        def streams(request: realtime_pb2.SubscribeRequest) -> None:
            call = stub.Subscribe(request, metadata=metadata, timeout=30)
            try:
                call.initial_metadata()  # the subscription is in place, or refused at once...
                if call.done() and call.code() != grpc.StatusCode.OK:
                    judged(call)
            finally:
                call.cancel()  # ...and ends here

        unary()
        streams()


def test_mutated_and_made_up_frames_are_refused_with_a_reason(
    secure: Secure, honest: HonestWorkload, admin: str
) -> None:
    valid = realtime_pb2.PublishRequest(
        channel="fuzz:frames", messages=[message_pb2.Message(id="f", data=b"payload", headers={"k": "v"})]
    ).SerializeToString()
    link, _, metadata = secure.realtime(admin)
    with link:
        raw = {
            method: link.unary_unary(f"/ringcast.v1.RealtimeService/{method}")
            for method in ("Publish", "History", "GetChannel")
        }

        @FUZZ
        @given(
            method=st.sampled_from(sorted(raw)),
            frame=st.one_of(
                st.binary(max_size=2_000),
                st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
                    lambda edit: valid[: edit[0]] + bytes([edit[1]]) + valid[edit[0] + 1 :]
                ),
                st.integers(0, len(valid)).map(lambda cut: valid[:cut]),
            ),
        )
        def frames(method: str, frame: bytes) -> None:
            answered(lambda: raw[method](frame, metadata=metadata, timeout=30))

        frames()


def test_garbled_tokens_are_refused_as_tokens(secure: Secure, honest: HonestWorkload, admin: str) -> None:
    request = realtime_pb2.GetChannelRequest(channel="fuzz:tokens")

    @FUZZ
    @given(
        token=st.one_of(
            st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=500),
            st.lists(st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode()), max_size=4).map(
                ".".join
            ),
            st.tuples(st.integers(0, len(admin) - 1), st.sampled_from("abcXYZ019-_.")).map(
                lambda edit: admin[: edit[0]] + edit[1] + admin[edit[0] + 1 :]
            ),
        )
    )
    def garbled(token: str) -> None:
        link, stub, metadata = secure.realtime(token)
        with link:
            try:
                stub.GetChannel(request, metadata=metadata, timeout=30)
            except grpc.RpcError as error:
                judged(error)
                assert error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (
                    error.code(),
                    error.details(),
                )
            else:
                assert token == admin or token.strip() == admin, "a garbled token was taken"

    garbled()


def test_the_honest_workload_lost_nothing_while_the_fuzzer_ran(secure: Secure, honest: HonestWorkload) -> None:
    honest.stop()
