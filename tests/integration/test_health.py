"""A process whose background task died says so: health turns NOT_SERVING (services/common/server.py)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import server as common_server


def test_a_supervised_task_that_dies_takes_the_process_health_to_not_serving() -> None:
    async def scenario() -> None:
        grpc_server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        common_server._health = (servicer, ["ringcast.v1.Example"])
        try:
            for name in ("", "ringcast.v1.Example"):
                await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

            async def keeps_going() -> None:
                await asyncio.sleep(3600)

            async def dies() -> None:
                await asyncio.sleep(0.05)
                raise RuntimeError("a bug in a background loop")

            alive = common_server.supervise(asyncio.create_task(keeps_going()), "a task that is fine")
            common_server.supervise(asyncio.create_task(dies()), "the registration loop")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as link:
                stub = health_pb2_grpc.HealthStub(link)
                for _ in range(200):
                    answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.01)
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
                named = await stub.Check(health_pb2.HealthCheckRequest(service="ringcast.v1.Example"), timeout=1)
                assert named.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert "the registration loop ended" in common_server._failed
            alive.cancel()  # cancelling (shutting down) is no failure
        finally:
            common_server._health, common_server._failed = None, ""
            await grpc_server.stop(0)

    asyncio.run(scenario())
