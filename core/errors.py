"""The one exception type for bad input: the CLI prints its message as a single line and exits 1."""


class LlmcError(Exception):
    """A user-facing error: bad file, bad flag, bad data. Never a bug."""
