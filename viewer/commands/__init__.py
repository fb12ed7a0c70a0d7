"""Subcommands of the `viewer` command: one module per subcommand, each exposing register(sub).

Modules here only parse their arguments and call into viewer.*; they never hold logic of their own.
"""
