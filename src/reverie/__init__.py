"""reverie: an open-source AI art studio."""

__version__ = "0.1.0"


def __getattr__(name):
    # Importing torch and diffusers takes seconds: only pay for it when the API is used.
    if name == "Studio":
        from .studio import Studio

        return Studio
    if name == "make_request":
        from .studio import make_request

        return make_request
    raise AttributeError(name)
