"""Command-line entry points. Importing this package imports nothing heavy."""
