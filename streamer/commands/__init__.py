"""Subcommands of the `streamer` command: each module adds its parser and a handler; only cli.py reads argv."""
