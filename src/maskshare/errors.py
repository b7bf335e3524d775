"""Errors a user can cause: the CLI prints their message as one line and exits with 2."""


class UserError(Exception):
    """Bad input (a file, a spec, a config, a missing install step) the user can fix.

    The message says what to change. Internal errors are any other exception and keep
    their traceback.
    """
