"""Features service: bars, indicators, sessions and regimes computed from the tick stream."""
