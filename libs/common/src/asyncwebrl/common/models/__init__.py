"""Qwen-VL policies: loading, tiny test models, per-token logprobs."""
