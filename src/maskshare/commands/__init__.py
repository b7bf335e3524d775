"""The command line: one module per `maskshare` command (`add_arguments(parser)`,
`run(args) -> int`), dispatched by `maskshare.cli`.

May import: every part of the library. Nothing in the library imports it.
"""
