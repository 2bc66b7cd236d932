"""The pure core of the platform: every state machine that decides, and none that does I/O.

Entries and their checksums, invariants, the placement ring, the replica log rules (with the
in-memory engine), quorum arithmetic, the channel role and node, and the history checker. Modules
here import only the standard library's pure parts and each other (tests/test_layout.py keeps it
so): no asyncio, threads, sockets, clocks, gRPC, etcd, Redis, SQLite, OpenTelemetry or Prometheus.
Adapters in services/{gateway,placement,channel,store} feed them inputs and carry out what they
return; the simulator (ringcast_tools/sim) drives the same code on a logical clock.
"""
