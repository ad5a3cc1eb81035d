"""lungexp test suite."""
