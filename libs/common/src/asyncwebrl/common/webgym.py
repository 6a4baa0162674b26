"""WebGym-format task files (JSONL): load and validate, nothing more. Shared by the api (task sets) and the
rollout gateway, so it lives in libs/common.

One task per line, an object with

- ``task_id``: a string or an integer, unique in the file (``WebGymTask.id``);
- ``task_name``: the instruction (non-empty string, at most ``MAX_TASK_NAME`` characters; ``.instruction``);
- ``website``: where the task starts, an http(s) URL with a host and no credentials;
- ``difficulty``: WebGym's 1-10 integer (<= 3 easy, 4-6 medium, >= 7 hard), or "easy" / "medium" / "hard"
  (then its ``level`` is ``WORD_LEVELS[word]``);
- ``evaluator_reference``: the rubric facts a judge checks, a non-empty list (at most ``MAX_FACTS``) of
  strings or objects with a "description" or "fact" string (at most ``MAX_FACT_CHARS`` each); kept as given;
- ``reference_answer``: a string or null (optional);
- ``allowed_origins``: optional list (at most ``MAX_ORIGINS``) of extra origins navigation may reach besides the
  website's own, each an http(s) origin (``scheme://host[:port]``, no path, no credentials);
- ``split``: optional, one of ``SPLITS`` (train, test, test_ood: out-of-distribution test tasks); without it
  ``split_of`` places the task by a hash of its id;

and any other field, kept in ``WebGymTask.extra``. Blank lines are skipped. ``load_webgym`` checks every
line and raises one ``ValueError`` (``WebGymFormatError``) that lists every problem as
``line N: <field>: <problem>`` (``problems`` holds them as (line, field, problem)). Bounded: at most
``MAX_FILE_BYTES`` per file, ``MAX_TASKS`` tasks, ``MAX_LINES`` lines, ``MAX_LINE_CHARS`` per line.

These tasks point at live websites and need a judge for their reward; this module only reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any
from urllib.parse import urlsplit

from asyncwebrl.common.tasks import DIFFICULTIES, STEP_LIMITS

REQUIRED = ("task_id", "task_name", "website", "difficulty", "evaluator_reference")
KNOWN = (*REQUIRED, "reference_answer", "allowed_origins", "split")
SPLITS = ("train", "test", "test_ood")
# How envfleet's UNAVAILABLE begins when a task's start page cannot be loaded: the gateway fails that
# episode at once (an environment fault) rather than wait, as it does for an envfleet that is away.
SITE_UNREACHABLE = "site unreachable: "
TRAIN_PERCENT = 80  # split_of: tasks without a split, by hash of their id: 80 % train, 20 % test
WORD_LEVELS = {"easy": 2, "medium": 5, "hard": 8}  # the 1-10 level of a task whose difficulty is a word

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_LINE_CHARS = 200_000
MAX_LINES = 1_000_000
MAX_TASKS = 100_000
MAX_TASK_NAME = 4_000
MAX_URL_CHARS = 2_000
MAX_FACTS = 100
MAX_FACT_CHARS = 1_000
MAX_ANSWER_CHARS = 4_000
MAX_TASK_ID_CHARS = 200
MAX_ORIGINS = 32

EXAMPLE = pathlib.Path(__file__).parent / "data" / "webgym-example.jsonl"


@dataclasses.dataclass(frozen=True)
class WebGymTask:
    task_id: str  # as given; an integer id becomes its decimal string
    task_name: str
    website: str
    difficulty: str  # easy | medium | hard
    raw_difficulty: int | str  # as given in the file
    evaluator_reference: tuple[str | dict[str, Any], ...]
    reference_answer: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    line: int = 0  # where it was in its file (1-based)
    allowed_origins: tuple[str, ...] = ()  # extra origins, normalised (see ``origin``)
    explicit_split: str | None = None  # as given in the file, or None

    @property
    def id(self) -> str:
        return self.task_id

    @property
    def instruction(self) -> str:
        return self.task_name

    @property
    def level(self) -> int:
        """The 1-10 difficulty: as given, or ``WORD_LEVELS`` of a word."""
        return self.raw_difficulty if isinstance(self.raw_difficulty, int) else WORD_LEVELS[self.difficulty]

    @property
    def split(self) -> str:
        return split_of(self.task_id, self.explicit_split)

    def record(self) -> dict[str, Any]:
        """The task as stored (JSON): what a task set keeps of it."""
        return {"id": self.task_id, "instruction": self.task_name, "website": self.website, "level": self.level,
                "difficulty": self.difficulty, "evaluator_reference": list(self.evaluator_reference),
                "reference_answer": self.reference_answer, "allowed_origins": list(self.allowed_origins),
                "split": self.split, "line": self.line, "extra": self.extra}


class WebGymFormatError(ValueError):
    """Every bad line of a file; ``errors`` holds the ``line N: field: problem`` strings, ``problems`` the
    (line, field, problem) triples."""

    def __init__(self, path: str, problems: list[tuple[int, str, str]]) -> None:
        self.problems = problems
        self.errors = [f"line {n}: {field}: {what}" for n, field, what in problems]
        super().__init__(f"{path}: {len(problems)} problem(s) in WebGym tasks:\n" + "\n".join(self.errors))


def split_of(task_id: str, explicit: str | None = None) -> str:
    """``explicit`` when the file gives one, else train or test by the first 8 bytes of sha256(task id):
    the same in every process and Python version (no ``hash()``)."""
    if explicit is not None:
        return explicit
    bucket = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") % 100
    return "train" if bucket < TRAIN_PERCENT else "test"


def webgym_difficulty(value: Any) -> str:
    """WebGym's 1-10 (or easy/medium/hard) as easy/medium/hard; ValueError if it is neither."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in DIFFICULTIES:
            return word
        raise ValueError(f"must be an integer 1-10 or one of {', '.join(DIFFICULTIES)}, got {value[:40]!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer 1-10 or one of {', '.join(DIFFICULTIES)}, got {type(value).__name__}")
    if not 1 <= value <= 10:
        raise ValueError(f"must be in 1-10, got {value}")
    return "easy" if value <= 3 else "medium" if value <= 6 else "hard"


