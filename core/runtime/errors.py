"""Errors a user can act on. The CLI prints their message on one line; the GUI shows it in a dialog."""


class UserError(Exception):
    """Bad input or a missing resource, described in one line that says what is wrong and what to do."""


class Cancelled(Exception):
    """Long work (segmentation, factorisation) stopped because the user asked; not an error to report."""
