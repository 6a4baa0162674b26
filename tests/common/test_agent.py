"""The agent format: the action parser, prompts, image placeholder bookkeeping."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from asyncwebrl.common.agent.actions import ACTIONS, parse_action
from asyncwebrl.common.agent.prompt import HistoryStep, expand_image_tokens, prompt_ids, render
from asyncwebrl.common.agent.vision import BadImage, decode_image, image_tokens, process_images
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import env_pb2


def call(action: str, **arguments) -> str:
    return f'<tool_call>{json.dumps({"name": "computer_use", "arguments": {"action": action, **arguments}})}</tool_call>'


VALID = [
    (call("click", coordinate=[500, 300]), "click", {"coordinate": [500.0, 300.0]}),
    (call("double_click", coordinate=[0, 1000]), "double_click", {"coordinate": [0.0, 1000.0]}),
    (call("type", text="hello", coordinate=[10, 20], enter=True), "type",
     {"text": "hello", "coordinate": [10.0, 20.0], "enter": True}),
    (call("press", key="Control+a"), "press", {"key": "Control+a"}),
    (call("scroll", direction="down"), "scroll", {"direction": "down"}),
    (call("go_back"), "go_back", {}),
    (call("navigate", url="https://example.com/a?b=c"), "navigate", {"url": "https://example.com/a?b=c"}),
    (call("wait", seconds=2), "wait", {"seconds": 2.0}),
    (call("answer", text="42 items"), "answer", {"text": "42 items"}),
]


@pytest.mark.parametrize(("text", "action", "arguments"), VALID, ids=[v[1] for v in VALID])
def test_every_action_parses(text, action, arguments):
    # Surrounded by the model's reasoning and stray whitespace, as real outputs are.
    parsed = parse_action(f"Memory: nothing yet.\nIntention: act.\n  {text.replace('{', '{ ', 1)}  \n trailing")
    assert parsed.valid and parsed.action == action and parsed.arguments == arguments, parsed


def test_parsed_actions_become_env_actions():
    assert {parse_action(t).to_env().WhichOneof("kind") for t, _, _ in VALID} == {
        "click", "double_click", "type", "press", "scroll", "go_back", "navigate", "wait", "answer"}
    click = parse_action(VALID[0][0]).to_env()
    assert click.coordinates == env_pb2.COORDINATE_SPACE_NORMALIZED_1000
    assert (click.click.at.x, click.click.at.y) == (500, 300)
    typed = parse_action(VALID[2][0]).to_env().type
    assert (typed.text, typed.enter, typed.clear, typed.at.x) == ("hello", True, False, 10)
    assert parse_action(VALID[4][0]).to_env().scroll.direction == env_pb2.SCROLL_DIRECTION_DOWN


INVALID = [
    ("", "no <tool_call>"),
    ("I will click the button.", "no <tool_call>"),
    ("<tool_call>{not json}</tool_call>", "not JSON"),
    (call("click", coordinate=[500, 300]) * 2, "more than one"),
    ('<tool_call>{"name": "other", "arguments": {}}</tool_call>', "must be"),
    (call("teleport"), "unknown action"),
    (call("click"), "coordinate"),
    (call("click", coordinate=[500, 1001]), "within 0-1000"),
    (call("click", coordinate=[True, 3]), "numbers"),
    (call("click", coordinate=[1, 2], button="right"), "unexpected"),
    (call("type", text=5), "text"),
    (call("type", text="a" * 5000), "text"),
    (call("type", text="a\x00b"), "control"),
    (call("press", key="rm -rf /"), "key"),
    (call("scroll", direction="sideways"), "direction"),
    (call("navigate", url="file:///etc/passwd"), "http"),
    (call("navigate", url="javascript:alert(1)"), "http"),
    (call("wait", seconds=3600), "seconds"),
    (call("answer"), "text"),
]


@pytest.mark.parametrize(("text", "why"), INVALID, ids=[i[1] for i in INVALID])
def test_unparseable_output_is_an_invalid_no_op(text, why):
    parsed = parse_action(text)
    assert not parsed.valid and parsed.action == "wait" and why in parsed.error, parsed
    assert parsed.to_env().WhichOneof("kind") == "wait" and parsed.to_env().wait.ms == 0
    assert parsed.summary() == "invalid output (no action)"


def test_parser_never_raises_on_garbage():
    rng = random.Random(0)
    pieces = ["<tool_call>", "</tool_call>", "{", "}", '"action"', ":", "[", "]", '"click"', "1e309", "null",
              '"arguments"', '"name"', '"computer_use"', ",", "\x00", "\\u0000", "🙂"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        parsed = parse_action(text)
        assert parsed.valid in (True, False)
    assert not parse_action(None).valid
    assert not parse_action("x" * 10_000_000).valid


def test_prompt_has_grammar_instruction_history_and_one_pad_per_image():
    history = [HistoryStep(f"Page {i}", parse_action(VALID[i % len(VALID)][0]).summary(), i % 2 == 0)
               for i in range(40)]
    text = render("Buy   the\ncheapest item", history, n_images=2)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "computer_use" in text and "Task: Buy the cheapest item" in text
    assert "(earlier steps omitted: 10)" in text and "Step 40 on [Page 39]" in text and "Step 10 " not in text
    assert "-> page changed" in text and "-> page unchanged" in text
    assert text.count("<|image_pad|>") == 2
    for action in ACTIONS:
        assert action in text


def test_expand_image_tokens():
    pad = 5
    assert expand_image_tokens([1, pad, 2, pad, 3], pad, [3, 2]) == [1, pad, pad, pad, 2, pad, pad, 3]
    assert expand_image_tokens([1, pad, pad, pad, 2], pad, [3]) == [1, pad, pad, pad, 2], "already expanded"
    for ids, counts, why in (([1, pad], [], "more image placeholders"), ([1], [4], "1 images given"),
                             ([pad, pad], [3], "expected 1 or 3")):
        with pytest.raises(ValueError, match=why):
            expand_image_tokens(ids, pad, counts)


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(h).rand(h, w, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_prompt_ids_match_the_image_grid(family):
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED / family, local_files_only=True)
    processor = Qwen2VLImageProcessorPil.from_pretrained(SHIPPED / family, local_files_only=True)
    images = [decode_image(_png(720, 1280)), decode_image(_png(210, 160))]
    batch = process_images(processor, images)
    merge = processor.merge_size
    assert batch.token_counts == [int(t * h * w) // merge**2 for t, h, w in batch.grid_thw]
    assert batch.token_counts == [image_tokens(processor, im.height, im.width) for im in images]
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = prompt_ids(tokenizer, render("Find the price", [], 2), pad, batch.token_counts)
    assert ids.count(pad) == sum(batch.token_counts)
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<tool_call>"):
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1, special
    assert tokenizer.decode(tokenizer("Click the button", add_special_tokens=False)["input_ids"]) == "Click the button"


@pytest.mark.parametrize(("data", "why"), [
    (b"", "empty"),
    (b"GIF89a" + b"\x00" * 20, "decode"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "decode"),
    (b"x" * (17 * 1024 * 1024), "over"),
])
def test_bad_images_are_refused_with_a_reason(data, why):
    with pytest.raises(BadImage, match=why):
        decode_image(data)


def test_huge_dimensions_are_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (9000, 10)).save(buf, "PNG")
    with pytest.raises(BadImage, match="size"):
        decode_image(buf.getvalue())


def test_format_action_is_the_parsers_inverse():
    from asyncwebrl.common.agent.actions import format_action

    P = env_pb2.Point
    actions = [
        env_pb2.Action(click=env_pb2.Click(at=P(x=123.4, y=998.7))),
        env_pb2.Action(double_click=env_pb2.Click(at=P(x=0, y=1000))),
        env_pb2.Action(type=env_pb2.TypeText(text='say "hi"', at=P(x=1, y=2), clear=True, enter=True)),
        env_pb2.Action(press=env_pb2.Press(key="Control+a")),
        env_pb2.Action(scroll=env_pb2.Scroll(direction=env_pb2.SCROLL_DIRECTION_UP, at=P(x=5, y=6))),
        env_pb2.Action(go_back=env_pb2.GoBack()),
        env_pb2.Action(navigate=env_pb2.Navigate(url="https://example.com/a")),
        env_pb2.Action(wait=env_pb2.Wait(ms=1500)),
        env_pb2.Action(answer=env_pb2.Answer(text="Lyon")),
    ]
    for action in actions:
        parsed = parse_action(format_action(action))
        assert parsed.valid, (format_action(action), parsed.error)
        back = parsed.to_env()
        assert back.WhichOneof("kind") == action.WhichOneof("kind")
        if action.HasField("click"):
            assert (back.click.at.x, back.click.at.y) == (123, 999), "rounded into 0-1000"
        if action.HasField("type"):
            assert back.type.text == 'say "hi"' and back.type.clear and back.type.enter
        if action.HasField("wait"):
            assert back.wait.ms == 1500
