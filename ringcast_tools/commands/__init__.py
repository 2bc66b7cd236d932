"""The subcommands of `ringcast`, one module per group."""