def _website_problem(url: str) -> str | None:
    if not url.strip():
        return "must not be empty"
    if len(url) > MAX_URL_CHARS:
        return f"longer than {MAX_URL_CHARS} characters"
    if url != url.strip() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"must be an http(s) URL, got scheme {parts.scheme[:20]!r}" if parts.scheme else "must be an http(s) URL"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    return None


def _fact_problem(index: int, fact: Any) -> str | None:
    where = f"evaluator_reference[{index}]"
    if isinstance(fact, dict):
        text = fact.get("description", fact.get("fact"))
        if text is None:
            return f'{where}: an object needs a "description" or "fact" string'
    else:
        text = fact
    if not isinstance(text, str):
        return f"{where}: must be a string or an object with a description, got {type(text).__name__}"
    if not text.strip():
        return f"{where}: must not be empty"
    if len(text) > MAX_FACT_CHARS:
        return f"{where}: longer than {MAX_FACT_CHARS} characters"
    return None


def _check(obj: dict[str, Any]) -> list[str]:
    """The (field, problem) messages of one task object, without the line prefix."""
    problems = [f"{name}: missing" for name in REQUIRED if name not in obj]
    if "task_id" in obj:
        tid = obj["task_id"]
        if isinstance(tid, bool) or not isinstance(tid, (str, int)):
            problems.append(f"task_id: must be a string or an integer, got {type(tid).__name__}")
        elif isinstance(tid, str) and not tid.strip():
            problems.append("task_id: must not be empty")
        elif isinstance(tid, str) and len(tid) > MAX_TASK_ID_CHARS:
            problems.append(f"task_id: longer than {MAX_TASK_ID_CHARS} characters")
    if "task_name" in obj:
        name = obj["task_name"]
        if not isinstance(name, str):
            problems.append(f"task_name: must be a string, got {type(name).__name__}")
        elif not name.strip():
            problems.append("task_name: must not be empty")
        elif len(name) > MAX_TASK_NAME:
            problems.append(f"task_name: longer than {MAX_TASK_NAME} characters")
    if "website" in obj:
        url = obj["website"]
        problem = _website_problem(url) if isinstance(url, str) else f"must be a string, got {type(url).__name__}"
        if problem:
            problems.append(f"website: {problem}")
    if "difficulty" in obj:
        try:
            webgym_difficulty(obj["difficulty"])
        except ValueError as exc:
            problems.append(f"difficulty: {exc}")
    if "evaluator_reference" in obj:
        facts = obj["evaluator_reference"]
        if not isinstance(facts, list):
            problems.append(f"evaluator_reference: must be a list, got {type(facts).__name__}")
        elif not facts:
            problems.append("evaluator_reference: must hold at least one fact")
        elif len(facts) > MAX_FACTS:
            problems.append(f"evaluator_reference: more than {MAX_FACTS} facts")
        else:
            problems += [p for i, f in enumerate(facts) if (p := _fact_problem(i, f))]
    answer = obj.get("reference_answer")
    if answer is not None:
        if not isinstance(answer, str):
            problems.append(f"reference_answer: must be a string or null, got {type(answer).__name__}")
        elif len(answer) > MAX_ANSWER_CHARS:
            problems.append(f"reference_answer: longer than {MAX_ANSWER_CHARS} characters")
    if "allowed_origins" in obj:
        extra = obj["allowed_origins"]
        if not isinstance(extra, list):
            problems.append(f"allowed_origins: must be a list, got {type(extra).__name__}")
        elif len(extra) > MAX_ORIGINS:
            problems.append(f"allowed_origins: more than {MAX_ORIGINS} origins")
        else:
            problems += [f"allowed_origins[{i}]: {p}" for i, o in enumerate(extra) if (p := _origin_problem(o))]
    if "split" in obj and obj["split"] not in SPLITS:
        split = obj["split"]
        got = repr(split[:20]) if isinstance(split, str) else type(split).__name__
        problems.append(f"split: must be one of {', '.join(SPLITS)}, got {got}")
    return problems


