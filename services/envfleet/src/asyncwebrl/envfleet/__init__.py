"""envfleet: a pool of Chromium contexts behind the gRPC EnvService."""
