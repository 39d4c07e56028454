import os
import sys

# Tests import the tiny edge-case models in tests/tiny_models.py by name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("PL_DISABLE_FORK", "1")
