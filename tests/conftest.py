"""Shared test configuration: ``tests/`` is on ``sys.path`` so tests can import ``harnesses``."""

pytest_plugins = ["pytester"]  # tests of the plugin's own fixtures run pytest in a subprocess-free sandbox
