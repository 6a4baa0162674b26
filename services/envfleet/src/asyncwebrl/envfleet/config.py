"""envfleet's configuration: flags and ASYNCWEBRL_* variables, checked at start-up."""

from __future__ import annotations

import dataclasses
import os

from asyncwebrl.common.config import option, require
from asyncwebrl.common.service_config import GrpcConfig, require_target
from asyncwebrl.envfleet import security

# Flags the project runs Chromium with everywhere (no sandbox: we run as root in
# a container whose NetworkPolicy is the outer wall; no background traffic).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# setTimeout's largest delay; anything bigger fires at once.
TIMER_OFF_MS = 2**31 - 1


@dataclasses.dataclass(kw_only=True)
class EnvfleetConfig(GrpcConfig):
    """Browser-environment fleet: Chromium contexts behind the gRPC EnvService.

    No Redis: screenshots go to the buffer (``PutBlobs``), which owns the blob store, its TTL and its budget.
    """

    grpc_port: int = option(50061, "gRPC port; 0 picks a free one (logged at start).")
    http_port: int = option(9461, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    browsers: int = option(1, "Chromium processes in this replica.")
    contexts_per_browser: int = option(4, "Concurrent episodes (browser contexts) per Chromium process.")
    warm_reset: bool = option(
        False,
        "Reuse a released context for the next episode of the same task where the source can reset in the page "
        "(MiniWoB), as the miniwob gym does: far cheaper than a fresh context for short episodes, but an episode "
        "can see what the previous one left in the page (storage, globals), so it is off by default.",
    )
    chromium_path: str = option("/usr/bin/chromium", "Chromium executable.")
    chromium_extra_flags: tuple[str, ...] = option((), "Extra Chromium flags, comma-separated.")
    lease_timeout_s: float = option(300.0, "An idle session (no Step) is reclaimed after this many seconds.")
    owner_ttl_s: float = option(20.0, "A session whose owner (AllocateRequest.owner) has not renewed for this "
                                      "many seconds is reclaimed: its gateway died.")
    screenshot_format: str = option("jpeg", "Default screenshot format: jpeg or png.")
    screenshot_quality: int = option(80, "Default JPEG quality (1-100).")
    buffer_target: str = option(
        "", "buffer gRPC address (HOST:PORT), required: screenshots are stored through its PutBlobs, with the "
        "shared --auth-token."
    )
    buffer_timeout_s: float = option(5.0, "Deadline of one PutBlobs call to the buffer.")
    blob_wait_s: float = option(
        10.0, "Past the buffer's blob budget, how long a step waits for memory before RESOURCE_EXHAUSTED."
    )
    action_timeout_ms: int = option(5000, "Timeout of one browser operation (click, type, screenshot).")
    navigation_timeout_ms: int = option(15000, "Timeout of a page load (Allocate, navigate, go_back).")
    max_type_chars: int = option(2000, "Longest text a type action may enter.")
    max_wait_ms: int = option(10000, "Longest wait action.")
    settle_ms: int = option(
        -1,
        "Pause after an input action so a navigation it triggers is seen and waited for before the screenshot; "
        "-1 uses each task source's own (0 for MiniWoB, whose clicks do not navigate; 150 for the built-in sites).",
    )
    max_elements: int = option(200, "Most elements returned when a client asks for them.")
    max_viewport: int = option(4096, "Largest viewport width or height a client may ask for.")
    miniwob_episode_ms: int = option(
        0, "MiniWoB's in-page episode timer in ms; 0 switches it off (a time-scaled reward is not what RL wants)."
    )
    task_sources: tuple[str, ...] = option(
        ("miniwob", "webgym-lite"), "Task sources to serve: miniwob, webgym-lite (the built-in sites), static."
    )
    static_task_dirs: tuple[str, ...] = option(
        (), "Directories of HTML pages served as tasks 'static/<dir name>/<page>' (the static source)."
    )
    resolve_host_map: tuple[str, ...] = option(
        (),
        "FOR TESTS AND OFFLINE MIRRORS ONLY: NAME=IP pairs, comma-separated (shop.test=127.0.0.1), that Chromium "
        "resolves as given (its --host-resolver-rules) and that live-website tasks (AllocateRequest.web_task) may "
        "then use although the address is loopback or private. It is the only way a task's host may reach such an "
        "address; every mapped name is logged as a warning at start. Never set it where the mapped addresses hold "
        "anything an agent must not reach.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.browsers <= 64, "browsers", "must be in [1, 64]")
        require(1 <= self.contexts_per_browser <= 64, "contexts_per_browser", "must be in [1, 64]")
        require(os.access(self.chromium_path, os.X_OK), "chromium_path", f"{self.chromium_path} is not executable")
        require(self.lease_timeout_s >= 1, "lease_timeout_s", "must be at least 1")
        require(1 <= self.owner_ttl_s <= 3600, "owner_ttl_s", "must be in [1, 3600]")
        require(self.screenshot_format in ("jpeg", "png"), "screenshot_format", "must be jpeg or png")
        require(1 <= self.screenshot_quality <= 100, "screenshot_quality", "must be in [1, 100]")
        require(bool(self.buffer_target), "buffer_target", "is required (the buffer's HOST:PORT)")
        require_target(self.buffer_target, "buffer_target")
        require(0.1 <= self.buffer_timeout_s <= 120, "buffer_timeout_s", "must be in [0.1, 120]")
        require(0 <= self.blob_wait_s <= 600, "blob_wait_s", "must be in [0, 600]")
        require(100 <= self.action_timeout_ms <= 120_000, "action_timeout_ms", "must be in [100, 120000]")
        require(100 <= self.navigation_timeout_ms <= 300_000, "navigation_timeout_ms", "must be in [100, 300000]")
        require(1 <= self.max_type_chars <= 100_000, "max_type_chars", "must be in [1, 100000]")
        require(0 <= self.max_wait_ms <= 120_000, "max_wait_ms", "must be in [0, 120000]")
        require(-1 <= self.settle_ms <= 2000, "settle_ms", "must be in [-1, 2000]")
        require(0 <= self.max_elements <= 5000, "max_elements", "must be in [0, 5000]")
        require(64 <= self.max_viewport <= 8192, "max_viewport", "must be in [64, 8192]")
        require(0 <= self.miniwob_episode_ms <= TIMER_OFF_MS, "miniwob_episode_ms", f"must be in [0, {TIMER_OFF_MS}]")
        try:
            security.parse_host_map(self.resolve_host_map)
        except ValueError as exc:
            require(False, "resolve_host_map", str(exc))
        require(
            not any(f.split("=", 1)[0] in ("--host-resolver-rules", "--proxy-server", "--proxy-pac-url")
                    for f in self.chromium_extra_flags),
            "chromium_extra_flags",
            "must not change name resolution or proxies (--resolve-host-map is the one, logged, way)",
        )
        for source in self.task_sources:
            require(source in ("miniwob", "webgym-lite", "static"), "task_sources", f"unknown source {source!r}")
        for d in self.static_task_dirs:
            require(os.path.isdir(d), "static_task_dirs", f"{d} is not a directory")
        require(
            "static" not in self.task_sources or bool(self.static_task_dirs),
            "static_task_dirs",
            "the static source needs at least one directory",
        )

    @property
    def host_map(self) -> dict[str, str]:
        return security.parse_host_map(self.resolve_host_map)

    @property
    def slots(self) -> int:
        return self.browsers * self.contexts_per_browser
