# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The model cards say what the configs do: the preprocessing chain and random training transforms the card names
are the configs' own, and every override in the card's commands (``--key value``) is a key of the configs that
command loads."""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

from monai_medl.bundle import file_sha256, verify_artifacts
from monai_medl.bundle.model_card import BEGIN, END, eval_metrics, render_tables

BUNDLES = sorted((Path(__file__).resolve().parents[2] / "bundles").glob("*/docs/README.md"))
# `run`'s own options; `--tracking` adds MONAI's tracking settings (`output_dir`, ...) to the config
CLI_ONLY = {"config_file", "meta_file", "logging_file", "args_file", "bundle_root", "filepath", "ckpt_file", "net_id"}
CLI_ONLY |= {"tracking"}
TRANSFORM = re.compile(r"`(?:monai_medl\.transforms\.)?([A-Z][A-Za-z]*d)(?:\([^`]*\))?`")


def _section(card: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", card, re.S | re.M)
    assert match, f"no '## {title}' section"
    return match.group(1)


def _targets(transforms) -> list[str]:
    return [t["_target_"].split(".")[-1] for t in transforms]


def _config(bundle: Path, name: str) -> dict:
    return json.loads((bundle / "configs" / name).read_text())


def _opt_in(transforms) -> list[str]:
    """The steps that run only with ``scan_preprocessing#enabled`` (``_disabled_: "$not @fit_scans"``)."""
    return [t["_target_"].split(".")[-1] for t in transforms if "fit_scans" in str(t.get("_disabled_", ""))]


@pytest.mark.parametrize("card", BUNDLES, ids=lambda p: p.parent.parent.name)
def test_card_preprocessing_and_random_transforms_match_the_configs(card):
    """The section's first paragraph is the chain, in config order, with the opt-in steps in one ``[...]``; later
    paragraphs may describe steps of the chain but name no other transform."""
    bundle = card.parent.parent
    section = _section(card.read_text(), "Preprocessing").strip()
    chain = section.split("\n\n")[0]
    named = TRANSFORM.findall(chain)
    train, infer = _config(bundle, "train.json"), _config(bundle, "inference.json")
    steps = infer["preprocessing"]["transforms"]
    if isinstance(steps, str):  # "$@load_transforms + @site_transforms": the same lists as training
        steps = train["load_transforms"] + train["site_transforms"]
    assert [n for n in named if not n.startswith("Rand")] == _targets(steps)
    bracket = re.search(r"\[([^\]]*)\]", chain)
    assert (TRANSFORM.findall(bracket.group(1)) if bracket else []) == _opt_in(steps)
    assert set(TRANSFORM.findall(section)) <= set(named), "a later paragraph names a transform the chain lacks"
    random = [t for t in _targets(train["train"].get("random_transforms", [])) if t.startswith("Rand")]
    assert [n for n in named if n.startswith("Rand")] == random


def _commands(card: str) -> list[list[str]]:
    """Every ``monai.bundle run`` command of the card's bash blocks, as argument lists (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", card, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            if "monai.bundle run" in line:
                args = shlex.split(line, comments=True)
                commands.append(args[args.index("run") + 1 :])  # torchrun's own options come before
    return commands


@pytest.mark.parametrize("card", BUNDLES, ids=lambda p: p.parent.parent.name)
def test_every_override_in_the_card_is_a_config_key(card):
    bundle = card.parent.parent
    commands = _commands(card.read_text())
    assert commands, "the card shows no monai.bundle run command"
    for args in commands:
        files = args[args.index("--config_file") + 1]
        names = ast.literal_eval(files) if files.startswith("[") else [files]
        parser = ConfigParser()
        parser.read_config([str(bundle / name) for name in names])
        if "--tracking" in args:  # `run --tracking mlflow` adds these keys, so they may be overridden too
            parser.update(DEFAULT_MLFLOW_SETTINGS["configs"])
        keys = [a[2:] for a in args if a.startswith("--") and a[2:] not in CLI_ONLY]
        for key in keys:
            try:
                parser[key]
            except (KeyError, IndexError, ValueError):
                pytest.fail(f"{card}: override --{key} in `{' '.join(args)}` is not a key of {names}")


def test_card_override_check_can_fail(tmp_path):
    """The check above rejects an override that is not a key (a misspelt epochs setting)."""
    bundle = BUNDLES[0].parent.parent
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["train#trainer#max_epochs"]  # the documented key exists
    with pytest.raises(KeyError):
        parser["train#trainer#epochs"]


@pytest.mark.parametrize("card", BUNDLES, ids=lambda p: p.parent.parent.name)
def test_card_numbers_are_the_recorded_evaluation_of_the_shipped_model(card):
    """The performance block and ``eval_metrics`` are rendered from ``docs/evaluation.json``, which was recorded for
    exactly the shipped ``models/model.pt``; the shipped set matches its manifest."""
    bundle = card.parent.parent
    record = json.loads((bundle / "docs" / "evaluation.json").read_text())
    assert record["model_sha256"] == file_sha256(bundle / "models" / "model.pt"), "card evaluated another model"
    verify_artifacts(bundle / "models", ["model.pt"])
    block = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), card.read_text(), re.S)
    assert block and block.group(1) == render_tables(record)
    assert _config(bundle, "metadata.json")["eval_metrics"] == eval_metrics(record)
