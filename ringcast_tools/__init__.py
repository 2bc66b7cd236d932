"""The platform's tools, on the platform side of the house: the `ringcast` command line (operators'
and developers'), the cluster launcher and topology, the compose generator, the seeded simulator,
the chaos proxy and workloads, and the benchmark suite. They may import anything — the SDK, the core,
the services — and nothing imports them but the tests (tests/test_layout.py keeps it so)."""
