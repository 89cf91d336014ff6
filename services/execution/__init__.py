"""execution: the order state machine, a paper broker, positions and a durable order store."""
