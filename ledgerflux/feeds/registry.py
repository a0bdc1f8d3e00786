"""Feed plugins installed in the entry-point group ``ledgerflux.feeds`` (docs/plugins.md)."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from ledgerflux.errors import LedgerfluxError
from ledgerflux.plugin import FeedPlugin

__all__ = ["ENTRY_POINT_GROUP", "FeedLoadError", "UnknownFeed", "available_feeds", "load_feed"]

ENTRY_POINT_GROUP = "ledgerflux.feeds"


class UnknownFeed(LedgerfluxError):
    """No installed plugin has the asked name; the message lists the installed ones."""

    def __init__(self, name: str, installed: list[str]) -> None:
        listed = ", ".join(installed) or "none"
        super().__init__(f"unknown feed {name!r}; installed feeds: {listed}")
        self.name = name
        self.installed = installed


class FeedLoadError(LedgerfluxError):
    """A plugin is installed but could not be imported or instantiated."""


def available_feeds() -> dict[str, EntryPoint]:
    """Installed feed plugins by name, sorted by name."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return dict(sorted(found.items()))


def load_feed(name: str) -> FeedPlugin:
    """An instance of the feed plugin registered as ``name``.

    Raises :class:`UnknownFeed` (listing what is installed) or :class:`FeedLoadError`.
    """
    feeds = available_feeds()
    entry = feeds.get(name)
    if entry is None:
        raise UnknownFeed(name, list(feeds))
    try:
        cls = entry.load()
        plugin: FeedPlugin = cls()
    except Exception as exc:  # a third-party plugin can fail in any way; name it
        raise FeedLoadError(f"feed {name!r} ({entry.value}) failed to load: {exc!r}") from exc
    return plugin
