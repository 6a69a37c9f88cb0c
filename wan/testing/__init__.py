"""Test support that ships with the package: the golden weight recipe and tiny checkpoint folders."""
