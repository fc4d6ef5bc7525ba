"""Judging a training log: which recipe stage it ran, and its verdict against the stage's expected results."""
