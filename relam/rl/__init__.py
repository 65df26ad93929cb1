"""RL glue: gymnasium env + ReLAM reward wrapper, planners, hierarchical PPO."""
