"""Shared building blocks of the asyncwebrl services."""
