"""The learner: multi-step GRPO with constant 1/k normalisation."""
