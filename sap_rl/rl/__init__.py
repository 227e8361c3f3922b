"""Atari reinforcement learning: environments, Double DQN, perturbed play and the agent zoo."""
