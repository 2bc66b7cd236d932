"""Faults and histories against real clusters.

`ringcast.chaos.proxy` is the TCP fault proxy the topology can place on a link (blackhole, reset,
delay, drop); `ringcast.chaos.workload` records a history for the checker. Kills, pauses and
restarts are `ringcast chaos` (`ringcast/commands/chaos.py`) and `Launcher` methods.
"""
