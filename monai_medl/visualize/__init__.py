# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .caterpillar import caterpillar_table, plot_caterpillar
from .counterfactual import counterfactual_grid, counterfactual_panel, plot_counterfactual_panel
from .evaluation_figures import FIGURES, auroc_interval, write_evaluation_figures
