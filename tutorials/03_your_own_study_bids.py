# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
# %% [markdown]
# # Tutorial 3: your own multi-site study, from a BIDS folder to figures and a new hospital
#
# A researcher arrives with T1-weighted scans from several hospitals in a BIDS dataset (`participants.tsv` with a
# diagnosis column, `sub-*/anat/sub-*_T1w.nii.gz`, a sidecar JSON per scan naming the institution). This tutorial
# goes from that folder to a trained, evaluated mixed-effects CNN and predictions for a hospital the model has never
# seen, with the commands a user types (each is printed with its run time):
#
# 1. make a BIDS-shaped folder from the synthetic cohort (your own data replaces this step); one hospital is kept
#    out of it entirely, as the "new hospital" of step 5;
# 2. `python -m monai_medl.data.make_datalist`: hold out a whole site (unseen at training), split the other sites'
#    subjects into training / validation / test, grouped by subject and stratified on label x site;
# 3. train the `mri_me_cnn_classification` bundle on that datalist (`--datalist ... --generate_cohort false`);
# 4. evaluate it: per-site metrics (CSV) and figures (PNG) next to them;
# 5. predict the scans of the new hospital (a plain folder of NIfTI files, site unknown, population level).
#
# Run it as a script (`python tutorials/03_your_own_study_bids.py`, a few minutes on one CPU core) or open it in
# Jupyter with jupytext. `MONAI_MEDL_TUTORIAL_QUICK=1` shrinks the cohort and the training (used by the test suite).
# Everything is written under `./study_tutorial/`; the repository's bundle folder is not touched.

# %%
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from monai_medl.data.bids_export import datalist_to_bids

QUICK = os.environ.get("MONAI_MEDL_TUTORIAL_QUICK") == "1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.abspath("study_tutorial")
SIZE = [16, 16, 16] if QUICK else [32, 32, 32]
SPACING = [12.0] * 3 if QUICK else [6.0] * 3
EPOCHS = 2 if QUICK else 15
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)


