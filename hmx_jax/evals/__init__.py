"""Evaluations of the base, human-like and contrast models."""
