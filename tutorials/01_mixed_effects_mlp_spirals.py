# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
# %% [markdown]
# # Tutorial 1: a mixed-effects MLP on clustered data
#
# Ten clusters (think: ten scanner sites) each draw two interleaved spirals at their own radius (a random effect)
# and with their own share of positive labels. Two extra "probe" features carry only that share: they say which
# cluster a sample came from, and through it, spuriously, how likely the label is -- a site shortcut. A network
# that ignores the clusters learns one average spiral and leans on the shortcut; a mixed-effects network learns the
# average spiral (fixed effects, kept cluster-invariant by an adversary) plus per-cluster corrections (random
# effects), and for a cluster it has never seen it falls back to the population prediction.
#
# You will:
# 1. hold out two clusters entirely (unseen) and split the other eight into training and test samples;
# 2. train a conventional MLP and a mixed-effects MLP (`MixedEffectsMLP` + adversary) with `TabularTrainer`;
# 3. compare them on seen clusters (mixed prediction, one-hot `z`) and unseen clusters (population, `z = 0`), and
#    measure how much each relies on the shortcut features;
# 4. read the learned variance components with `summary()`;
# 5. adapt to an unseen cluster from 20 labelled samples with `fit_new_cluster`.
#
# Run it as a script (`python tutorials/01_mixed_effects_mlp_spirals.py`, ~20 s on one CPU core) or open it in
# Jupyter with jupytext. `MONAI_MEDL_TUTORIAL_QUICK=1` shortens training (used by the test suite).

# %%
import os

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from monai_medl.data.synthetic.spirals import make_spirals
from monai_medl.engines import fit_new_cluster
from monai_medl.engines.tabular import TabularTrainer, data_dependent_init_, predict_tabular
from monai_medl.metrics import SiteMetric
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP
from monai_medl.utils import summary
from monai_medl.utils.attribution import attribution_share, fixed_effects_attribution

QUICK = os.environ.get("MONAI_MEDL_TUTORIAL_QUICK") == "1"
EPOCHS = 3 if QUICK else 10
torch.set_num_threads(1)

# %% [markdown]
# ## 1. Data: seen and unseen clusters
# `make_spirals` returns features `x` (two spiral coordinates, then the probes), labels `y`, the cluster of every
# sample and the ground truth. Clusters 8 and 9 are held out; `z` (the design matrix) has one column per *seen*
# cluster.

# %%
data = make_spirals(num_clusters=10, points_per_cluster=1000, prevalence_sd=0.3, num_probes=2, seed=48)
seen = data.site < 8
rng = np.random.default_rng(0)
is_train = seen & (rng.random(len(data.y)) < 0.8)
is_test_seen = seen & ~is_train
is_unseen = ~seen

mean, std = data.x[is_train].mean(0), data.x[is_train].std(0)  # standardise with training statistics only
x = torch.tensor((data.x - mean) / std, dtype=torch.float32)
y = torch.tensor(data.y, dtype=torch.float32)
z = torch.zeros(len(y), 8)
z[seen, data.site[seen]] = 1.0  # one-hot for seen clusters, all zeros (population) for unseen ones
print(f"{is_train.sum()} training, {is_test_seen.sum()} seen-test, {is_unseen.sum()} unseen-test samples")
print("true cluster radii:     ", np.round(data.radius, 2))
print("true label prevalences:", np.round(data.prevalence, 2))

# %% [markdown]
# ## 2. Train a conventional and a mixed-effects MLP
# Both use the same 4-4-4 ReLU MLP. The mixed-effects one adds random slopes on its last hidden layer and a random
# intercept (Bayesian layers with a learned prior s.d., i.e. variance components) and an adversary that tries to
# predict the cluster from its hidden activations, which keeps the fixed effects cluster-invariant.


# %%
def train(mixed: bool) -> MixedEffectsMLP:
    torch.manual_seed(0)
    net = MixedEffectsMLP(
        x.shape[1],
        1,
        num_clusters=8,
        hidden=(4, 4, 4),
        linear_slopes=False,
        nonlinear_slopes=mixed,
        random_intercept=mixed,
        learn_prior_scale=True,
        glorot_init=True,
    )
    adversary = ClusterClassifier(4 + 4 + 4, 8, hidden=(8, 8, 4)) if mixed else None
    trainer = TabularTrainer(
        net, epochs=EPOCHS, batch_size=32, lr=1e-3, kl_weight=1e-5, adversary=adversary, lambda_g=0.5, seed=0
    )
    data_dependent_init_(net, x[is_train])  # no dead ReLU units at the start
    trainer.fit(x[is_train], y[is_train], z[is_train] if mixed else None)
    return net


