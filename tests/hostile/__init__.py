"""A package that a worker allows (``--allow-module tests.hostile``) whose
module imports ``os``: the target of the attacks in tests/e2e/test_security.py."""
