"""Our request and response fields are SGLang's.

The SGLANG_* sets are copied from SGLang 0.5.23's source (the wheel, read on 2026-12-04):
python/sglang/srt/managers/io_struct.py (GenerateReqInput, UpdateWeightFromDiskReqInput,
PauseGenerationReqInput; the msgspec requests include BaseReq's rid and http_worker_ipc),
python/sglang/srt/sampling/sampling_params.py (SamplingParams, which /generate builds with
``SamplingParams(**sampling_params)``: its internal fields too), python/sglang/srt/managers/tokenizer_manager.py
(the response dict ``out_dict`` and every key it writes into ``meta_info``, top-level
``prompt_token_ids`` when ``return_prompt_token_ids``) and python/sglang/srt/utils/weight_versions.py
(``add_weight_versions_to_meta_info``: ``meta_info.weight_versions`` spans ``{version, start, end}``).
A test reads the same files with ``ast`` from the wheel (tests/engine/sglang_side.py) and requires
the copy to equal them; another requires every field we send or read, and every field the engine
accepts, in the deployed release too (deploy/sglang/Dockerfile: 0.5.20). A field we accept that SGLang
does not know, or a response key it does not send, would break a client written against real SGLang pods.
"""

from __future__ import annotations

import pytest

from asyncwebrl.common.agent.prompt import collapse_image_tokens, prompt_ids
from asyncwebrl.common.agent.vision import image_tokens, load_processors
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.engine.service import GENERATE_FIELDS, NEUTRAL_SAMPLING, SAMPLING_FIELDS, UPDATE_FIELDS
from tests.engine import sglang_side
from tests.engine.conftest import call, data_uri, png, prompt

SGLANG_VERSION = "0.5.23"
SGLANG_GENERATE = {
    "audio_data", "background", "bootstrap_host", "bootstrap_pair_key", "bootstrap_port", "bootstrap_room",
    "cache_salt", "conversation_id", "custom_labels", "custom_logit_processor", "data_parallel_rank",
    "decode_tp_size", "disagg_prefill_dp_rank", "encoder_urls", "external_trace_header", "extra_key",
    "http_worker_ipc", "image_data", "image_max_dynamic_patch", "images_config", "input_embeds", "input_ids",
    "kv_hints", "log_metrics", "logprob_start_len", "lora_id", "lora_path", "max_dynamic_patch",
    "max_thinking_tokens", "min_dynamic_patch", "mm_content_hashes", "mm_hashes", "mm_processor_kwargs",
    "modalities", "multi_item_delimiter_indices", "need_wait_for_mm_inputs", "no_logs", "num_items_assigned",
    "positional_embed_overrides", "priority", "received_time", "require_reasoning", "return_bytes",
    "return_entropy", "return_flat_raw_output_top_logprobs", "return_flat_raw_top_logprobs",
    "return_flat_raw_top_logprobs_b64", "return_hidden_states", "return_indexer_topk", "return_logprob",
    "return_prompt_token_ids", "return_routed_experts", "return_sampling_mask", "return_text_in_logprobs",
    "rid", "routed_dp_rank", "routed_experts_start_len", "routing_key", "sampling_logprobs_mode",
    "sampling_params", "session_id", "session_params", "stream", "text", "token_ids_logprob",
    "token_indices_to_pool", "top_logprobs_num", "use_audio_in_video", "video_config", "video_data",
    "video_max_dynamic_patch", "watermark",
}
SGLANG_SAMPLING = {
    "beam_width", "custom_params", "ebnf", "ebnf_full_assistant", "frequency_penalty", "ignore_eos",
    "is_normalized", "json_schema", "logit_bias", "max_new_tokens", "min_new_tokens", "min_p", "n",
    "no_stop_trim", "presence_penalty", "regex", "repetition_penalty", "sampling_seed", "skip_special_tokens",
    "spaces_between_special_tokens", "stop", "stop_regex", "stop_regex_max_len", "stop_regex_strs",
    "stop_str_max_len", "stop_strs", "stop_token_ids", "stream_interval", "structural_tag", "temperature",
    "top_k", "top_p", "watermark",
}
SGLANG_UPDATE_FROM_DISK = {
    "abort_all_requests", "flush_cache", "http_worker_ipc", "is_async", "keep_pause", "load_format", "manifest",
    "model_path", "recapture_cuda_graph", "rid", "token_step", "torch_empty_cache", "weight_version",
}
SGLANG_PAUSE = {"http_worker_ipc", "mode", "rid"}
SGLANG_RESPONSE = {"embedding", "meta_info", "output_ids", "pooled_hidden_state", "prompt_token_ids", "text"}
SGLANG_META = {
    "audio_tokens", "cached_tokens", "cached_tokens_details", "completion_tokens", "dp_rank", "e2e_latency",
    "finish_reason", "hidden_states", "id", "image_tokens", "indexer_topk", "input_token_ids_logprobs",
    "input_token_logprobs", "input_top_logprobs", "num_retractions", "output_token_ids_logprobs",
    "output_token_logprobs", "output_token_logprobs_length", "output_token_sampling_logprobs",
    "output_token_sampling_mask", "output_token_sampling_mask_length", "output_top_logprobs", "prompt_tokens",
    "reasoning_tokens", "response_sent_to_client_ts", "routed_experts", "spec_accept_length",
    "spec_accept_rate", "spec_block_accept_length", "spec_cap_length", "spec_cap_lens_histogram",
    "spec_correct_drafts_histogram", "spec_num_correct_drafts", "spec_num_proposed_drafts", "spec_verify_ct",
    "video_tokens", "weight_version", "weight_versions",
}
SGLANG_WEIGHT_VERSION_SPAN = {"version", "start", "end"}
COPIED = {
    "generate": SGLANG_GENERATE, "sampling": SGLANG_SAMPLING, "update_from_disk": SGLANG_UPDATE_FROM_DISK,
    "pause": SGLANG_PAUSE, "response": SGLANG_RESPONSE, "meta": SGLANG_META,
    "weight_version_span": SGLANG_WEIGHT_VERSION_SPAN, "weight_version_span_struct": SGLANG_WEIGHT_VERSION_SPAN,
}

