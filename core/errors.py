"""Errors a user can act on. The CLI prints their message on one line; the GUI shows it in a dialog."""


class UserError(Exception):
    """Bad input or a missing resource, described in one line that says what is wrong and what to do."""
