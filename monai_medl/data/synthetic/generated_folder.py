# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Generators write only into folders they own: an empty (or new) folder, or one a generator marked before.

A bundle's ``dataset_dir`` may point at a user's own data. Generating the synthetic cohort there would mix
generated files into the user's folder and can overwrite a real scan whose name matches a generated one, so a
generator claims its output folder first and refuses any folder that holds files it did not make.
"""

from __future__ import annotations

import json
import os

__all__ = ["GENERATED_MARKER", "claim_output_folder", "reuse_or_claim"]

GENERATED_MARKER = ".monai_medl_generated"
"""File a generator writes into its output folder; only folders with it (or empty ones) are written into."""


def claim_output_folder(out_dir: str | os.PathLike, generator: str) -> str:
    """Create ``out_dir`` (or accept it when empty or generated before) and mark it as generated; return its path.

    Args:
        out_dir: the folder the generator is about to write into.
        generator: name of the generator, recorded in the marker file.

    Raises:
        FileExistsError: if ``out_dir`` exists, is not empty and has no marker (it holds someone else's files);
            the message names the folder and a few of its files.

    Example::

        >>> import tempfile
        >>> out = claim_output_folder(os.path.join(tempfile.mkdtemp(), "data"), "generate_mri_cohort")
        >>> os.listdir(out)  # the marker: a later generator run may write here again
        ['.monai_medl_generated']
        >>> users_folder = tempfile.mkdtemp()
        >>> with open(os.path.join(users_folder, "notes.txt"), "w") as f:
        ...     _ = f.write("a user's file")
        >>> claim_output_folder(users_folder, "generate_mri_cohort")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileExistsError: refusing to generate the synthetic data set into '...': the folder holds files that no ...
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    marker = os.path.join(out_dir, GENERATED_MARKER)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"cannot generate data into {out_dir!r}: it is a file, not a folder.")
    if os.path.isdir(out_dir) and not os.path.isfile(marker):
        content = sorted(os.listdir(out_dir))
        if content:
            shown = ", ".join(content[:5]) + (", ..." if len(content) > 5 else "")
            raise FileExistsError(
                f"refusing to generate the synthetic data set into {out_dir!r}: the folder holds files that no "
                f"monai_medl generator made ({shown}). Point the datalist at your own data (a datalist JSON with "
                "'training'/'validation' sections), or choose an empty or new folder for generated data."
            )
    os.makedirs(out_dir, exist_ok=True)
    if not os.path.isfile(marker):
        with open(marker, "w", encoding="utf-8") as f:
            json.dump({"generator": generator}, f)
            f.write("\n")
    return out_dir


def reuse_or_claim(out_dir: str | os.PathLike, config: dict, generator: str, overwrite: bool = False) -> str | None:
    """The ``datalist.json`` of ``out_dir`` when it already holds data generated with ``config`` (nothing to do), else
    None after claiming the folder for a new generation (:func:`claim_output_folder`).

    A generation is recognised by ``ground_truth.json``'s ``config`` next to ``datalist.json``.

    Raises:
        FileExistsError: ``out_dir`` holds data generated with another ``config`` and ``overwrite`` is False, or
            files no generator made.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    datalist_path = os.path.join(out_dir, "datalist.json")
    truth_path = os.path.join(out_dir, "ground_truth.json")
    if os.path.isfile(datalist_path) and os.path.isfile(truth_path):
        with open(truth_path, encoding="utf-8") as f:
            if json.load(f).get("config") == config:
                return datalist_path
        if not overwrite:
            raise FileExistsError(
                f"{out_dir!r} holds data generated with other arguments ({truth_path}); pass overwrite=True "
                "(--overwrite) or choose another folder."
            )
    claim_output_folder(out_dir, generator)
    return None