# What the platform sends to and reads from SGLang pods; each must exist in every release checked.
WE_USE = {
    "generate": {
        "input_ids", "image_data", "sampling_params", "return_logprob", "return_prompt_token_ids", "rid",  # gateway
        "text",  # rollout Judge
    },
    "sampling": {"max_new_tokens", "temperature"},  # rollout pool, Judge
    "update_from_disk": {"model_path", "weight_version"},  # common.fanout.load_version
    "pause": set(),  # fanout sends {}: mode "abort", SGLang's default
    "response": {"text", "output_ids", "prompt_token_ids", "meta_info"},  # InferenceClient.generate, Judge
    "meta": {"finish_reason", "output_token_logprobs", "weight_versions"},  # InferenceClient.generate
    "weight_version_span": {"version", "start", "end"},  # inference.token_versions
    "update_from_disk_response": {"success", "message"},  # fanout._post
    "model_info_response": {"weight_version"},  # fanout.endpoint_version
}
# What the engine must send in meta_info (the keys above, and SGLang's that every answer has).
REQUIRED_META = {
    "id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "weight_version",
    "weight_versions", "output_token_logprobs", "e2e_latency",
}


def _engine_accepts() -> dict[str, set[str]]:
    return {"generate": GENERATE_FIELDS, "sampling": SAMPLING_FIELDS | set(NEUTRAL_SAMPLING),
            "update_from_disk": UPDATE_FIELDS}


def test_accepted_fields_are_sglangs():
    for name, fields in _engine_accepts().items():
        assert fields <= COPIED[name], (name, fields - COPIED[name])
    assert REQUIRED_META <= SGLANG_META and WE_USE["meta"] <= REQUIRED_META


def test_copy_is_sglangs_source():
    """The literal sets above are exactly what SGLANG_VERSION's source has (first run: fetches the wheel)."""
    source = sglang_side.source_facts(SGLANG_VERSION)
    for name, copied in COPIED.items():
        assert source[name] == copied, (name, "only in the source:", source[name] - copied,
                                        "only in the copy:", copied - source[name])


@pytest.mark.parametrize("version", sorted({sglang_side.deployed_version(), SGLANG_VERSION}))
def test_fields_we_use_exist_in_sglang(version):
    source = sglang_side.source_facts(version)
    for name, fields in WE_USE.items():
        assert fields <= source[name], (version, name, fields - source[name])
    for name, fields in _engine_accepts().items():
        assert fields <= source[name], (version, name, "accepted by the engine, unknown to SGLang",
                                        fields - source[name])


