"""ringcast: fault-tolerant realtime pub/sub. The Python SDK and the `ringcast` command."""

__all__: list[str] = []
__version__ = "0.1.0"
