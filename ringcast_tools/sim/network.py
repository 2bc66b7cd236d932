"""The simulated network: drops, delays, duplicates, reorders and partitions, from the run's generator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ringcast_tools.sim.config import SimConfig

if TYPE_CHECKING:
    from ringcast_tools.sim.cluster import Simulation


class Network:
    """Links with delay, loss, duplication and reordering; partitions cut links both ways."""

    def __init__(self, sim: Simulation, config: SimConfig) -> None:
        self.sim = sim
        self.config = config
        self.cut: dict[tuple[str, str], int] = {}  # (a, b) sorted → number of partitions cutting it
        self.drop_probability = config.drop_probability

    def connected(self, a: str, b: str) -> bool:
        return (a, b) not in self.cut and (b, a) not in self.cut

    def send(
        self, source: str, destination: str, payload: tuple[Any, ...], *, reliable: bool = False, lag_ms: int = 0
    ) -> None:
        sim = self.sim
        if not self.connected(source, destination):
            sim.stats["dropped_partition"] += 1
            return
        rng = sim.rng
        if not reliable and rng.random() < self.drop_probability:
            sim.stats["dropped_random"] += 1
            return
        # A client's publish is never duplicated in flight: a gRPC call is delivered once or not at
        # all, and an answer (say NOT_OWNER) is final for that attempt. Everything between servers
        # may be duplicated, as if resent.
        duplicable = not reliable and payload[0] != "publish"
        copies = 2 if duplicable and rng.random() < self.config.duplicate_probability else 1
        for _ in range(copies):
            delay = 1 + rng.randrange(self.config.delay_max_ms) + (rng.randrange(lag_ms) if lag_ms else 0)
            if payload[0] == "ring" and sim.slow_watch.get(destination, 0) > sim.now:
                delay += rng.randrange(200, 600)
            if rng.random() < self.config.spike_probability:
                delay += rng.randrange(50, 250)
            sim.at(sim.now + delay, sim.deliver, (source, destination, payload, sim.incarnation_of(source)))
