"""The errors reported as one line and a non-zero exit: bad user input (UserError), a run that diverged."""


class UserError(Exception):
    """A problem with what the user asked for (missing data, wrong checkpoint, bad flag value).

    Entry scripts catch it, print ``error: <message>`` on one line to stderr and exit with
    status 2, before anything in ``--save_dir`` has been written or overwritten.
    """

    exit_status = 2


class TrainingDiverged(UserError):
    """The training loss (or the weights) became NaN or infinite: the run stops at once.

    Nothing of the stretch that diverged is saved (no checkpoint, best model, ticket or plot), so
    every file of the run still holds the last finite state. Exit status 3, so that a sweep can
    tell a diverged run from a refused command line.
    """

    exit_status = 3


# What PIL raises for an empty, truncated or corrupt image file (its plugins use all of these); every
# image reader turns them into a UserError naming the file.
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError)
