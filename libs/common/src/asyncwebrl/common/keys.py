"""The Redis key layout, in one place so every service agrees on it.

``P`` is the deployment's key prefix (``--key-prefix``, default ``asyncwebrl:``)
and ``J = P + "job:" + job_id + ":"`` the prefix of everything one job owns, so
deleting a job's data is one ``SCAN MATCH J*``.

Per job (``J``):

===========================  ========  ===============================================
key                          type      what
===========================  ========  ===============================================
``J blob:<sha256>``          hash      screenshot: data, mime, width, height, size,
                                       refs (groups that reference it)
``J blobs:unref``            zset      sha256 -> deadline (ms) of blobs no stored group
                                       references; reclaimed after the deadline
``J blobs:stat``             hash      count, bytes of this job's blobs
``J groups``                 stream    one entry per accepted GRPO group: gid, minv,
                                       maxv, steps, zv, blobs, tokens, crc, size; consumer
                                       group ``trainers``; capped with MAXLEN ~
``J data:<group_id>``        string    the serialised Group (payload of the entry);
                                       TTL until its entry is stored, then none
``J gid:<group_id>``         string    stream entry id; idempotency of PutGroup,
                                       expires after the dedup window
``J batch:<batch_id>``       hash      consumer, ids, state (open | acked)
``J dead``                   stream    dead letters: entries that failed validation
                                       on read too often, with the reason and data
``J counters``               hash      accepted, steps_accepted, duplicate, consumed,
                                       steps_consumed, group_bytes, rejected:<reason>,
                                       zero_variance_kept, dead_letter, version
``J config``                 hash      batch_groups, max_staleness,
                                       keep_zero_variance, max_stream_groups
``J running``                hash      gateway -> "groups:expires_ms"
``J endpoints``              hash      endpoint id -> JSON {url, ready, weight_version,
                                       heartbeat_ms, kind}: the inference registry
``J endpoints:held``         hash      endpoint id -> why weightsync keeps the gateway
                                       off it (behind, failed); absent = not held
``J weights``                hash      version, path, checksum, at_ms of the published
                                       version (weightsync); never decreases
``J weights:endpoints``      hash      endpoint id -> JSON {version, ok, seconds,
                                       error, failures, at_ms}: last sync per endpoint
``J weights:lock``           string    weightsync's publish lock (token, expires)
``J weights:lock:<endpoint>`` string   one load at a time into that endpoint
===========================  ========  ===============================================

Deployment-wide (``P``):

===========================  ========  ===============================================
``P jobs``                   set       job ids that own keys (for the blob sweeper)
``P blobs:bytes``            string    blob bytes of all jobs (the budget's counter)
``P blobs:budget``           string    blob byte budget for all jobs; absent = none
===========================  ========  ===============================================

Task sets (``P tasksets``, ``P tasksets:bytes``, ``P taskset:<name>:meta``, ``P taskset:<name>:tasks``) are
laid out, and only written, by ``common.tasksets``.

The Lua scripts build per-job key names from ``J`` themselves, which is fine
for one Redis (or a primary with replicas) but not Redis Cluster.
"""

from __future__ import annotations

import re

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_JOB = "default"
CONSUMER_GROUP = "trainers"


def is_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


def job_prefix(prefix: str, job_id: str) -> str:
    """``J``: the prefix of every key one job owns."""
    if not is_job_id(job_id):
        raise ValueError(f"job_id: must match [A-Za-z0-9_-]{{1,64}}, got {job_id[:80]!r}")
    return f"{prefix}job:{job_id}:"


def blob_key(job_prefix_: str, sha256: str) -> str:
    return f"{job_prefix_}blob:{sha256}"


def jobs_key(prefix: str) -> str:
    return f"{prefix}jobs"


def blob_bytes_key(prefix: str) -> str:
    return f"{prefix}blobs:bytes"


def blob_budget_key(prefix: str) -> str:
    return f"{prefix}blobs:budget"
