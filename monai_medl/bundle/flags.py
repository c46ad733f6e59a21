# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""On/off config values that may arrive as booleans (JSON) or as words (``--key true`` on the command line)."""

from __future__ import annotations

from typing import Any

__all__ = ["as_flag"]

_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def as_flag(value: Any, name: str = "value") -> bool:
    """``value`` as a bool: ``True``/``False``, ``1``/``0`` or one of the words true/false, yes/no, on/off.

    ``python -m monai.bundle run ... --key false`` hands the config the *string* ``"false"``, which an expression
    such as ``"$not @key"`` would read as true; bundle configs pass on/off keys through this function instead.

    Args:
        value: the config value.
        name: the config key, for the error message.

    Raises:
        ValueError: naming the key and the accepted values, for anything else.

    Example::

        >>> as_flag("false"), as_flag(True), as_flag("Yes"), as_flag(0)
        (False, True, True, False)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    raise ValueError(f"config key {name!r} must be true or false (or yes/no, on/off, 1/0), got {value!r}.")
