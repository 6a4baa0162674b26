"""Prometheus metrics of weight sync."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

PUBLISH_SECONDS = Histogram("asyncwebrl_weightsync_publish_seconds", "Publish to every endpoint serving "
                            "(or failed), verification included.", ["job"], buckets=_SECONDS)
VERIFY_SECONDS = Histogram("asyncwebrl_weightsync_verify_seconds", "Checkpoint verification (manifest and "
                           "sha256 of every file).", ["job"], buckets=_SECONDS)
LOAD_SECONDS = Histogram("asyncwebrl_weightsync_endpoint_load_seconds", "One endpoint: pause, load, continue.",
                         ["job"], buckets=_SECONDS)
PUBLISHES = Counter("asyncwebrl_weightsync_publishes_total", "Publish calls by outcome: ok, partial (some "
                    "endpoints failed), refused_old, invalid.", ["job", "outcome"])
LOADS = Counter("asyncwebrl_weightsync_loads_total", "Endpoint loads by cause (publish, catch_up) and result.",
                ["job", "cause", "result"])
LOAD_FAILURES = Counter("asyncwebrl_weightsync_load_failures_total", "Endpoint loads that failed after retries.",
                        ["job"])
BYTES_LOADED = Counter("asyncwebrl_weightsync_bytes_loaded_total", "Checkpoint bytes loaded by endpoints "
                       "(a version's size once per endpoint that loaded it).", ["job"])
PUBLISHED_VERSION = Gauge("asyncwebrl_weightsync_published_version", "The job's published version.", ["job"])
ENDPOINTS = Gauge("asyncwebrl_weightsync_endpoints", "Fresh endpoints by the version they serve.",
                  ["job", "version"])
HELD = Gauge("asyncwebrl_weightsync_held_endpoints", "Endpoints held back from the gateway (behind or failed).",
             ["job"])
BROADCASTS = Counter("asyncwebrl_weightsync_broadcasts_total", "Versions sent by broadcast (--transport "
                     "broadcast), by result: ok, partial (some endpoints fell back to disk), failed.",
                     ["job", "result"])
BROADCAST_SECONDS = Histogram("asyncwebrl_weightsync_broadcast_seconds", "Pause, broadcast and continue of "
                              "one version to the group (reading the checkpoint included).", ["job"],
                              buckets=_SECONDS)
GROUP_BUILDS = Counter("asyncwebrl_weightsync_broadcast_group_builds_total", "Broadcast groups built, by "
                       "result (ok, failed).", ["job", "result"])
BROADCAST_FALLBACKS = Counter("asyncwebrl_weightsync_broadcast_fallbacks_total", "Endpoints that got a version "
                              "from disk instead (could not join, or their update failed).", ["job"])
