"""The rollout gateway: tasks in, GRPO groups of trajectories out."""
