"""envfleet's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

SESSIONS = Gauge("asyncwebrl_envfleet_sessions", "Leased sessions (browser contexts in use).")
SLOTS = Gauge("asyncwebrl_envfleet_slots", "Session slots, by state.", ["state"])
BROWSERS = Gauge("asyncwebrl_envfleet_browsers", "Connected Chromium processes.")
STEPS = Counter("asyncwebrl_envfleet_steps_total", "Steps run, by action type.", ["action"])
STEP_SECONDS = Histogram(
    "asyncwebrl_envfleet_step_seconds",
    "Time from a Step request to its observation.",
    buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24),
)
ALLOCATE_SECONDS = Histogram(
    "asyncwebrl_envfleet_allocate_seconds",
    "Time to open a context and load a task.",
    buckets=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8),
)
ALLOCATIONS = Counter("asyncwebrl_envfleet_allocations_total", "Allocate calls, by result.", ["result"])
BLOB_BACKPRESSURE = Counter(
    "asyncwebrl_envfleet_blob_backpressure_total",
    "Screenshot writes that met the blob budget: waited (retried) or refused.",
    ["result"],
)
SCREENSHOT_BYTES = Counter("asyncwebrl_envfleet_screenshot_bytes_total", "Encoded screenshot bytes written.")
SCREENSHOTS = Counter("asyncwebrl_envfleet_screenshots_total", "Screenshots taken, by format.", ["format"])
BROWSER_RESTARTS = Counter("asyncwebrl_envfleet_browser_restarts_total", "Chromium processes replaced after a crash.")
BLOCKED = Counter(
    "asyncwebrl_envfleet_blocked_requests_total", "Requests, navigations and windows blocked by the host policy.", ["reason"]
)
ENV_FAULTS = Counter("asyncwebrl_envfleet_env_faults_total", "Episodes voided by an environment fault.", ["kind"])
EXPIRED = Counter("asyncwebrl_envfleet_expired_leases_total", "Idle sessions reclaimed.")
OWNER_LOST = Counter("asyncwebrl_envfleet_owner_lost_sessions_total", "Sessions reclaimed because their owner "
                     "stopped renewing (a gateway killed mid-episode): episodes lost.")
WARM_RESETS = Counter("asyncwebrl_envfleet_warm_resets_total", "Episodes started by an in-page reset of a parked context.")
SITE_UNREACHABLE = Counter(
    "asyncwebrl_envfleet_site_unreachable_total",
    "Live-website tasks (web_task) whose start page could not be loaded at Allocate, by kind (dns, refused, "
    "timeout, http_5xx, blocked: redirected off the allowed origins, other): environment faults answered UNAVAILABLE, never episodes.",
    ["kind"],
)
