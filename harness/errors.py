"""The one error type users see: a single line naming the thing that is wrong and the fix."""


class HarnessError(Exception):
    """A user-facing failure. ``str(err)`` is one line: what is wrong, where, and how to fix it."""

    def __init__(self, what: str, fix: str | None = None):
        message = what if fix is None else f"{what} -- fix: {fix}"
        super().__init__(" ".join(message.split()))


EXIT_BAD_INPUT = 2  # a HarnessError: bad input, one line on stderr
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a process whose loop was preempted (state saved; run it again to resume)


class Preempted(Exception):
    """A training loop stopped on SIGTERM/SIGUSR1 after saving its state; a rerun resumes at ``step``."""

    def __init__(self, stage: str, step: int, state_path):
        self.stage, self.step, self.state_path = stage, step, state_path
        super().__init__(f"{stage}: preempted at step {step}; state saved to {state_path}; rerun to resume")
