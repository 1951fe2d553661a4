"""Listing the checkpoints folder off the UI thread (a directory scan, every meta.json, folder sizes),
for every screen that shows checkpoints: the answer comes back as a :class:`CheckpointsListed`."""

from __future__ import annotations

from textual import work
from textual.worker import get_current_worker

from gpttui.core import checkpoints
from gpttui.core.errors import GPTTUIError
from gpttui.tui.messages import CheckpointsListed

LIST_GROUP = "list-checkpoints"


class ListsCheckpoints:
    """Mixin for a screen: ``list_checkpoints()`` starts the scan (a newer one supersedes an older one)."""

    @work(thread=True, exclusive=True, group=LIST_GROUP, exit_on_error=False)
    def list_checkpoints(self) -> None:
        try:
            message = CheckpointsListed(checkpoints.list_checkpoints())
        except (GPTTUIError, OSError) as exc:
            message = CheckpointsListed([], f"Cannot list the checkpoints: {exc}")
        if not get_current_worker().is_cancelled:  # superseded: a newer scan answers
            self.post_message(message)
