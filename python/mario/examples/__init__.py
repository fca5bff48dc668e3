"""Example servers: ``python -m mario.examples.login``."""
