"""The errors a user can cause, each with a message that says what to change.

Anything else that escapes reverie is a bug and keeps its traceback.
"""


class ReverieError(Exception):
    """Base class for every error a user can cause and fix."""


class BadRequest(ReverieError):
    """A request field is out of range or inconsistent; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class PromptSyntaxError(ReverieError):
    """A prompt could not be parsed; `position` is the 0-based character offset."""

    def __init__(self, prompt: str, position: int, message: str):
        self.prompt = prompt
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"prompt syntax error at position {position}: {message}\n  {prompt}\n  {caret}")


class ModelNotFound(ReverieError):
    """A model reference names nothing that can be loaded here."""


class BadCheckpoint(ReverieError):
    """A model file exists but is damaged, unsafe, or not a model reverie understands."""


class ImageInputError(ReverieError):
    """An input image or mask is missing, unreadable, or the wrong size."""


class OutOfMemory(ReverieError):
    """A request would not fit in the memory of the chosen device."""
