"""recorder: market data's ticks into the timeseries store, exactly once across restarts."""
