"""The trajectory and screenshot buffer service."""
