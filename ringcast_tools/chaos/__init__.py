"""Faults and histories against real clusters.

`ringcast_tools.chaos.proxy` is the TCP fault proxy the topology can place on a link (blackhole, reset,
delay, drop); `ringcast_tools.chaos.workload` records a history for the checker. Kills, pauses and
restarts are `ringcast chaos` (`ringcast_tools/commands/chaos.py`) and `Launcher` methods.
"""
