"""Build executor: requests, OCI spec and bundle, input providers, runtimes, executor."""
