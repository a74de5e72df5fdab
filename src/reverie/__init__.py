"""reverie: an open-source AI art studio."""

__version__ = "0.1.0"


def __getattr__(name):
    # Importing torch and diffusers takes seconds: only pay for it when the API is used.
    if name == "Studio":
        from .studio import Studio

        return Studio
    if name in ("GenerationRequest", "make_request"):
        from . import request

        return getattr(request, name)
    raise AttributeError(name)
