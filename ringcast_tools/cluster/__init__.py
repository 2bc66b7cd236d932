"""Describing and running whole clusters of local processes (`ringcast up`, integration tests)."""
