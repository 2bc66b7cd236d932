"""Types and helpers shared by every core: messages, log entries, positions, invariant checks."""