def _check_weight_versions(meta: dict) -> None:
    spans = meta["weight_versions"]
    assert isinstance(spans, list) and spans
    assert all(isinstance(s, dict) and set(s) == SGLANG_WEIGHT_VERSION_SPAN for s in spans)
    assert all(isinstance(s["version"], str) for s in spans)
    assert spans[0]["start"] == 0 and spans[-1]["end"] == meta["completion_tokens"]
    assert all(a["end"] == b["start"] for a, b in zip(spans, spans[1:]))
    assert meta["weight_version"] == spans[-1]["version"]  # as add_weight_versions_to_meta_info sets it


def test_response_shape_is_sglangs(engine):
    body = {
        "text": prompt("Click"), "image_data": [data_uri(png(3))], "rid": "shape-check",
        "sampling_params": {"max_new_tokens": 3, "temperature": 0.5, "top_p": 0.9, "top_k": 50},
        "return_logprob": True, "logprob_start_len": -1,
    }
    status, out = call(engine.url, "/generate", body)
    assert status == 200, out
    assert set(out) == {"text", "output_ids", "meta_info"}
    status, out = call(engine.url, "/generate", {**body, "rid": "shape-check-ids", "return_prompt_token_ids": True})
    assert status == 200, out
    assert set(out) == {"text", "output_ids", "meta_info", "prompt_token_ids"} and set(out) <= SGLANG_RESPONSE
    meta = out["meta_info"]
    assert set(meta) <= SGLANG_META and REQUIRED_META <= set(meta), set(meta) ^ REQUIRED_META
    assert "output_token_weight_versions" not in meta
    assert meta["id"] == "shape-check-ids" and meta["completion_tokens"] == len(out["output_ids"])
    assert meta["prompt_tokens"] == len(out["prompt_token_ids"])
    assert meta["finish_reason"]["type"] in ("stop", "length", "abort")
    _check_weight_versions(meta)
    assert len(meta["output_token_logprobs"]) == len(out["output_ids"])
    for (lp, token, text), output_id in zip(meta["output_token_logprobs"], out["output_ids"]):
        assert isinstance(lp, float) and token == output_id and text is None
    # SGLang's answers (http_server.pause_generation / continue_generation); the counts beside them are ours.
    status, out = call(engine.url, "/pause_generation", {"mode": "in_place"})
    assert status == 200 and out["status"] == "ok" and out["message"] == "Generation paused successfully."
    status, out = call(engine.url, "/continue_generation", {})
    assert status == 200 and out["status"] == "ok" and out["message"] == "Generation continued successfully."
    status, out = call(engine.url, "/update_weights_from_disk", {"model_path": "/nowhere", "token_step": 3})
    assert status == 400 and "model_path" in out["message"]


def test_one_pad_per_image_like_sglang(engine):
    """The gateway's request (one pad per image, then a resume): ``prompt_token_ids`` is our expansion,
    which is SGLang's (test_sglang_source.py)."""
    tokenizer, processor = load_processors(SHIPPED / "qwen2_5_vl")
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expanded = prompt_ids(tokenizer, prompt("Click", images=2), pad,
                          [image_tokens(processor, 240, 320), image_tokens(processor, 210, 160)])
    body = {"input_ids": collapse_image_tokens(expanded, pad), "image_data": [data_uri(png(4)),
            data_uri(png(5, 210, 160))], "sampling_params": {"max_new_tokens": 4, "temperature": 1.0},
            "return_logprob": True, "return_prompt_token_ids": True, "rid": "one-pad"}
    status, out = call(engine.url, "/generate", body)
    assert status == 200, out
    assert out["prompt_token_ids"] == expanded
    _check_weight_versions(out["meta_info"])
    partial = tokenizer("<tool_call>{", add_special_tokens=False)["input_ids"]  # as if cut off by an update
    status, out = call(engine.url, "/generate", {**body, "input_ids": body["input_ids"] + partial, "rid": "one-pad-1"})
    assert status == 200, out
    assert out["prompt_token_ids"] == expanded + partial
