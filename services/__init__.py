"""ringcast services: placement, store, channel and gateway.

Each service is a pure core (no I/O, no clock, no asyncio) with a thin adapter around it. The cores
are what the seeded simulator in `ringcast_tools.sim` drives; the adapters make them gRPC servers.
"""
