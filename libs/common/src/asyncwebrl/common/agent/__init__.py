"""The agent format: action grammar and parser, prompts and their token ids."""
