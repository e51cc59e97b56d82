"""The one exception type a user sees: a short message, no traceback, a non-zero exit."""


class RlaifError(Exception):
    """A problem with the user's input or environment that rlaif can name in one sentence.

    The CLI prints ``error: <message>`` and exits with status 2. Anything else that escapes is a bug
    in rlaif and keeps its traceback.
    """
