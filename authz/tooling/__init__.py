"""Policy tooling for authors: schema validation (validate.py), a test runner (testrunner.py) and decision-log
replay (replay.py), each run offline with the real compiler and engine."""
