"""The channel role's state table (services/core/role/states.py): whole, and true to what it says."""

from __future__ import annotations

import ast
import inspect

import pytest

from services.core import role as role_package
from services.core.entries import Message, Position
from services.core.invariants import InvariantViolation
from services.core.replica_log import AppendReply, AppendStatus, FenceReply, ReadReply
from services.core.role import INPUTS, TRANSITIONS, AppendRequest, ChannelRole, Handling, ReadRequest, RoleState
from services.core.role.channel_role import ChannelRole as RoleClass
from tests.core.role_harness import Replicas, take_over


def test_the_table_names_every_input_for_every_state_and_every_input_goes_through_it() -> None:
    for name, row in INPUTS.items():
        assert set(row) == set(RoleState), f"{name}: a state is missing"
    assert set(TRANSITIONS) == set(RoleState)
    # Each public method of ChannelRole that takes an input asks the table, under its own name.
    source = ast.parse(inspect.getsource(RoleClass))
    asked = {}
    for node in source.body[0].body:  # type: ignore[attr-defined]
        queries = any(isinstance(d, ast.Name) and d.id == "property" for d in getattr(node, "decorator_list", []))
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and not queries:
            calls = [
                call.args[0].value
                for call in ast.walk(node)
                if isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("_input", "_admits")
                and isinstance(call.args[0], ast.Constant)
            ]
            asked[node.name] = calls
    inputs = {method: calls for method, calls in asked.items() if calls}
    assert sorted(name for calls in inputs.values() for name in calls) == sorted(INPUTS)
    assert {method for method, calls in asked.items() if not calls} == set(), "a public input skips the table"


def test_a_move_the_table_does_not_list_trips_an_invariant() -> None:
    role = take_over(Replicas(), epoch=7)
    assert role.state is RoleState.SERVING
    with pytest.raises(InvariantViolation, match="no transition SERVING → FENCING"):
        role._enter(RoleState.FENCING)
    role.stop("CHANNEL_MOVED")
    with pytest.raises(InvariantViolation, match="no transition STOPPED → SERVING"):
        role._enter(RoleState.SERVING)


def test_an_impossible_input_trips_an_invariant_instead_of_vanishing() -> None:
    role = ChannelRole("ch", 7, role_package.RoleConfig(), 0)
    role.start()
    assert role.state is RoleState.FENCING and INPUTS["append_reply"][RoleState.FENCING] is Handling.IMPOSSIBLE
    request = AppendRequest("ch", 7, Position(0, 0), (), 1)
    reply = AppendReply(AppendStatus.OK, 7, Position(0, 0))
    with pytest.raises(InvariantViolation, match="append_reply while FENCING"):
        role.on_append_reply("store-a", request, reply, 0)


def test_stale_inputs_are_dropped_and_reported() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    late = role.on_fence_reply("store-c", FenceReply(False, 7, Position(0, 0)), 5)
    assert [(s.input, s.state) for s in late.stale] == [("fence_reply", "serving")]
    assert not late.sends and role.state is RoleState.SERVING
    unknown = ReadRequest("ch", 7, 0, 10, 12_345)  # a read the role no longer waits for (timed out)
    dropped = role.on_read_reply("store-a", unknown, ReadReply((), Position(0, 0)), 5)
    assert [(s.input, s.state) for s in dropped.stale] == [("read_reply", "serving")] and not dropped.sends
    role.stop("FENCED")
    read = ReadRequest("ch", 7, 0, 10, 99)
    after = role.on_read_reply("store-a", read, ReadReply((), Position(0, 0)), 6)
    assert [(s.input, s.state) for s in after.stale] == [("read_reply", "stopped")]


def test_publishes_queue_during_a_takeover_and_are_refused_once_stopped() -> None:
    replicas = Replicas()
    role = ChannelRole("ch", 7, role_package.RoleConfig(), 0)
    effects = role.start()
    queued = role.publish(1, (Message("m1"),), 0)
    assert role.state is RoleState.FENCING and not queued.results and len(role.queued) == 1
    effects.extend(queued)
    replicas.run(role, effects)
    assert role.state is RoleState.SERVING
    assert [(token, result.ok, result.serials) for token, result in effects.results] == [(1, True, (1,))]
    assert not role.tick(10).stale
    role.stop("FENCED")
    refused = role.publish(2, (Message("m2"),), 20)
    assert [(token, result.reason, result.retryable) for token, result in refused.results] == [
        (2, "CHANNEL_MOVED", True)
    ]
    assert [d.end_reason for _, d in role.subscribe(3, 0, 20).deliveries] == ["CHANNEL_MOVED"]
    assert [h.reason for _, h in role.read_history(4, 0, 10, 20).histories] == ["CHANNEL_MOVED"]
    assert role.tick(30) == role_package.Effects()  # nothing to do once stopped
    assert role.stop("IDLE") == role_package.Effects()
