"""The exception types of pdeinf; the CLI prints any of them as one line and exits non-zero:
2 for an `InputError` (something the user passed is wrong: file, argument, shape, value, name;
a ValueError, so callers that catch ValueError keep working), 1 for a `NumericalError` (a
computation failed on valid input: a singular metric with damping 0, non-finite gradients, a
diverging solver, a NaN loss)."""


class PdeinfError(Exception):
    """Base of every error pdeinf raises on purpose; the message names what is wrong."""


class InputError(PdeinfError, ValueError):
    """Bad user input (file, argument, shape, value). The message names what is wrong."""


class NumericalError(PdeinfError, ArithmeticError):
    """A numerical failure on valid input (singular system, NaN/Inf, divergence)."""
