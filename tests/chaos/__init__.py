"""The chaos tier: faults injected into a cluster of real processes (`pytest -m chaos tests/chaos`)."""
