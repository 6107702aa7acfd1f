"""What the technician sees: one line per step, progress bars for the slow ones, and the undo
log of a failed run. Lines go to standard output, progress bars and warnings to standard error."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from .text import t


class Ui:
    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, text: str) -> None:
        if not self.quiet:
            click.echo(f"[{self.elapsed():5.1f}s] {text}")

    def detail(self, text: str) -> None:
        if not self.quiet:
            click.echo(f"         {text}")

    def warn(self, text: str) -> None:
        click.echo(click.style(t("ui.warning") + " ", fg="yellow") + text, err=True)

    def say(self, text: str) -> None:
        """A result line (tables, summaries): shown even in quiet mode."""
        click.echo(text)

    @contextmanager
    def bar(self, length: int, label: str) -> Iterator[Callable[[int], None]]:
        if self.quiet or length <= 0:
            yield lambda _n: None
            return
        with click.progressbar(length=length, label=f"         {label}", file=click.get_text_stream("stderr"),
                               show_eta=True, show_percent=True, width=30) as bar:
            yield bar.update


class Rollback:
    """Undo steps for a transaction spread over a board, a broker and a gateway.

    Each completed step registers how to undo it; if the block fails, the undos run newest first.
    An undo that fails is reported with what to do by hand, and the rest still run.
    """

    def __init__(self, ui: Ui) -> None:
        self.ui = ui
        self._undo: list[tuple[str, Callable[[], object], str]] = []
        self.failed_undos: list[str] = []

    def add(self, what: str, undo: Callable[[], object], by_hand: str = "") -> None:
        self._undo.append((what, undo, by_hand))

    def commit(self) -> None:
        self._undo.clear()

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None or not self._undo:
            return
        self.ui.warn(t("rollback.start", steps=", ".join(what for what, _, _ in reversed(self._undo))))
        while self._undo:
            what, undo, by_hand = self._undo.pop()
            try:
                undo()
                self.ui.warn("  " + t("rollback.undone", step=what))
            except Exception as undo_exc:  # every undo must get its turn
                self.failed_undos.append(what)
                manual = t("rollback.by_hand", command=by_hand) if by_hand else ""
                self.ui.warn("  " + t("rollback.failed", step=what, error=undo_exc) + manual)