def _origin_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    problem = _website_problem(value)
    if problem:
        return problem
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be an origin (scheme://host[:port]), without a path, query or fragment"
    return None


def _task(obj: dict[str, Any], line: int) -> WebGymTask:
    return WebGymTask(
        task_id=str(obj["task_id"]), task_name=obj["task_name"], website=obj["website"],
        difficulty=webgym_difficulty(obj["difficulty"]), raw_difficulty=obj["difficulty"],
        evaluator_reference=tuple(obj["evaluator_reference"]), reference_answer=obj.get("reference_answer"),
        extra={k: v for k, v in obj.items() if k not in KNOWN}, line=line,
        allowed_origins=tuple(dict.fromkeys(origin(o) for o in obj.get("allowed_origins", []))),
        explicit_split=obj.get("split"),
    )


def parse_webgym(lines: list[bytes] | list[str], source: str = "<tasks>",
                 max_tasks: int = MAX_TASKS) -> list[WebGymTask]:
    """The tasks of JSONL ``lines`` (bytes or str, one per line); WebGymFormatError listing every bad line.
    More than ``max_tasks`` tasks (at most ``MAX_TASKS``) or ``MAX_LINES`` lines is a problem of the file."""
    max_tasks = min(max_tasks, MAX_TASKS)
    errors: list[tuple[int, str, str]] = []
    tasks: list[WebGymTask] = []
    seen: dict[str, int] = {}
    count = 0
    for number, raw in enumerate(lines, 1):
        if number > MAX_LINES:
            errors.append((number, "file", f"more than {MAX_LINES} lines"))
            break
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                errors.append((number, "json", "not valid UTF-8"))
                continue
        else:
            text = raw
        if not text.strip():
            continue
        count += 1
        if count > max_tasks:
            errors.append((number, "file", f"more than {max_tasks} tasks"))
            break
        if len(text) > MAX_LINE_CHARS:
            errors.append((number, "json", f"longer than {MAX_LINE_CHARS} characters"))
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            errors.append((number, "json", f"invalid JSON ({str(exc)[:120]})"))
            continue
        if not isinstance(obj, dict):
            errors.append((number, "json", f"must be an object, got {type(obj).__name__}"))
            continue
        problems = _check(obj)
        tid = obj.get("task_id")
        if not any(p.startswith("task_id:") for p in problems) and tid is not None:
            key = str(tid)
            if key in seen:
                problems.append(f"task_id: duplicate of line {seen[key]} ({key[:60]!r})")
            else:
                seen[key] = number
        if problems:
            errors += [(number, *_field_and_problem(p)) for p in problems]
        else:
            tasks.append(_task(obj, number))
    if not errors and not tasks:
        errors.append((0, "file", "holds no tasks"))
    if errors:
        raise WebGymFormatError(source, errors)
    return tasks


def _field_and_problem(message: str) -> tuple[str, str]:
    field, _, problem = message.partition(": ")
    return field, problem


def load_webgym(path: str | pathlib.Path, max_tasks: int = MAX_TASKS) -> list[WebGymTask]:
    """Every task of a WebGym JSONL file, or one ValueError (WebGymFormatError) listing every bad line; a file
    larger than ``MAX_FILE_BYTES`` is refused unread."""
    path = pathlib.Path(path)
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise WebGymFormatError(str(path), [(0, "file", f"larger than {MAX_FILE_BYTES} bytes")])
    return parse_webgym(data.split(b"\n"), str(path), max_tasks)


def origin(url: str) -> str:
    """scheme://host[:port] of an http(s) URL, lower-case, default ports left out."""
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def allowed_origins(task: WebGymTask) -> list[str]:
    """The origins the task's navigation may reach, for the host policy: its website's, then its extra
    ``allowed_origins`` (no duplicates)."""
    return list(dict.fromkeys((origin(task.website), *task.allowed_origins)))


def step_limit(task: WebGymTask) -> int:
    """easy 10, medium 20, hard 30 steps."""
    return STEP_LIMITS[task.difficulty]
