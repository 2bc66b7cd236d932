"""The platform's generated internal stubs (see v1/)."""
