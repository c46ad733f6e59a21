# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Quoted results that name their source: a number in the docs is a markdown link to the value it quotes.

A quoted result is written ``[0.830](benchmarks/results/multimodal.json#/models/me_multimodal/unseen/mean)``: the
link text is the number as printed, the target the results file (relative to the document, as markdown links are)
and a JSON pointer (RFC 6901; ``%20`` for a space, ``~1`` for ``/``) to the value. A suffix ``*1000`` on the pointer
says the number is quoted in thousandths (MSEs in 1e-3 units). :func:`check_document` verifies that every quoted
number is such a link and that the value it points to, rounded to the printed decimals, is exactly the number
printed; :func:`cite` writes the link, so that tables rendered from the JSON carry their sources.

Example::

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "r.json").write_text(json.dumps({"models": {"me": {"seen": {"mean": 0.8351}}}}))
    >>> link = cite(folder / "r.json", "/models/me/seen/mean", folder)
    >>> link
    '[0.835](r.json#/models/me/seen/mean)'
    >>> _ = (folder / "doc.md").write_text(f"AUROC {link}; typed by hand 0.912.")
    >>> [problem.split(":")[-1].strip() for problem in check_document(folder / "doc.md")]
    ['0.912 is not a link to a results value']
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["QUOTED_NUMBER", "quoted_numbers", "resolve", "format_value", "cite", "check_document"]

# three or more decimals: hyper-parameters and versions have fewer; 4-digit integer parts are ids (arXiv 2211.02701)
QUOTED_NUMBER = re.compile(r"(?<![\w.])[-+]?\d{1,3}\.\d{3,}(?!\w|\.\d)")
_LINK = re.compile(r"\[(?P<text>[^\]\[]*)\]\((?P<target>[^)\s]+)\)")
# not prose: code blocks, inline code (settings such as `sigma ~ U(0.003, 0.05)`) and the cards' generated blocks
_SKIPPED = (
    re.compile(r"```.*?```", re.S),
    re.compile(r"`[^`\n]*`"),
    re.compile(r"<!-- evaluation:begin -->.*?<!-- evaluation:end -->", re.S),
)


def _blank(match: re.Match) -> str:
    return re.sub(r"[^\n]", " ", match.group(0))  # keep offsets and line numbers


def _prose(text: str) -> str:
    """The text with code blocks, inline code and generated evaluation blocks blanked out (they are not prose)."""
    for pattern in _SKIPPED:
        text = pattern.sub(_blank, text)
    return text


def quoted_numbers(text: str) -> list[str]:
    """The quoted results of a markdown text (outside code and generated evaluation blocks), signs removed."""
    return [m.group(0).lstrip("+-") for m in QUOTED_NUMBER.finditer(_prose(text))]


@lru_cache(maxsize=64)
def _load(path: str, mtime: float) -> Any:
    return json.loads(Path(path).read_text())


def resolve(results_file: str | os.PathLike, pointer: str) -> float:
    """The number at JSON ``pointer`` (``/models/me/seen/mean``, ``/models/me/seen/ci95/0``) of ``results_file``.

    Raises:
        KeyError: naming the file and the first part of the pointer that does not exist.
        TypeError: if the pointer ends on something that is not a number.
    """
    path = Path(results_file)
    node = _load(str(path), path.stat().st_mtime)
    walked = ""
    for raw in pointer.lstrip("/").split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        walked += "/" + raw
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"{path}: no {walked!r} (pointer {pointer!r})")
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise TypeError(f"{path}: {pointer!r} is {type(node).__name__}, not a number")
    return float(node)


def format_value(value: float, decimals: int = 3, signed: bool = False) -> str:
    """``value`` as quoted: ``decimals`` places, with an explicit ``+`` for positive differences if ``signed``."""
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def cite(
    results_file: str | os.PathLike,
    pointer: str,
    doc_dir: str | os.PathLike = ".",
    decimals: int = 3,
    signed: bool = False,
    scale: float = 1.0,
) -> str:
    """A markdown link quoting the value at ``pointer`` of ``results_file``, relative to the folder ``doc_dir`` of
    the document it goes in; ``scale=1000`` quotes it in thousandths."""
    value = resolve(results_file, pointer) * scale
    target = os.path.relpath(results_file, doc_dir) + "#" + quote(pointer, safe="/~@")
    suffix = "" if scale == 1.0 else f"*{scale:g}"
    return f"[{format_value(value, decimals, signed)}]({target}{suffix})"


def _check_link(doc: Path, text: str, target: str) -> str | None:
    path, _, fragment = target.partition("#")
    pointer, _, scale_text = fragment.partition("*")
    results = (doc.parent / path).resolve()
    if not results.is_file():
        return f"{text} links to {path}, which does not exist"
    try:
        value = resolve(results, pointer) * (float(scale_text) if scale_text else 1.0)
    except (KeyError, TypeError, ValueError) as err:
        return f"{text}: {err}"
    if format_value(value, len(text.split(".")[1]), signed=text.startswith("+")) != text:
        return f"{text} quotes {path}#{fragment}, which is {value!r}"
    return None


def check_document(doc: str | os.PathLike) -> list[str]:
    """Every problem with the quoted numbers of the markdown file ``doc``, as ``"file:line: problem"``."""
    doc = Path(doc)
    prose = _prose(doc.read_text())
    problems = []
    linked: set[int] = set()
    for link in _LINK.finditer(prose):
        if QUOTED_NUMBER.fullmatch(link["text"]):
            linked.add(link.start("text"))
            problem = _check_link(doc, link["text"], link["target"])
            if problem:
                problems.append(f"{doc}:{prose.count(chr(10), 0, link.start()) + 1}: {problem}")
    # a link's target (a pointer such as .../adversary_h@0.003) is not prose: blank it, keeping the offsets
    text_only = _LINK.sub(lambda m: f"[{m['text']}](" + " " * len(m["target"]) + ")", prose)
    for number in QUOTED_NUMBER.finditer(text_only):
        if number.start() not in linked:
            line = prose.count("\n", 0, number.start()) + 1
            problems.append(f"{doc}:{line}: {number.group(0)} is not a link to a results value")
    return problems
