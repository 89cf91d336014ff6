"""recorder: ticks and predictions into the timeseries store, and the graph's correlations."""
