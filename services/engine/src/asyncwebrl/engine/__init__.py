"""The embedded inference engine: SGLang's native HTTP API over a PyTorch Qwen-VL model."""
