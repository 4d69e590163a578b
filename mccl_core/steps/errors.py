"""The steps' error type, in a module without heavy imports (the step CLIs load it for ``--help``)."""


class StepError(RuntimeError):
    """A pipeline step cannot go on; the message says why and what to fix."""
