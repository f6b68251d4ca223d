"""The one exception type for bad input from a user.

Library code raises `UserError` (or a subclass) when the input is wrong, not the code:
a missing file, a bad value, a corpus too small. The CLI turns it into a one-line
message and exit status 2; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user; the message names the problem and the value."""
