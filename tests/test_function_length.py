# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""House rule (DEVELOPERS.md): no function in ``monai_medl`` over 80 lines of code.

Code lines are the lines a function spans without its docstring, comments and blank lines (a nested function's
lines count in the function that holds it too).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_medl"
MAX_CODE_LINES = 80


def code_line_numbers(source: str) -> set[int]:
    """Numbers of the lines of ``source`` that hold a token other than a comment (so not blank ones either)."""
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, code: set[int]) -> int:
    """Code lines (``code``: :func:`code_line_numbers` of the file) of the function ``node``, its docstring out."""
    span = set(range(node.lineno, node.end_lineno + 1))
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        span -= set(range(first.lineno, first.end_lineno + 1))
    return len(span & code)


def long_functions(root: Path, limit: int = MAX_CODE_LINES) -> list[str]:
    """``"path:line name (n lines)"`` of every function under ``root`` with more than ``limit`` code lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        code = code_line_numbers(source)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(node, code)
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_in_the_package_is_over_80_code_lines():
    assert long_functions(PACKAGE) == [], f"split these into named steps (at most {MAX_CODE_LINES} code lines)"


def test_the_count_skips_docstring_comments_and_blank_lines(tmp_path):
    body = "\n".join(f"    x{i} = {i}  # note" for i in range(5))
    source = f'def f():\n    """Doc.\n\n    More doc.\n    """\n    # why\n\n{body}\n    return (\n        x0\n    )\n'
    node = ast.parse(source).body[0]
    # the def line, the five assignments, the three lines of the return
    assert code_lines(node, code_line_numbers(source)) == 1 + 5 + 3
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(source)
    assert long_functions(tmp_path / "pkg", limit=9) == []
    assert long_functions(tmp_path / "pkg", limit=8) == ["pkg/m.py:1 f (9 lines)"]


def test_a_string_inside_the_code_is_code_not_a_docstring():
    source = 'def g():\n    x = 1\n    """not the docstring"""\n    return x\n'
    assert code_lines(ast.parse(source).body[0], code_line_numbers(source)) == 4
