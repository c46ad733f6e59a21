# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""lme4-style model formulas: ``y ~ x + (x | g) + (1 | site/subject)`` -> the estimators' inputs and arguments.

The fixed part goes to ``formulaic`` (categorical coding, interactions, transforms); the random part is lme4's bar
syntax: ``(terms | g)`` correlated, ``(terms || g)`` uncorrelated, ``g1/g2`` nesting (``g1`` and ``g2`` within
``g1``) and ``g1:g2`` (one factor whose levels are the combinations). Random-effect terms are an intercept plus
columns of the fixed-effects design.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from monai_medl.estimators.grouping import pd

__all__ = ["RandomBar", "MixedFormula", "parse_mixed_formula"]

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass
class RandomBar:
    """One ``(terms | group)`` term: slope columns, the grouping expression and whether it is correlated."""

    slopes: list[str]
    group: str
    correlated: bool


@dataclass
class MixedFormula:
    """A parsed formula: response, fixed part (formulaic syntax) and random bars.

    Example::

        >>> f = parse_mixed_formula("y ~ x + (x || g) + (1 | site/subject)")
        >>> f.response, f.fixed, [(b.slopes, b.group, b.correlated) for b in f.bars]
        ('y', 'x', [(['x'], 'g', False), ([], 'site/subject', True)])
    """

    response: str
    fixed: str
    bars: list[RandomBar] = field(default_factory=list)

    def inputs(self, data):
        """``(X, y, groups, arguments)`` for ``fit`` and the estimator from a DataFrame (the fixed design via
        formulaic, intercept column dropped since the estimators add their own)."""
        from formulaic import model_matrix

        if self.response not in data.columns:
            raise ValueError(f"formula response {self.response!r} is not a column of data.")
        design = model_matrix(self.fixed, data, na_action="raise")
        self.model_spec = design.model_spec  # the training coding, reused for new data (:meth:`new_inputs`)
        if "Intercept" not in design.columns:
            raise ValueError("formula: a fixed part without an intercept ('0 +' / '- 1') is not supported.")
        x = design.drop(columns="Intercept")
        groups, arguments = self._groups(data, list(x.columns))
        return x, data[self.response].to_numpy(), groups, arguments

    def new_inputs(self, data):
        """``(X, groups)`` of new rows with the training data's coding (call :meth:`inputs` first)."""
        x = self.model_spec.get_model_matrix(data, na_action="raise").drop(columns="Intercept")
        return x, self._groups(data, list(x.columns))[0]

    def _groups(self, data, fixed_columns: list[str]):
        groups, slopes, correlated, nested = {}, {}, {}, []
        for bar in self.bars:
            unknown = [s for s in bar.slopes if s not in fixed_columns]
            if unknown:
                raise ValueError(
                    f"formula: random-slope term(s) {unknown} in '({' + '.join(['1', *bar.slopes])} | {bar.group})' "
                    f"must be columns of the fixed part {fixed_columns}."
                )
            parts = bar.group.split("/")
            for part in parts:
                columns = part.split(":")
                missing = [c for c in columns if c not in data.columns]
                if missing:
                    raise ValueError(f"formula: grouping variable(s) {missing} are not columns of data.")
                if part in groups:
                    raise ValueError(f"formula: grouping factor {part!r} appears in two random terms.")
                values = data[columns[0]].astype(str)
                for c in columns[1:]:
                    values = values + ":" + data[c].astype(str)
                groups[part] = (data[columns[0]] if len(columns) == 1 else values).to_numpy()
                slopes[part], correlated[part] = list(bar.slopes), bar.correlated
            if len(parts) > 1:
                nested.append(bar.group)
        arguments: dict[str, Any] = {
            "random_slopes": {g: s for g, s in slopes.items() if s} or None,
            "correlated": correlated,
            "nested": nested or None,
        }
        return pd.DataFrame(groups), arguments


def _split_top(text: str, sep: str = "+") -> list[str]:
    """Split on ``sep`` outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if depth < 0:
            raise ValueError(f"formula: unbalanced ')' in {text!r}.")
        if char == sep and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"formula: unbalanced '(' in {text!r}.")
    return [*parts, current.strip()]


def _bar(term: str) -> RandomBar:
    inner = term[1:-1].strip()
    correlated = "||" not in inner
    lhs, sep, group = inner.partition("||" if not correlated else "|")
    lhs, group = lhs.strip(), group.strip()
    if not sep or not group:
        raise ValueError(f"formula: random term {term!r} needs 'terms | group'.")
    slopes = []
    for token in _split_top(lhs):
        if token == "1":
            continue
        if token in ("0", "-1") or token.startswith("-") or "- 1" in lhs or lhs.startswith("0"):
            raise ValueError(
                f"formula: unsupported token '0'/'-1' in {term!r} (random terms always have an intercept)."
            )
        if not _NAME.match(token):
            raise ValueError(
                f"formula: unsupported token {token!r} in {term!r}: random terms are '1' and column names."
            )
        slopes.append(token)
    for piece in re.split(r"[/:]", group):
        if not _NAME.match(piece.strip()):
            raise ValueError(f"formula: unsupported token {piece.strip()!r} in the grouping of {term!r}.")
    if "/" in group and ":" in group:
        raise ValueError(f"formula: unsupported token ':' inside a nesting '/' in {term!r}; write 'a/b' or 'a:b'.")
    return RandomBar(slopes, re.sub(r"\s+", "", group), correlated)


def parse_mixed_formula(formula: str) -> MixedFormula:
    """Parse ``response ~ fixed + (terms | group) + ...`` (see the module docstring); ValueError names the token
    that is not supported."""
    response, tilde, rhs = formula.partition("~")
    if not tilde or not response.strip():
        raise ValueError(f"formula {formula!r} must be 'response ~ terms'.")
    fixed, bars = [], []
    for term in _split_top(rhs):
        if term.startswith("(") and term.endswith(")") and "|" in term:
            bars.append(_bar(term))
        elif "|" in term:
            raise ValueError(f"formula: unsupported token '|' in {term!r}: put random terms in parentheses.")
        elif term:
            fixed.append(term)
    if not bars:
        raise ValueError(f"formula {formula!r} has no random term '(terms | group)'.")
    return MixedFormula(response.strip(), " + ".join(fixed) or "1", bars)
