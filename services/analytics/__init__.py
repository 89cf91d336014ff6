"""analytics: profit and loss, equity curve, drawdown and model performance from fills."""
