"""The public contract, driven by a client we did not write: `buf curl` against a real cluster.

It finds the schema the way a user's tool does, through server reflection (v1 and v1alpha), and
decodes errors through it, so what it prints is what a user of grpcurl-like tools sees.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2

from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast_tools.cluster.launcher import Launcher
from services.common.errors import reason_of

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
buf_curl_timeout_s = 30.0


def curl(
    address: str, method: str, body: dict[str, Any], *, reflect: str = "", schema: bool = False
) -> tuple[int, Any]:
    """`buf curl` one unary call: (exit status, the JSON it printed: the response, or the error)."""
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run ./dev setup (it installs buf from npm)")
    arguments = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", "@-"]  # stdin
    if reflect:
        arguments += ["--reflect-protocol", reflect]
    if schema:
        arguments += ["--schema", str(ROOT / "protos")]
    done = subprocess.run(
        [*arguments, f"http://{address}/{method}"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        timeout=buf_curl_timeout_s,
    )
    printed = done.stdout if done.returncode == 0 else done.stderr
    return done.returncode, json.loads(printed) if printed.strip().startswith("{") else printed


@pytest.mark.parametrize("reflect", ["grpc-v1", "grpc-v1alpha"])
def test_reflection_v1_and_v1alpha_give_a_tool_the_schema(cluster: Launcher, reflect: str) -> None:
    gateway = cluster.topology.gateways[0]
    status, channel = curl(
        gateway, "ringcast.v1.RealtimeService/GetChannel", {"channel": "contract-r"}, reflect=reflect
    )
    assert status == 0, channel
    assert channel["name"] == "contract-r" and channel["owner"].startswith("channel-")


def test_health_list_answers_every_service(cluster: Launcher) -> None:
    status, listed = curl(cluster.topology.gateways[0], "grpc.health.v1.Health/List", {})
    assert status == 0, listed
    assert listed["statuses"]["ringcast.v1.RealtimeService"]["status"] == "SERVING"
    assert listed["statuses"][""]["status"] == "SERVING"


def test_an_error_carries_its_error_info_and_reflection_serves_its_type(cluster: Launcher) -> None:
    """buf curl prints a detail it has no Go type for as {type, value} (it decodes only types compiled
    into it), so this checks both halves: the detail is there, and reflection (v1 and v1alpha) hands
    any tool the descriptor of google.rpc.ErrorInfo to decode it with."""
    gateway = cluster.topology.gateways[0]
    body = {"channel": "bad name!", "messages": [{"id": "m1", "data": "aGk="}]}
    status, error = curl(gateway, "ringcast.v1.RealtimeService/Publish", body)
    assert status != 0 and error["code"] == "invalid_argument", error
    (detail,) = error["details"]
    assert detail["type"] == "google.rpc.ErrorInfo", detail
    info = error_details_pb2.ErrorInfo.FromString(
        base64.urlsafe_b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
    )
    assert (info.reason, info.domain) == ("CHANNEL_NAME_INVALID", "ringcast")
    for service in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
        with grpc.insecure_channel(gateway) as channel:
            info_call = channel.stream_stream(
                f"/{service}/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            asked = reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.rpc.ErrorInfo")
            (answer,) = list(info_call(iter([asked]), timeout=10))
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in answer.file_descriptor_response.file_descriptor_proto
        ]
        assert "google/rpc/error_details.proto" in [file.name for file in files], service


INVALID_UTF8_CHANNEL = b"\x0a\x02\xff\xfe"  # PublishRequest{channel: <2 bytes that are not UTF-8>}


def _raw_error(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    return error.code(), reason_of(error)


def test_an_undecodable_request_is_invalid_argument_with_a_reason_and_one_log_line(cluster: Launcher) -> None:
    gateway = cluster.topology.gateways[0]
    log_path = cluster.log_dir / "gateway-1.log"
    before = log_path.read_text(errors="replace")
    with grpc.insecure_channel(gateway) as channel:
        publish = channel.unary_unary("/ringcast.v1.RealtimeService/Publish")
        for _ in range(5):
            assert _raw_error(lambda: publish(INVALID_UTF8_CHANNEL, timeout=10)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "REQUEST_UNDECODABLE",
            )
        stream = channel.stream_stream("/ringcast.v1.RealtimeService/PublishStream")
        assert _raw_error(lambda: list(stream(iter([INVALID_UTF8_CHANNEL]), timeout=10))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_UNDECODABLE",
        )
        subscribe = channel.unary_stream("/ringcast.v1.RealtimeService/Subscribe")
        assert _raw_error(lambda: list(subscribe(INVALID_UTF8_CHANNEL, timeout=10))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_UNDECODABLE",
        )
    logged = log_path.read_text(errors="replace")[len(before) :]
    assert "Traceback" not in logged, logged
    assert logged.count("undecodable request") == 1, logged  # one line per client per minute


def _reason(error: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(code, reason, metadata) of an error buf curl printed (its ErrorInfo, decoded here)."""
    (detail,) = error["details"]
    value = detail["value"]
    info = error_details_pb2.ErrorInfo.FromString(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    return error["code"], info.reason, dict(info.metadata)


def _publish(gateway: str, channel: str, *ids: str) -> list[int]:
    body = {"channel": channel, "messages": [{"id": message_id, "data": "aGk="} for message_id in ids]}
    status, answer = curl(gateway, "ringcast.v1.RealtimeService/Publish", body)
    assert status == 0, answer
    return [int(serial) for serial in answer["serials"]]


def _last_serial(gateway: str, channel: str) -> int:
    status, answer = curl(gateway, "ringcast.v1.RealtimeService/GetChannel", {"channel": channel})
    assert status == 0, answer
    return int(answer.get("lastSerial", 0))


def _history(gateway: str, channel: str, **request: Any) -> tuple[int, Any]:
    return curl(gateway, "ringcast.v1.RealtimeService/History", {"channel": channel, **request})


def _serials(page: dict[str, Any]) -> list[int]:
    return [int(message["serial"]) for message in page.get("messages", [])]


def subscribe(address: str, body: dict[str, Any], count: int) -> tuple[list[dict[str, Any]], str]:
    """The first `count` responses of a `buf curl` Subscribe (then it is stopped), or what it printed
    on stderr when the stream ended first."""
    arguments = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", json.dumps(body)]
    process = subprocess.Popen(
        [*arguments, f"http://{address}/ringcast.v1.RealtimeService/Subscribe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # .bin/buf is a node shim that runs the binary: stop both
    )
    decoder = json.JSONDecoder()
    responses: list[dict[str, Any]] = []
    buffer = ""
    try:
        assert process.stdout is not None
        while len(responses) < count:
            line = process.stdout.readline()
            if not line:
                break  # the stream ended
            buffer += line
            try:
                response, end = decoder.raw_decode(buffer.strip())
            except json.JSONDecodeError:
                continue
            responses.append(response)
            buffer = buffer.strip()[end:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=buf_curl_timeout_s)
    return responses, stderr


def test_publish_history_both_ways_and_subscribe_with_a_plain_tool(cluster: Launcher) -> None:
    gateway = cluster.topology.gateways[0]
    channel = "contract-basics"
    assert _publish(gateway, channel, *(f"m{n}" for n in range(1, 11))) == list(range(1, 11))
    assert _publish(gateway, channel, "m3") == [3]  # a retry of a stored id: its original serial
    assert _last_serial(gateway, channel) == 10
    status, page = _history(gateway, channel, after_serial=4, limit=3)
    assert status == 0 and _serials(page) == [5, 6, 7], page
    for beyond in (0, 11, 1_000, 2**64 - 1):  # newest first: from the end, also from beyond it
        status, page = _history(gateway, channel, after_serial=str(beyond), limit=3, reverse=True)
        assert status == 0 and _serials(page) == [10, 9, 8], (beyond, page)
    responses, _ = subscribe(gateway, {"channel": channel, "after_serial": 7}, count=3)
    assert [int(response["message"]["serial"]) for response in responses] == [8, 9, 10]


def test_a_cursor_beyond_the_end_is_refused_never_served_as_a_silent_hole(cluster: Launcher) -> None:
    gateway = cluster.topology.gateways[1]
    channel = "contract-cursor"
    _publish(gateway, channel, "c1", "c2", "c3")
    status, page = _history(gateway, channel, after_serial=3)
    assert status == 0 and _serials(page) == [], page  # at the end: an empty page is the truth
    status, error = _history(gateway, channel, after_serial=8)
    assert status != 0 and _reason(error) == ("failed_precondition", "CURSOR_BEYOND_END", {"last_serial": "3"})
    responses, stderr = subscribe(gateway, {"channel": channel, "after_serial": 8}, count=1)
    assert responses == [], responses
    assert _reason(json.loads(stderr))[:2] == ("failed_precondition", "CURSOR_BEYOND_END"), stderr
    _publish(gateway, channel, "c4")
    responses, _ = subscribe(
        gateway, {"channel": channel, "after_serial": 3}, count=1
    )  # at the end: waits, then gets it
    assert [int(response["message"]["serial"]) for response in responses] == [4]


BAD_PUBLISHES = [
    ({"channel": "", "messages": [{"id": "x"}]}, "CHANNEL_NAME_EMPTY", {}),
    ({"channel": "bad name!", "messages": [{"id": "x"}]}, "CHANNEL_NAME_INVALID", {}),
    ({"channel": "c" * 257, "messages": [{"id": "x"}]}, "CHANNEL_NAME_TOO_LONG", {"limit": "256"}),
    ({"channel": "contract-bad", "messages": []}, "BATCH_EMPTY", {}),
    (
        {"channel": "contract-bad", "messages": [{"id": f"b{n}"} for n in range(101)]},
        "BATCH_TOO_MANY_MESSAGES",
        {"limit": "100"},
    ),
    (
        {
            "channel": "contract-bad",
            "messages": [{"id": f"b{n}", "data": base64.b64encode(b"x" * 60_000).decode()} for n in range(20)],
        },
        "BATCH_TOO_LARGE",
        {"limit": "1048576"},
    ),
    ({"channel": "contract-bad", "messages": [{"data": "aGk="}]}, "MESSAGE_ID_MISSING", {}),
    ({"channel": "contract-bad", "messages": [{"id": "i" * 129}]}, "MESSAGE_ID_TOO_LONG", {"limit": "128"}),
    ({"channel": "contract-bad", "messages": [{"id": "line\nbreak"}]}, "MESSAGE_ID_INVALID", {}),
    ({"channel": "contract-bad", "messages": [{"id": "bell\u0007"}]}, "MESSAGE_ID_INVALID", {}),
    (
        {"channel": "contract-bad", "messages": [{"id": "n", "name": "n" * 257}]},
        "MESSAGE_NAME_TOO_LONG",
        {"limit": "256"},
    ),
    (
        {"channel": "contract-bad", "messages": [{"id": "d", "data": base64.b64encode(b"x" * 70_000).decode()}]},
        "MESSAGE_TOO_LARGE",
        {"limit": "65536"},
    ),
    (
        {"channel": "contract-bad", "messages": [{"id": "h", "headers": {f"k{n}": "v" for n in range(65)}}]},
        "TOO_MANY_HEADERS",
        {"limit": "64"},
    ),
    ({"channel": "contract-bad", "messages": [{"id": "h", "headers": {"": "v"}}]}, "HEADER_INVALID", {"limit": "1024"}),
    ({"channel": "contract-bad", "messages": [{"id": "s", "serial": "5"}]}, "PLATFORM_FIELD_SET", {}),
    ({"channel": "contract-bad", "messages": [{"id": "dup"}, {"id": "dup"}]}, "DUPLICATE_ID_IN_BATCH", {}),
]


@pytest.mark.parametrize(
    ("body", "reason", "metadata"),
    BAD_PUBLISHES,
    ids=[case[1] + str(index) for index, case in enumerate(BAD_PUBLISHES)],
)
def test_bad_input_through_a_plain_tool_gets_its_reason_and_its_limit_and_stores_nothing(
    cluster: Launcher, body: dict[str, Any], reason: str, metadata: dict[str, str]
) -> None:
    gateway = cluster.topology.gateways[0]
    _publish(gateway, "contract-bad", "first")  # the channel exists, with one message
    before = _last_serial(gateway, "contract-bad")
    status, error = curl(gateway, "ringcast.v1.RealtimeService/Publish", body)
    assert status != 0, error
    assert _reason(error) == ("invalid_argument", reason, metadata), error
    assert _last_serial(gateway, "contract-bad") == before  # nothing stored, nothing partial


def test_a_frame_beyond_grpcs_limit_is_resource_exhausted_as_documented(cluster: Launcher) -> None:
    """Refused by gRPC before any handler runs (docs/architecture.md, Errors): RESOURCE_EXHAUSTED,
    with no ErrorInfo, so the SDK's reason is the code's name; nothing is stored."""
    gateway = cluster.topology.gateways[0]
    big = realtime_pb2.PublishRequest(
        channel="contract-huge", messages=[message_pb2.Message(id="h", data=b"x" * (9 << 20))]
    )
    with grpc.insecure_channel(gateway, options=[("grpc.max_send_message_length", 16 << 20)]) as channel:
        publish = channel.unary_unary("/ringcast.v1.RealtimeService/Publish")
        assert _raw_error(lambda: publish(big.SerializeToString(), timeout=30)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RESOURCE_EXHAUSTED",
        )
    assert _last_serial(gateway, "contract-huge") == 0
