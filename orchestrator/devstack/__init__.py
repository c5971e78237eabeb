"""The embedded dev stack: real local services for tests, benchmarks and `standalone`."""
