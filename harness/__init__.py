"""tokenbench: launch LLM servers, drive Locust token-streaming load, report and gate."""

__version__ = "0.1.0"
