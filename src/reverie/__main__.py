"""`python -m reverie ...`: the same as the `reverie` command."""

from .cli import entry

entry()
