"""Training data: the built-in sources (openly licensed emoji and icon art) and the folder format.

`build_dataset` turns the pinned npm packages into a folder of PNG + caption files;
`ImageCaptionFolder` reads any such folder, including one a user made by hand; `read_splits`
tells a built dataset's train/ and test/ splits from a plain folder of pictures.
"""

from .build import DatasetError, build_dataset
from .folder import ImageCaptionFolder, Splits, read_splits
from .sources import SOURCES, Entry, Item, Source, iter_items, list_entries

__all__ = ["DatasetError", "Entry", "ImageCaptionFolder", "Item", "SOURCES", "Source", "Splits", "build_dataset",
           "iter_items", "list_entries", "read_splits"]
