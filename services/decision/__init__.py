"""decision: AI orchestration, from a model's predictions and market context to signals."""
