"""The one exception type for bad user input, reported as a single line and a non-zero exit."""


class UserError(Exception):
    """A problem with what the user asked for (missing data, wrong checkpoint, bad flag value).

    Entry scripts catch it, print ``error: <message>`` on one line to stderr and exit with
    status 2, before anything in ``--save_dir`` has been written or overwritten.
    """


# What PIL raises for an empty, truncated or corrupt image file (its plugins use all of these); every
# image reader turns them into a UserError naming the file.
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError)
