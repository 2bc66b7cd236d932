"""Generated from protos/ringcast/internal/v1 by scripts/gen_protos.py. Do not edit."""
