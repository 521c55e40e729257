"""streambid loadtest: the exchange simulator, the load generator and the benchmarks."""
