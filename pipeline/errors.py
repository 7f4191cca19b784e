"""The one base class of every error that is the user's to fix (bad params, data, manifests).

Stage entry points catch it and print its message without a traceback; anything else is a bug
and keeps its traceback.
"""


class ApexLoopError(ValueError):
    """A problem with the user's input; the message names the file, row or key and what to do."""
