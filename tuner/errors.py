"""The one exception type the command line turns into a one-paragraph message."""


class TunerError(Exception):
    """Bad input or an unmet precondition: the message says what is wrong and what to do."""
