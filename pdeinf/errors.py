"""One exception type for bad input, so the CLI can print one clear line and exit 2."""


class InputError(ValueError):
    """Bad user input (file, argument, shape, value). The message names what is wrong."""
