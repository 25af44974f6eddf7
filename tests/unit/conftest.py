"""Hypothesis profiles for the unit tier: "ci" runs 1,000 examples per property (STYLE.md test tiers), "dev" 200.

Pick one with HYPOTHESIS_PROFILE; the default is "ci". Runs are derandomized so a failure reproduces exactly, and no
example database is written into the tree.
"""

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=1000, derandomize=True, deadline=None, database=None)
settings.register_profile("dev", max_examples=200, derandomize=True, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

