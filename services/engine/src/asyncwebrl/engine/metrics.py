"""The engine's Prometheus metrics (SGLang exposes the same ideas as sglang:*)."""

from prometheus_client import Counter, Gauge, Histogram

RUNNING = Gauge("asyncwebrl_engine_running_requests", "Requests in the running batch.")
QUEUED = Gauge("asyncwebrl_engine_queued_requests", "Requests waiting for a batch slot (or for continue).")
PAUSED = Gauge("asyncwebrl_engine_paused", "1 while generation is paused.")
PAUSES = Counter("asyncwebrl_engine_pauses_total", "pause_generation calls served.")
PROMPT_TOKENS = Counter("asyncwebrl_engine_prompt_tokens_total", "Prompt tokens prefilled.")
GENERATED_TOKENS = Counter("asyncwebrl_engine_generated_tokens_total", "Output tokens generated.")
FINISHED = Counter("asyncwebrl_engine_requests_finished_total", "Requests finished, by finish reason.", ["reason"])
REJECTED = Counter("asyncwebrl_engine_requests_rejected_total", "Requests refused with 4xx, by endpoint.", ["endpoint"])
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PREFILL_BATCH = Histogram("asyncwebrl_engine_prefill_batch_size", "Requests per prefill.", buckets=BATCH_BUCKETS)
DECODE_BATCH = Histogram("asyncwebrl_engine_decode_batch_size", "Requests per decode step.", buckets=BATCH_BUCKETS)
TTFT = Histogram("asyncwebrl_engine_time_to_first_token_seconds", "Queue + prefill time of a request.")
E2E = Histogram("asyncwebrl_engine_e2e_request_latency_seconds", "Time from arrival to finish.")
WEIGHT_UPDATES = Counter("asyncwebrl_engine_weight_updates_total", "Successful update_weights_from_disk calls.")
WEIGHT_LOAD_SECONDS = Histogram("asyncwebrl_engine_weight_load_seconds", "Time to load new weights.")
WEIGHT_VERSION = Gauge("asyncwebrl_engine_weight_version_info", "1 for the weight version being served.", ["version"])
IMAGE_CACHE = Counter("asyncwebrl_engine_image_cache_total", "Processed-image cache lookups, by result.", ["result"])
DISTRIBUTED_UPDATES = Counter("asyncwebrl_engine_distributed_weight_updates_total",
                              "update_weights_from_distributed calls by result (ok, failed).", ["result"])
BROADCAST_RECEIVE_SECONDS = Histogram("asyncwebrl_engine_broadcast_receive_seconds",
                                      "Time to receive one update_weights_from_distributed broadcast.")
WEIGHT_UPDATE_GROUPS = Gauge("asyncwebrl_engine_weight_update_groups",
                             "Weight-update process groups this engine is a member of.")
