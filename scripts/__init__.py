"""Setup, test, demo and benchmark scripts; a package so that tests can import the benchmarks."""
