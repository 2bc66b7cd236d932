"""Generated from protos/ringcast/v1 by scripts/gen_protos.py. Do not edit."""
