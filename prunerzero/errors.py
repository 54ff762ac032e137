"""One exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """A problem the user can fix; the message says how, on one line."""


class PrunerzeroWarning(UserWarning):
    """Something the user should know and may want to change; the CLI prints it on one line ("warning: ...")."""
