"""The security tests start envfleet (and its buffer) with the envfleet tests' own helpers."""

from tests.envfleet.conftest import buffer  # noqa: F401  (re-exported fixture)
