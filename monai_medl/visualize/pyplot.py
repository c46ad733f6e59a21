# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""matplotlib's pyplot for figures written to files, imported only when a figure is drawn."""

from __future__ import annotations

from typing import Any

__all__ = ["file_pyplot"]


def file_pyplot(caller: str) -> Any:
    """``matplotlib.pyplot`` on the ``Agg`` backend (files only: never opens a window, works without a display).

    Args:
        caller: the function that draws, named in the error when matplotlib is missing.

    Raises:
        ImportError: ``"<caller> needs matplotlib: pip install monai-medl[plot]"``.

    Example::

        >>> file_pyplot("my_figure").get_backend().lower()
        'agg'
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"{caller} needs matplotlib: pip install monai-medl[plot]") from err
    return plt
