"""Benchmarks live outside the test suite; they import the tests' independent helpers."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
