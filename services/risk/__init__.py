"""risk: per-account limits, position sizing, model guards and the kill switch."""
