"""The errors a user can fix, and the one line each is shown as."""


class UserError(Exception):
    """A problem the user can fix (a missing file, a flag that does not fit): the run script prints its
    message as one line, after `prefix`, and exits with `exit_status`. Every such error derives from it,
    so that none can surface as a traceback."""
    exit_status = 1
    prefix = "error: "


def first_line(error):
    """Any exception as `Type: the first line of its message`, at most 200 characters of it."""
    text = (str(error).strip().splitlines() or [""])[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
