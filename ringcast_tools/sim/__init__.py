"""The seeded cluster simulator: see `ringcast_tools.sim.cluster` for the model, `runner` for many seeds."""

from ringcast_tools.sim.cluster import SimConfig, SimResult, Simulation, run_seed

__all__ = ["SimConfig", "SimResult", "Simulation", "run_seed"]