def run(*args: str) -> float:
    """Run one command in the study folder as a user would type it (printed first); return its wall time (s)."""
    print("$ " + shlex.join(args), flush=True)
    start = time.perf_counter()
    command = [sys.executable if a == "python" else a for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=WORK, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  ({seconds:.1f} s)")
    return seconds


timings = {}

# %% [markdown]
# ## 1. A BIDS folder (here: made from the synthetic cohort)
# The cohort has four training-style sites and one more; that last one (`site_e`) stays out of the BIDS folder:
# its scans become the new hospital of step 5. `datalist_to_bids` writes `participants.tsv` (site, age, sex and the
# diagnosis as text), one `sub-XXXX/anat/sub-XXXX_T1w.nii.gz` per subject and a sidecar JSON with `InstitutionName`.

# %%
cohort = os.path.join(WORK, "cohort")
subjects = 72 if QUICK else 400
timings["cohort"] = run(
    "python", "-m", "monai_medl.data.synthetic.mri_cohort", "--out", "cohort", "--num-subjects", str(subjects),
    "--sites", "4", "--unseen-sites", "1", "--spatial-size", *map(str, SIZE), "--spacing", *map(str, SPACING),
    "--seed", "0",
)  # fmt: skip
truth = json.load(open(os.path.join(cohort, "ground_truth.json"), encoding="utf-8"))
new_hospital = truth["unseen_sites"][0]
bids = datalist_to_bids(os.path.join(cohort, "datalist.json"), os.path.join(WORK, "bids"), sites=truth["seen_sites"])
print(open(os.path.join(bids, "participants.tsv"), encoding="utf-8").read().splitlines()[:3])

new_site_dir = os.path.join(WORK, "new_hospital")
os.makedirs(new_site_dir)
for section in ("training", "validation", "test"):
    for entry in json.load(open(os.path.join(cohort, "datalist.json"), encoding="utf-8")).get(section, []):
        if entry["site"] == new_hospital:
            shutil.copy(os.path.join(cohort, entry["image"]), new_site_dir)
print(f"new hospital {new_hospital!r}: {len(os.listdir(new_site_dir))} scans in {new_site_dir}")

# %% [markdown]
# ## 2. The datalist
# The site comes from the sidecars (`--site-column InstitutionName`; a `participants.tsv` column or scanner fields
# such as `Manufacturer,MagneticFieldStrength` work the same way), the label from `participants.tsv`. One site is
# held out whole, drawn with the seed. The report shows scans per site and label in each section.

# %%
datalist = os.path.join(bids, "datalist.json")
timings["make_datalist"] = run(
    "python", "-m", "monai_medl.data.make_datalist", "--bids", "bids", "--site-column", "InstitutionName",
    "--label-column", "diagnosis", "--label-map", "control=0,patient=1", "--holdout-sites", "1", "--seed", "0",
    "--extra-columns", "age", "sex", "--out", "bids/datalist.json",
)  # fmt: skip
print(open(os.path.join(bids, "datalist_report.md"), encoding="utf-8").read())
content = json.load(open(datalist, encoding="utf-8"))
training_sites = sorted({e["site"] for e in content["training"]})
print(f"training sites {training_sites}; held out (unseen) {content['unseen_sites']}")

# %% [markdown]
# ## 3. Training
# A copy of the bundle's configs in the study folder, trained on the datalist. `--generate_cohort false`: the bundle
# never makes data of its own; every scan of every section is validated before anything is written, and a subject
# found in two sections would be refused (`allow_subject_overlap`).

# %%
bundle = os.path.join(WORK, "bundle")
shutil.copytree(os.path.join(REPO, "bundles", "mri_me_cnn_classification", "configs"), os.path.join(bundle, "configs"))
common = ["--bundle_root", "bundle", "--datalist", "bids/datalist.json", "--generate_cohort", "false"]
common += ["--spatial_size", str(SIZE)]
timings["train"] = run(
    "python", "-m", "monai.bundle", "run", "--config_file", "bundle/configs/train.json", *common,
    "--train#trainer#max_epochs", str(EPOCHS), "--replace_models", "true",
)  # fmt: skip

# %% [markdown]
# ## 4. Evaluation: metrics and figures
# `evaluate.json` scores the test section (seen sites' held-out subjects and the unseen site) in three `z` modes
# and writes `metrics.csv` and the figures next to it: per-site ROC curves and calibration, seen vs unseen AUROC
# with bootstrap intervals, and each training site's random intercept against its prevalence.

# %%
configs = '["bundle/configs/train.json","bundle/configs/evaluate.json"]'  # evaluate.json overrides train.json
timings["evaluate"] = run("python", "-m", "monai.bundle", "run", "--config_file", configs, *common)
with open(os.path.join(bundle, "eval", "metrics.csv"), encoding="utf-8") as f:
    for row in csv.DictReader(f):
        if row["group"] in ("seen", "unseen"):
            print(f"{row['mode']:>10} {row['group']:>6} sites: n={row['n']} AUROC {float(row['auroc']):.3f}")
figures = sorted(f for f in os.listdir(os.path.join(bundle, "eval")) if f.endswith(".png"))
print(f"figures: {len(figures)} {figures}")

# %% [markdown]
# ## 5. A new hospital
# A folder of NIfTI files with no site: the bundle predicts at population level (`z = 0`, fixed effects only) and
# warns that the site is unseen.

# %%
timings["inference"] = run(
    "python", "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json", "--bundle_root", "bundle",
    "--input", "new_hospital", "--unseen_mode", "population", "--spatial_size", str(SIZE),
)  # fmt: skip
with open(os.path.join(bundle, "eval", "inference_predictions.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
z_rows, site_rows = sorted({r["z"] for r in rows}), sorted({r["site"] for r in rows})
print(f"new-hospital predictions: {len(rows)} scans, z {z_rows}, sites {site_rows}")
print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
