"""The one error type users see: a single line naming the thing that is wrong and the fix."""


class HarnessError(Exception):
    """A user-facing failure. ``str(err)`` is one line: what is wrong, where, and how to fix it."""

    def __init__(self, what: str, fix: str | None = None):
        message = what if fix is None else f"{what} -- fix: {fix}"
        super().__init__(" ".join(message.split()))
