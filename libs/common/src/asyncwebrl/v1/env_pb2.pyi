from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]

class CoordinateSpace(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COORDINATE_SPACE_UNSPECIFIED: _ClassVar[CoordinateSpace]
    COORDINATE_SPACE_NORMALIZED_1000: _ClassVar[CoordinateSpace]
    COORDINATE_SPACE_PIXELS: _ClassVar[CoordinateSpace]

class ScrollDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCROLL_DIRECTION_UNSPECIFIED: _ClassVar[ScrollDirection]
    SCROLL_DIRECTION_UP: _ClassVar[ScrollDirection]
    SCROLL_DIRECTION_DOWN: _ClassVar[ScrollDirection]
    SCROLL_DIRECTION_LEFT: _ClassVar[ScrollDirection]
    SCROLL_DIRECTION_RIGHT: _ClassVar[ScrollDirection]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
COORDINATE_SPACE_UNSPECIFIED: CoordinateSpace
COORDINATE_SPACE_NORMALIZED_1000: CoordinateSpace
COORDINATE_SPACE_PIXELS: CoordinateSpace
SCROLL_DIRECTION_UNSPECIFIED: ScrollDirection
SCROLL_DIRECTION_UP: ScrollDirection
SCROLL_DIRECTION_DOWN: ScrollDirection
SCROLL_DIRECTION_LEFT: ScrollDirection
SCROLL_DIRECTION_RIGHT: ScrollDirection

class Viewport(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "source", "difficulty", "default_viewport", "description", "held_out", "optimal_steps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VIEWPORT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    OPTIMAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    difficulty: str
    default_viewport: Viewport
    description: str
    held_out: bool
    optimal_steps: int
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., difficulty: _Optional[str] = ..., default_viewport: _Optional[_Union[Viewport, _Mapping]] = ..., description: _Optional[str] = ..., held_out: _Optional[bool] = ..., optimal_steps: _Optional[int] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("source", "page_size", "page_token")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    source: str
    page_size: int
    page_token: str
    def __init__(self, source: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ScreenshotOptions(_message.Message):
    __slots__ = ("format", "quality")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    format: ImageFormat
    quality: int
    def __init__(self, format: _Optional[_Union[ImageFormat, str]] = ..., quality: _Optional[int] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("task", "seed", "viewport", "screenshot", "include_elements", "job_id", "owner", "web_task")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VIEWPORT_FIELD_NUMBER: _ClassVar[int]
    SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WEB_TASK_FIELD_NUMBER: _ClassVar[int]
    task: str
    seed: int
    viewport: Viewport
    screenshot: ScreenshotOptions
    include_elements: bool
    job_id: str
    owner: str
    web_task: WebTask
    def __init__(self, task: _Optional[str] = ..., seed: _Optional[int] = ..., viewport: _Optional[_Union[Viewport, _Mapping]] = ..., screenshot: _Optional[_Union[ScreenshotOptions, _Mapping]] = ..., include_elements: _Optional[bool] = ..., job_id: _Optional[str] = ..., owner: _Optional[str] = ..., web_task: _Optional[_Union[WebTask, _Mapping]] = ...) -> None: ...

class WebTask(_message.Message):
    __slots__ = ("task_id", "instruction", "start_url", "allowed_origins")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    START_URL_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    instruction: str
    start_url: str
    allowed_origins: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., instruction: _Optional[str] = ..., start_url: _Optional[str] = ..., allowed_origins: _Optional[_Iterable[str]] = ...) -> None: ...

class ScreenshotRef(_message.Message):
    __slots__ = ("sha256", "width", "height", "mime", "size_bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MIME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    width: int
    height: int
    mime: str
    size_bytes: int
    def __init__(self, sha256: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., mime: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Element(_message.Message):
    __slots__ = ("tag", "id", "text", "type", "x", "y", "width", "height")
    TAG_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    tag: str
    id: str
    text: str
    type: str
    x: float
    y: float
    width: float
    height: float
    def __init__(self, tag: _Optional[str] = ..., id: _Optional[str] = ..., text: _Optional[str] = ..., type: _Optional[str] = ..., x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("screenshot", "url", "title", "instruction", "step_index", "elements")
    SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    screenshot: ScreenshotRef
    url: str
    title: str
    instruction: str
    step_index: int
    elements: _containers.RepeatedCompositeFieldContainer[Element]
    def __init__(self, screenshot: _Optional[_Union[ScreenshotRef, _Mapping]] = ..., url: _Optional[str] = ..., title: _Optional[str] = ..., instruction: _Optional[str] = ..., step_index: _Optional[int] = ..., elements: _Optional[_Iterable[_Union[Element, _Mapping]]] = ...) -> None: ...

class AllocateResponse(_message.Message):
    __slots__ = ("session_id", "observation", "task", "viewport", "lease_timeout_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VIEWPORT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    observation: Observation
    task: TaskInfo
    viewport: Viewport
    lease_timeout_s: float
    def __init__(self, session_id: _Optional[str] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ..., task: _Optional[_Union[TaskInfo, _Mapping]] = ..., viewport: _Optional[_Union[Viewport, _Mapping]] = ..., lease_timeout_s: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Click(_message.Message):
    __slots__ = ("at",)
    AT_FIELD_NUMBER: _ClassVar[int]
    at: Point
    def __init__(self, at: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class TypeText(_message.Message):
    __slots__ = ("text", "at", "clear", "enter")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    ENTER_FIELD_NUMBER: _ClassVar[int]
    text: str
    at: Point
    clear: bool
    enter: bool
    def __init__(self, text: _Optional[str] = ..., at: _Optional[_Union[Point, _Mapping]] = ..., clear: _Optional[bool] = ..., enter: _Optional[bool] = ...) -> None: ...

class Press(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class Scroll(_message.Message):
    __slots__ = ("direction", "amount", "at")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    direction: ScrollDirection
    amount: float
    at: Point
    def __init__(self, direction: _Optional[_Union[ScrollDirection, str]] = ..., amount: _Optional[float] = ..., at: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class GoBack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Navigate(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("ms",)
    MS_FIELD_NUMBER: _ClassVar[int]
    ms: int
    def __init__(self, ms: _Optional[int] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("coordinates", "click", "double_click", "type", "press", "scroll", "go_back", "navigate", "wait", "answer")
    COORDINATES_FIELD_NUMBER: _ClassVar[int]
    CLICK_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_CLICK_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRESS_FIELD_NUMBER: _ClassVar[int]
    SCROLL_FIELD_NUMBER: _ClassVar[int]
    GO_BACK_FIELD_NUMBER: _ClassVar[int]
    NAVIGATE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    coordinates: CoordinateSpace
    click: Click
    double_click: Click
    type: TypeText
    press: Press
    scroll: Scroll
    go_back: GoBack
    navigate: Navigate
    wait: Wait
    answer: Answer
    def __init__(self, coordinates: _Optional[_Union[CoordinateSpace, str]] = ..., click: _Optional[_Union[Click, _Mapping]] = ..., double_click: _Optional[_Union[Click, _Mapping]] = ..., type: _Optional[_Union[TypeText, _Mapping]] = ..., press: _Optional[_Union[Press, _Mapping]] = ..., scroll: _Optional[_Union[Scroll, _Mapping]] = ..., go_back: _Optional[_Union[GoBack, _Mapping]] = ..., navigate: _Optional[_Union[Navigate, _Mapping]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., answer: _Optional[_Union[Answer, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "action")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    action: Action
    def __init__(self, session_id: _Optional[str] = ..., action: _Optional[_Union[Action, _Mapping]] = ...) -> None: ...

class StepInfo(_message.Message):
    __slots__ = ("action_type", "blocked", "blocked_reason", "reward_reason", "answer", "page_changed", "duration_s", "error", "blocked_requests")
    ACTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_REASON_FIELD_NUMBER: _ClassVar[int]
    REWARD_REASON_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    PAGE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    action_type: str
    blocked: bool
    blocked_reason: str
    reward_reason: str
    answer: str
    page_changed: bool
    duration_s: float
    error: str
    blocked_requests: int
    def __init__(self, action_type: _Optional[str] = ..., blocked: _Optional[bool] = ..., blocked_reason: _Optional[str] = ..., reward_reason: _Optional[str] = ..., answer: _Optional[str] = ..., page_changed: _Optional[bool] = ..., duration_s: _Optional[float] = ..., error: _Optional[str] = ..., blocked_requests: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("observation", "reward", "done", "info")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    observation: Observation
    reward: float
    done: bool
    info: StepInfo
    def __init__(self, observation: _Optional[_Union[Observation, _Mapping]] = ..., reward: _Optional[float] = ..., done: _Optional[bool] = ..., info: _Optional[_Union[StepInfo, _Mapping]] = ...) -> None: ...

class OracleRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class OracleResponse(_message.Message):
    __slots__ = ("available", "action", "reason")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    available: bool
    action: Action
    reason: str
    def __init__(self, available: _Optional[bool] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("owner",)
    OWNER_FIELD_NUMBER: _ClassVar[int]
    owner: str
    def __init__(self, owner: _Optional[str] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("sessions", "owner_ttl_s")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    OWNER_TTL_S_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    owner_ttl_s: float
    def __init__(self, sessions: _Optional[int] = ..., owner_ttl_s: _Optional[float] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BrowserStats(_message.Message):
    __slots__ = ("index", "pid", "contexts", "connected", "restarts", "parked_contexts")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    PARKED_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    pid: int
    contexts: int
    connected: bool
    restarts: int
    parked_contexts: int
    def __init__(self, index: _Optional[int] = ..., pid: _Optional[int] = ..., contexts: _Optional[int] = ..., connected: _Optional[bool] = ..., restarts: _Optional[int] = ..., parked_contexts: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("slots_total", "slots_free", "sessions", "browsers", "browser_restarts", "blocked_requests", "steps_total", "env_faults", "expired_leases", "browser", "warm_resets")
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    BROWSERS_FIELD_NUMBER: _ClassVar[int]
    BROWSER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ENV_FAULTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_LEASES_FIELD_NUMBER: _ClassVar[int]
    BROWSER_FIELD_NUMBER: _ClassVar[int]
    WARM_RESETS_FIELD_NUMBER: _ClassVar[int]
    slots_total: int
    slots_free: int
    sessions: int
    browsers: int
    browser_restarts: int
    blocked_requests: int
    steps_total: int
    env_faults: int
    expired_leases: int
    browser: _containers.RepeatedCompositeFieldContainer[BrowserStats]
    warm_resets: int
    def __init__(self, slots_total: _Optional[int] = ..., slots_free: _Optional[int] = ..., sessions: _Optional[int] = ..., browsers: _Optional[int] = ..., browser_restarts: _Optional[int] = ..., blocked_requests: _Optional[int] = ..., steps_total: _Optional[int] = ..., env_faults: _Optional[int] = ..., expired_leases: _Optional[int] = ..., browser: _Optional[_Iterable[_Union[BrowserStats, _Mapping]]] = ..., warm_resets: _Optional[int] = ...) -> None: ...
