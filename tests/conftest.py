"""pytest configuration: the hypothesis profile. What the test files share is in
tests/_helpers.py."""

from __future__ import annotations

import os

from hypothesis import settings

from _helpers import assert_close as assert_close_to
from _helpers import requires_extension

# Re-exported for tests/test_registration.py and tests/test_errors.py, which import them
# from here; new code imports them from _helpers.
__all__ = ["assert_close_to", "requires_extension"]

# CI (CI=true) explores a fixed sequence of examples so a submission's result is
# reproducible; locally hypothesis keeps exploring new random examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
