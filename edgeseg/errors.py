"""The one exception type for user-facing failures.

Raised where a problem with the user's input is understood (a missing prompts file, a checkpoint
that belongs to another model, ...). The CLI turns it into a single line on stderr and exit code 2.
Any other exception is a bug and may show a traceback.
"""


class EdgesegError(Exception):
    """A failure caused by the user's input or environment, with a message meant for them."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
