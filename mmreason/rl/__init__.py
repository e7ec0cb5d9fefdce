"""Reinforcement learning from verifiable rewards: the GRPO core, rewards and environments."""
