"""Config handling shared by the command-line entry points."""
