"""Helpers the test suites share: private servers on free ports, polling."""
