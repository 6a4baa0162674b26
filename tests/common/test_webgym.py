"""WebGym-format JSONL task files (common.webgym): the shipped example and sample load, every bad line is reported
with its number, splits are stable."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from asyncwebrl.common import webgym
from asyncwebrl.common.webgym import (
    EXAMPLE,
    MAX_FACTS,
    MAX_ORIGINS,
    MAX_TASK_NAME,
    TRAIN_PERCENT,
    WORD_LEVELS,
    WebGymFormatError,
    WebGymTask,
    allowed_origins,
    load_webgym,
    split_of,
    step_limit,
    webgym_difficulty,
)


def good(**change):
    task = {"task_id": "t1", "task_name": "Find the opening hours.", "website": "https://example.com/",
            "difficulty": 5, "evaluator_reference": ["The answer gives the hours."], "reference_answer": None}
    task.update(change)
    return {k: v for k, v in task.items() if v is not ...}


def write(tmp_path, lines):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def errors_of(tmp_path, lines):
    with pytest.raises(ValueError) as err:
        load_webgym(write(tmp_path, lines))
    return str(err.value).splitlines()[1:]


def test_example_loads_with_difficulties_limits_and_origins():
    tasks = load_webgym(EXAMPLE)
    assert 5 <= len(tasks) <= 10 and all(isinstance(t, WebGymTask) for t in tasks)
    assert len({t.task_id for t in tasks}) == len(tasks)
    for t in tasks:
        raw = t.raw_difficulty
        assert t.difficulty == ("easy" if raw <= 3 else "medium" if raw <= 6 else "hard")
        assert step_limit(t) == {"easy": 10, "medium": 20, "hard": 30}[t.difficulty]
        assert allowed_origins(t)[0].startswith("https://") and t.evaluator_reference
    assert {t.difficulty for t in tasks} == {"easy", "medium", "hard"}
    assert any(t.reference_answer for t in tasks) and any(t.reference_answer is None for t in tasks)
    by_id = {t.task_id: t for t in tasks}
    assert by_id["wg-0002"].reference_answer == "Attention Is All You Need"
    assert by_id["1004"].extra == {"category": "search and filter"}  # an integer id, unknown fields kept
    assert isinstance(by_id["wg-0002"].evaluator_reference[0], dict)  # facts kept as given
    with pytest.raises(dataclasses.FrozenInstanceError):
        tasks[0].task_name = "changed"


def test_difficulty_mapping():
    assert [webgym_difficulty(n) for n in (1, 3, 4, 6, 7, 10)] == ["easy", "easy", "medium", "medium", "hard", "hard"]
    assert [webgym_difficulty(s) for s in ("easy", "Medium", " hard ")] == ["easy", "medium", "hard"]
    for bad in (0, 11, True, 5.0, "extreme", None):
        with pytest.raises(ValueError):
            webgym_difficulty(bad)


def test_blank_lines_skipped_line_numbers_kept(tmp_path):
    tasks = load_webgym(write(tmp_path, ["", json.dumps(good()), "   ", json.dumps(good(task_id=7, difficulty="hard"))]))
    assert [(t.task_id, t.line, t.difficulty) for t in tasks] == [("t1", 2, "medium"), ("7", 4, "hard")]


def test_origins_keep_non_default_ports_only(tmp_path):
    tasks = load_webgym(write(tmp_path, [good(task_id=1, website="HTTP://Example.com:80/a?b=1"),
                                         good(task_id=2, website="https://shop.example.org:8443/x"),
                                         good(task_id=3, website="http://[::1]:8080/")]))
    assert [allowed_origins(t) for t in tasks] == [["http://example.com"], ["https://shop.example.org:8443"],
                                                   ["http://[::1]:8080"]]


def test_every_bad_line_is_reported_with_its_number(tmp_path):
    lines = [
        good(task_id="ok"),                                          # 1 fine
        "{not json",                                                 # 2
        "[1, 2, 3]",                                                 # 3
        good(task_id="a", task_name=...),                            # 4 missing
        good(task_id="b", task_name=42),                             # 5 mistyped
        good(task_id="c", task_name="   "),                          # 6 empty
        good(task_id="d", website="ftp://example.com/"),             # 7 not http(s)
        good(task_id="e", website="https:///nohost"),               # 8 no host
        good(task_id="ok"),                                          # 9 duplicate of 1
        good(task_id="f", difficulty=12),                            # 10 out of range
        good(task_id="g", difficulty="extreme"),                     # 11 unknown word
        good(task_id="h", evaluator_reference="a fact"),             # 12 not a list
        good(task_id="i", evaluator_reference=[{"weight": 1}]),      # 13 fact object without text
        good(task_id="j", evaluator_reference=["x"] * (MAX_FACTS + 1)),  # 14 too many facts
        good(task_id="k", task_name="x" * (MAX_TASK_NAME + 1)),      # 15 over-long
        good(task_id="l", reference_answer=3),                       # 16 mistyped answer
        good(task_id=True),                                          # 17 bool id
        "",                                                          # 18 blank: skipped
        good(task_id="m", website="https://user:pw@example.com/"),   # 19 credentials
        good(task_id=None, difficulty=None, website=5),              # 20 several fields at once
        good(task_id="n", evaluator_reference=["ok", "y" * 1001]),   # 21 over-long fact
    ]
    errors = errors_of(tmp_path, lines)
    expected = {
        2: "json: invalid JSON", 3: "json: must be an object", 4: "task_name: missing", 5: "task_name: must be a string",
        6: "task_name: must not be empty", 7: "website: must be an http(s) URL", 8: "website: has no host",
        9: "task_id: duplicate of line 1", 10: "difficulty: must be in 1-10", 11: "difficulty: must be an integer",
        12: "evaluator_reference: must be a list", 13: "evaluator_reference[0]: an object needs",
        14: "evaluator_reference: more than", 15: "task_name: longer than", 16: "reference_answer: must be a string",
        17: "task_id: must be a string or an integer", 19: "website: must not contain credentials",
        21: "evaluator_reference[1]: longer than",
    }
    for number, text in expected.items():
        assert any(e.startswith(f"line {number}: {text}") for e in errors), (number, text, errors)
    line20 = [e for e in errors if e.startswith("line 20: ")]
    assert {e.split(":")[1].strip() for e in line20} == {"task_id", "website", "difficulty"}, line20
    assert not any(e.startswith(("line 1: ", "line 18: ")) for e in errors), errors
    assert len(errors) == len(expected) + len(line20)


def test_bad_utf8_and_empty_file(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(good()).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(ValueError, match=r"line 2: json: not valid UTF-8"):
        load_webgym(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no tasks"):
        load_webgym(empty)


# --- task-set fields: allowed_origins, split, levels, bounds, the shipped sample ---------------------------------

SAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "tasksets" / "webgym-sample.jsonl"


def test_the_sample_task_set_loads():
    tasks = load_webgym(SAMPLE)
    assert [t.id for t in tasks] == ["sample-0001", "sample-0002", "sample-0003", "sample-0004", "sample-0005", "6"]
    by_id = {t.id: t for t in tasks}
    assert by_id["sample-0003"].allowed_origins == ("https://login.example.net",)
    assert allowed_origins(by_id["sample-0003"]) == ["https://mail.example.net", "https://login.example.net"]
    assert allowed_origins(by_id["sample-0005"]) == ["http://wiki.example.org:8080"]
    assert [by_id[i].split for i in ("sample-0001", "sample-0004", "sample-0005")] == ["train", "test", "test_ood"]
    assert by_id["sample-0005"].level == WORD_LEVELS["easy"] and by_id["sample-0004"].level == 8
    record = by_id["sample-0003"].record()
    assert record["instruction"].startswith("Log in") and record["split"] == split_of("sample-0003")
    assert json.loads(json.dumps(record)) == record
    assert all(t.website.startswith(("http://", "https://")) for t in tasks)


def test_split_of_is_a_stable_hash_unless_given():
    assert split_of("anything", "test_ood") == "test_ood"
    # Fixed values: the same in every process and Python version (sha256, not hash()).
    assert [split_of(f"task-{i}") for i in range(10)] == [split_of(f"task-{i}") for i in range(10)]
    import subprocess
    import sys
    other = subprocess.run([sys.executable, "-c", "from asyncwebrl.common.webgym import split_of;"
                            "print(','.join(split_of(f'task-{i}') for i in range(200)))"],
                           capture_output=True, text=True, env={"PYTHONHASHSEED": "123"}, check=True)
    assert other.stdout.strip().split(",") == [split_of(f"task-{i}") for i in range(200)]
    train = sum(split_of(f"t{i}") == "train" for i in range(10_000))
    assert abs(train / 10_000 - TRAIN_PERCENT / 100) < 0.02


def test_origins_and_split_are_validated(tmp_path):
    lines = [
        good(task_id="a", allowed_origins=["https://login.example.com", "http://x.example.com:81"]),  # 1 fine
        good(task_id="b", allowed_origins="https://x.example.com"),                                # 2 not a list
        good(task_id="c", allowed_origins=["ftp://x.example.com"]),                                # 3 scheme
        good(task_id="d", allowed_origins=["https://x.example.com/path"]),                         # 4 not an origin
        good(task_id="e", allowed_origins=["https://u:p@x.example.com"]),                          # 5 credentials
        good(task_id="f", split="validation"),                                                     # 6 unknown split
        good(task_id="g", allowed_origins=["https://x.example.com"] * (MAX_ORIGINS + 1)),          # 7 too many
    ]
    errors = errors_of(tmp_path, lines)
    expected = {2: "allowed_origins: must be a list", 3: "allowed_origins[0]: must be an http(s) URL",
                4: "allowed_origins[0]: must be an origin", 5: "allowed_origins[0]: must not contain credentials",
                6: "split: must be one of train, test, test_ood", 7: "allowed_origins: more than"}
    for number, text in expected.items():
        assert any(e.startswith(f"line {number}: {text}") for e in errors), (number, text, errors)
    assert len(errors) == len(expected)


def test_too_many_tasks_and_too_big_a_file(tmp_path, monkeypatch):
    path = write(tmp_path, [good(task_id=i) for i in range(5)])
    assert len(load_webgym(path, max_tasks=5)) == 5
    with pytest.raises(WebGymFormatError) as err:
        load_webgym(path, max_tasks=4)
    assert err.value.problems == [(5, "file", "more than 4 tasks")]
    monkeypatch.setattr(webgym, "MAX_FILE_BYTES", 100)
    with pytest.raises(WebGymFormatError, match="larger than 100 bytes"):
        load_webgym(path)