conventional, me = train(mixed=False), train(mixed=True)

# %% [markdown]
# ## 3. Seen vs unseen clusters
# For seen clusters the mixed-effects model uses its cluster's random effects (one-hot `z`); for unseen clusters
# `z = 0` gives the population (fixed-effects) prediction, the best guess without knowing the cluster. The
# shortcut read-out is the share of the fixed-effects path's input sensitivity (mean |d logit / d x|) that goes to
# the probe features: lower means less reliance on the site shortcut.


# %%
# `SiteMetric` (a MONAI cumulative metric; `SiteMetricHandler` feeds it inside an engine) scores the held-out
# samples overall, on seen and on unseen clusters (site index -1) and per cluster.
held_out = ~is_train
site_index = torch.tensor(np.where(seen, data.site, -1))


def site_auroc(net, design=None) -> dict:
    logits = predict_tabular(net, x[held_out], None if design is None else design[held_out])
    metric = SiteMetric(metrics=("auroc",))
    metric(torch.sigmoid(logits).reshape(-1), y[held_out], sites=site_index[held_out])
    return metric.aggregate()


for name, net in (("conventional", conventional), ("mixed effects", me)):
    res = site_auroc(net, z if net is me else None)
    share = attribution_share(fixed_effects_attribution(net, x[is_test_seen]), data.probe_columns)
    print(
        f"{name:14s} AUROC seen {res['seen']['auroc']:.3f}   unseen {res['unseen']['auroc']:.3f}"
        f"   shortcut share {share:.3f}"
    )

# %% [markdown]
# ## 4. Variance components
# `summary()` prints the learned prior s.d. of every random-effects layer (lme4-style), the spread of the
# per-cluster posterior means, and the random intercepts.

# %%
report = summary(me, cluster_names=[f"cluster {k}" for k in range(8)], num_obs=int(is_train.sum()))
print(report)

# %% [markdown]
# ## 5. A new cluster from a few labelled samples
# `fit_new_cluster` adds a column to `z` and fits only that cluster's random effects (a MAP estimate that shrinks
# towards the population with few samples), leaving everything else frozen. Compare the two AUROCs below: when the
# population prediction is already good for the new cluster, 20 samples add little, because the prior keeps weakly
# supported effects small.

# %%
unseen_rows = np.flatnonzero(is_unseen & (data.site == 8))
few, rest = unseen_rows[:20], unseen_rows[20:]
k = fit_new_cluster(me, x[few], y[few].reshape(-1, 1), task="bce", steps=100 if QUICK else 200)
z_new = torch.zeros(len(rest), me.num_clusters)
z_new[:, k] = 1.0
population = predict_tabular(me, x[rest]).reshape(-1).numpy()
adapted = predict_tabular(me, x[rest], z_new).reshape(-1).numpy()
print(
    f"cluster 8, {len(rest)} held-out samples: AUROC population {roc_auc_score(y[rest], population):.3f}, "
    f"after fitting its random effects on 20 samples {roc_auc_score(y[rest], adapted):.3f}"
)

# %% [markdown]
# ## Where to go next
# * One split and one seed prove little: `benchmarks/spirals.py` runs this comparison (and a variant without the
#   shortcut) over 10 repeats x 10 folds with every baseline (cluster as input, domain-adversarial, gradient
#   boosting, inferred `z`) and writes a results table. There, on this confounded variant, the mixed-effects MLP
#   has seen AUROC 0.900 vs 0.873 and a shortcut share of 0.121 vs 0.248; on unseen clusters the two are level
#   (0.843 vs 0.842), and gradient boosting beats both (0.965).
# * The image networks (`MixedEffectsCNN`, `make_multimodal_me_cnn`, `MixedEffectsAutoEncoder`) follow the same
#   pattern inside MONAI's `SupervisedTrainer`; see the bundles in `bundles/`.
