"""The rollout gateway's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

EPISODES_RUNNING = Gauge("asyncwebrl_rollout_episodes_running", "Episodes holding a pool slot.")
GROUPS_RUNNING = Gauge("asyncwebrl_rollout_groups_running", "Groups started and not yet written or dropped.")
ALLOCATE_WAITS = Counter("asyncwebrl_rollout_allocate_waits_total", "Allocate calls refused because envfleet "
                         "was full (every context leased) or away (restarting), retried after a pause.")
PUT_RETRIES = Counter("asyncwebrl_rollout_put_retries_total", "PutGroup calls retried while the buffer was away.")
EPISODES = Counter("asyncwebrl_rollout_episodes_total", "Episodes finished, by outcome.", ["outcome"])
STEPS_PER_EPISODE = Histogram("asyncwebrl_rollout_steps_per_episode", "Steps of finished episodes.", ["outcome"],
                              buckets=(1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 70))
GENERATE_SECONDS = Histogram("asyncwebrl_rollout_generate_seconds", "Latency of one step's generation.")
TOKENS_PER_STEP = Histogram("asyncwebrl_rollout_tokens_per_step", "Output tokens of one step.",
                            buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
GROUPS_WRITTEN = Counter("asyncwebrl_rollout_groups_written_total", "Groups stored in the buffer.")
GROUPS_DROPPED = Counter("asyncwebrl_rollout_groups_dropped_total", "Groups dropped, by reason.", ["reason"])
GATE_WAITS = Counter("asyncwebrl_rollout_gate_waits_total", "Times the staleness gate held a new group back.")
GATE_CAPACITY = Gauge("asyncwebrl_rollout_gate_capacity", "Last gate capacity read from the buffer.")
GROUP_VERSION_SPAN = Histogram("asyncwebrl_rollout_group_version_span",
                               "Newest minus oldest token version in a written group.", buckets=(0, 1, 2, 3, 4, 6, 8))
GROUP_STALENESS = Histogram("asyncwebrl_rollout_group_staleness",
                            "Trainer version (last read) minus the oldest token version of a written group.",
                            buckets=(0, 1, 2, 3, 4, 6, 8))
BARRIER_WAITS = Counter("asyncwebrl_rollout_barrier_waits_total",
                        "Synchronous mode: times new groups waited for the endpoints to serve the trainer's version.")
JUDGED = Counter("asyncwebrl_rollout_judged_total", "Answered episodes judged against their rubric, by verdict.",
                 ["verdict"])
BAD_GENERATIONS = Counter("asyncwebrl_rollout_bad_generations_total",
                          "Generations that cannot be trained on, by reason: prompt_expansion (the engine "
                          "expanded the image placeholders differently from the gateway), weight_versions, "
                          "logprobs, resume.", ["reason"])
RAW_REWARD = Histogram("asyncwebrl_rollout_raw_reward", "The task's own reward of finished episodes (MiniWoB: -1 "
                       "wrong action, 0 timeout, up to 1 success), whatever the job trains on.",
                       buckets=(-1, -0.5, -1e-9, 0, 0.5, 1))
EPISODES_LOST = Counter("asyncwebrl_rollout_episodes_lost_total", "Episodes left out of their group after a fault "
                        "(the rest of the group is still trained when at least two remain), by reason.", ["reason"])
JUDGE_CALLS = Counter("asyncwebrl_rollout_judge_calls_total", "HTTP calls to the judge, by result: ok (a verdict), "
                      "unparseable (a reply that is no verdict), timeout, refused (no connection), http_5xx, "
                      "http_429, http_error (any other status: not retried), bad_reply (not the API's shape).",
                      ["result"])
JUDGE_SECONDS = Histogram("asyncwebrl_rollout_judge_seconds", "Latency of one HTTP call to the judge.",
                          buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
JUDGE_IN_FLIGHT = Gauge("asyncwebrl_rollout_judge_in_flight", "Calls to the judge under way (at most "
                        "--judge-concurrency).")
JUDGE_RETRIES = Counter("asyncwebrl_rollout_judge_retries_total", "Calls to the judge repeated after a timeout, a "
                        "refused connection, or a 5xx or 429 answer (exponential backoff).")
