"""The one error type users see: a single line naming the input and the fix."""


class AlbatError(Exception):
    """A problem with the user's input or work directory, reported without a traceback."""
