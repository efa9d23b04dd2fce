"""Turning an exception into the one line that a user is shown."""


def first_line(error):
    """An exception as `Type: first line of its message`, at most 200 characters; never raises.

    Args:
        error: BaseException: any exception, including one with an empty message (EOFError)

    Returns:
        line: str
    """
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
