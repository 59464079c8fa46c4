"""The agent team for one run: stages, attempts, budgets, prompts, parsing, the plan."""
