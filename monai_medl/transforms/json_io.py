# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""JSON files for fitted preprocessing state (site vocabularies, intensity statistics)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["JsonFileMixin"]


class JsonFileMixin:
    """``to_json``/``from_json`` for a class that has ``to_dict``/``from_dict``, with errors naming the file.

    Subclasses set ``json_description`` (e.g. ``"site vocabulary"``) for the error messages.
    """

    json_description = "JSON"

    if TYPE_CHECKING:  # what the mixin needs from its class (declared for the type checker only)

        def to_dict(self) -> dict[str, Any]: ...

        @classmethod
        def from_dict(cls, data: Mapping[str, Any]) -> Self: ...

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``self.to_dict()`` to ``path`` as indented JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Self:
        """Read an object written by :meth:`to_json`; a malformed file raises ValueError naming it."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cls.json_description} file {os.fspath(path)!r} is not valid JSON: {e}") from e
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cls.json_description} file {os.fspath(path)!r}: {e}") from e
