"""Generation engines (what rollout workers run) and the DeepSpeed training engine (what learners run)."""
