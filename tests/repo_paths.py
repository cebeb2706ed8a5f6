"""Where tests find the repository, their fixtures and the helper scripts, from whichever folder they live in."""

import os

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
FIXTURES = os.path.join(TESTS, "fixtures")
