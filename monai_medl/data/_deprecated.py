# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The one pattern behind every deprecated ``monai_medl.data.<old>`` path: warn once on import, re-export the
moved module's public names."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["moved_module_shim"]


def moved_module_shim(old_name: str, moved: ModuleType) -> tuple[list[str], Callable[[str], Any]]:
    """Warn that ``old_name`` moved to ``moved`` and return the shim's ``__all__`` and module ``__getattr__``.

    Args:
        old_name: the deprecated module's dotted name (written out, since it is ``"__main__"`` under ``-m``).
        moved: the module that now holds the code.

    Example:
        >>> import json, warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     names, getter = moved_module_shim("old.json_path", json)
        >>> "old.json_path is deprecated" in str(caught[0].message), getter("dumps") is json.dumps
        (True, True)
    """
    warnings.warn(
        f"{old_name} is deprecated and will be removed in the next release; "
        f"import from {moved.__name__} (or monai_medl.data) instead.",
        DeprecationWarning,
        stacklevel=3,  # the importer of the shim, as the shim's own module-level warn said with stacklevel=2
    )

    def module_getattr(name: str) -> Any:
        return getattr(moved, name)

    return list(moved.__all__), module_getattr
