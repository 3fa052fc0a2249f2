"""Ready-made inputs for the examples, demo and benchmarks: a small trained model and a long document."""
