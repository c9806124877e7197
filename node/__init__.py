"""govnode: the node application (HTTP API, domain services, storage, scheduler, CLI)."""

__version__ = "0.1.0"
