"""Typer command-line interface; see :mod:`supersam.cli.main`."""
