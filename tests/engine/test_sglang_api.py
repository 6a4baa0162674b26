"""Our request and response fields are SGLang's.

The sets below are copied from SGLang's source (python/sglang/srt/managers/io_struct.py:
GenerateReqInput, UpdateWeightFromDiskReqInput, PauseGenerationReqInput; and
python/sglang/srt/sampling/sampling_params.py), looked up with the search tool on
2026-11-21. A field we accept that SGLang does not know, or a response key it does
not send, would break a client written against real SGLang pods.
"""

from __future__ import annotations

from asyncwebrl.engine.server import GENERATE_FIELDS, NEUTRAL_SAMPLING, SAMPLING_FIELDS, UPDATE_FIELDS
from tests.engine.conftest import call, data_uri, png, prompt

SGLANG_GENERATE = {
    "rid", "session_id", "text", "input_ids", "input_embeds", "image_data", "video_data", "audio_data",
    "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num", "token_ids_logprob",
    "return_text_in_logprobs", "stream", "log_metrics", "return_hidden_states", "modalities", "session_params",
    "lora_path", "lora_id", "custom_logit_processor", "bootstrap_host", "bootstrap_port", "bootstrap_room",
    "priority", "extra_key", "no_logs", "custom_labels", "return_bytes", "return_entropy",
}
SGLANG_SAMPLING = {
    "max_new_tokens", "stop", "stop_token_ids", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
    "presence_penalty", "repetition_penalty", "min_new_tokens", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "regex", "ebnf", "json_schema", "n", "no_stop_trim", "custom_params",
    "stream_interval", "logit_bias", "sampling_seed",
}
SGLANG_UPDATE_FROM_DISK = {
    "model_path", "load_format", "abort_all_requests", "weight_version", "is_async", "torch_empty_cache",
    "keep_pause", "recapture_cuda_graph", "token_step", "flush_cache",
}
SGLANG_META = {
    "id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "weight_version",
    "output_token_logprobs", "e2e_latency",
}
OUR_EXTENSIONS = {"output_token_weight_versions"}


def test_accepted_fields_are_sglangs():
    assert GENERATE_FIELDS <= SGLANG_GENERATE
    assert SAMPLING_FIELDS | set(NEUTRAL_SAMPLING) <= SGLANG_SAMPLING
    assert UPDATE_FIELDS <= SGLANG_UPDATE_FROM_DISK


def test_response_shape_is_sglangs(engine):
    status, out = call(engine.url, "/generate", {
        "text": prompt("Click"), "image_data": [data_uri(png(3))], "rid": "shape-check",
        "sampling_params": {"max_new_tokens": 3, "temperature": 0.5, "top_p": 0.9, "top_k": 50},
        "return_logprob": True, "logprob_start_len": -1,
    })
    assert status == 200
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert set(meta) <= SGLANG_META | OUR_EXTENSIONS and SGLANG_META <= set(meta)
    assert meta["id"] == "shape-check" and meta["completion_tokens"] == len(out["output_ids"])
    assert meta["finish_reason"]["type"] in ("stop", "length", "abort")
    for lp, token, text in meta["output_token_logprobs"]:
        assert isinstance(lp, float) and isinstance(token, int) and text is None
    status, out = call(engine.url, "/pause_generation", {"mode": "in_place"})
    assert status == 200 and out["success"] is True
    assert call(engine.url, "/continue_generation", {})[0] == 200
    status, out = call(engine.url, "/update_weights_from_disk", {"model_path": "/nowhere", "token_step": 3})
    assert status == 400 and "model_path" in out["message"]
