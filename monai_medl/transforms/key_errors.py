# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Error messages of dictionary transforms that name the data key being processed."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager

__all__ = ["errors_name_key"]


@contextmanager
def errors_name_key(key: Hashable) -> Iterator[None]:
    """Re-raise a ``TypeError``/``ValueError`` from the block with ``key {key!r}: `` in front of its message.

    A dictionary transform applies the same array transform to several keys; the key tells the user which entry of
    the sample was wrong. The exception type is kept, and the original is chained.

    Example::

        >>> d = {"site": "three"}
        >>> with errors_name_key("site"):
        ...     int(d["site"])
        Traceback (most recent call last):
        ...
        ValueError: key 'site': invalid literal for int() with base 10: 'three'
    """
    try:
        yield
    except (TypeError, ValueError) as e:
        raise type(e)(f"key {key!r}: {e}") from e
