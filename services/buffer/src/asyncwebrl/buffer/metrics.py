"""The buffer's Prometheus metrics: counters of this process, and per-job gauges
refreshed from Redis by the sweeper (so every replica reports the same state)."""

from prometheus_client import Counter, Gauge

GROUPS_PUT = Counter("asyncwebrl_buffer_groups_put_total", "PutGroup calls, by result.", ["result"])
STEPS_PUT = Counter("asyncwebrl_buffer_steps_put_total", "Steps in stored groups.")
GROUP_BYTES = Counter("asyncwebrl_buffer_group_bytes_total", "Bytes of stored groups (trajectory records).")
GROUPS_REJECTED = Counter(
    "asyncwebrl_buffer_groups_rejected_total", "Groups rejected at batch time, by reason.", ["reason"]
)
GROUPS_DELIVERED = Counter("asyncwebrl_buffer_groups_delivered_total", "Groups streamed to trainers.")
GROUPS_ACKED = Counter("asyncwebrl_buffer_groups_acked_total", "Groups acked by trainers.")
BLOB_PUTS = Counter("asyncwebrl_buffer_blob_puts_total", "Blobs put through PutBlobs, by result.", ["result"])
SWEPT_BLOBS = Counter("asyncwebrl_buffer_blobs_swept_total", "Unreferenced blobs reclaimed past their deadline.")

STREAM_LENGTH = Gauge("asyncwebrl_buffer_stream_length", "Groups stored (unread or unacked).", ["job"])
STREAM_PENDING = Gauge("asyncwebrl_buffer_stream_pending", "Groups delivered, not yet acked.", ["job"])
STREAM_BYTES = Gauge("asyncwebrl_buffer_stream_bytes", "Serialised bytes of the job's stored groups.", ["job"])
OLDEST_AGE = Gauge("asyncwebrl_buffer_oldest_entry_age_seconds", "Age of the oldest stored group.", ["job"])
DEAD_LETTERS = Gauge("asyncwebrl_buffer_dead_letters", "Entries in the dead-letter stream.", ["job"])
BLOB_COUNT = Gauge("asyncwebrl_buffer_blobs", "Screenshot blobs stored.", ["job"])
BLOB_BYTES = Gauge("asyncwebrl_buffer_blob_bytes", "Screenshot bytes stored.", ["job"])
TRAINER_VERSION = Gauge("asyncwebrl_buffer_trainer_version", "The trainer version the gate reads.", ["job"])
GROUPS = Gauge(
    "asyncwebrl_buffer_groups", "Per-job group counts kept in Redis, by kind (accepted, running, consumed, ...).",
    ["job", "kind"],
)
GATE_CAPACITY = Gauge(
    "asyncwebrl_buffer_gate_capacity", "(eta + v + 1) * B - (accepted + running): > 0 lets a group start.", ["job"]
)
BLOB_BYTES_ALL = Gauge("asyncwebrl_buffer_blob_bytes_all_jobs", "Screenshot bytes of all jobs (the budget's counter).")
BLOB_BUDGET = Gauge("asyncwebrl_buffer_blob_budget_bytes", "Screenshot byte budget for all jobs (0 = none).")

PER_JOB = (
    STREAM_LENGTH, STREAM_PENDING, STREAM_BYTES, OLDEST_AGE, DEAD_LETTERS, BLOB_COUNT, BLOB_BYTES,
    TRAINER_VERSION, GATE_CAPACITY,
)
