"""The pytest plugin: options, YAML build cases, fixtures and spec goldens."""
