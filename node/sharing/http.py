"""Placeholder until the sharing capability lands."""

from aiohttp import web


def setup(app: web.Application) -> None:
    return None
