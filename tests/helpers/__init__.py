"""Test helpers shared by the test files: independent references, never the package's own code."""
