"""One progress protocol: the library reports work done as ``callback(done, total)`` (``Callback``) and
never draws; the edges (console scripts, notebooks) turn that into a display with ``bar_callback``: a tqdm
bar on a terminal; elsewhere (``nohup``, a scheduler, ``2>log``) one plain line every
``LANDSCAPE_PROGRESS_SECONDS`` seconds (default 30) and one at the end."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable, Iterator, TextIO

#: ``callback(done, total, stage="", unit="")``: called by long library loops after each unit of work; a
#: job of several stages (PGD, then AutoAttack) names each (``stage``, ``unit``). None: report nothing.
Callback = Callable[..., None] | None

DEFAULT_SECONDS = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LANDSCAPE_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LogBar:
    """tqdm's interface (``update``, ``n``, ``total``, ``set_postfix``, ``refresh``, ``close``) written as
    one line per ``interval`` seconds: ``DESC: 40/100 it (40%), 1:02 elapsed, ETA 1:33 [key=value ...]``;
    a last line at ``close`` when any line was written (a short run stays silent)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, interval: float | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = file or sys.stderr
        self.interval = _interval() if interval is None else interval
        self._start_n, self._t0 = initial, time.monotonic()
        self._last, self._lines, self._postfix, self._last_key = self._t0, 0, "", None

    def _line(self) -> str:
        elapsed = time.monotonic() - self._t0
        s = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            s += f" ({100 * self.n / self.total:.0f}%)"
        s += f", {_hms(elapsed)} elapsed"
        done = self.n - self._start_n
        if self.total and 0 < done and self.n < self.total:
            s += f", ETA {_hms(elapsed / done * (self.total - self.n))}"
        return s + (f" [{self._postfix}]" if self._postfix else "")

    def _emit(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self._lines += 1
        self._last = time.monotonic()
        self._last_key = (self.n, self._postfix)

    def refresh(self) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._emit()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, values: dict | None = None, **kw: Any) -> None:
        vals = {**(values or {}), **kw}
        self._postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in vals.items())

    def close(self) -> None:
        """The last line, unless nothing has changed since the last one written (the density's bar printed
        its final line twice: once on reaching its total, once at close)."""
        if self._lines and (self.n, self._postfix) != self._last_key:
            self._emit()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 show: bool = True, leave: bool = True, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on stderr when it is a terminal, else a ``LogBar``; with ``show=False`` a disabled bar."""
    from tqdm import tqdm
    if show and not sys.stderr.isatty():
        return LogBar(total, desc, unit, initial)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, disable=not show,
                leave=leave, **tqdm_kwargs)


@contextlib.contextmanager
def bar_callback(desc: str, unit: str = "it", show: bool = True,
                 leave: bool = True) -> Iterator[Callable[..., None]]:
    """The edge's side of the protocol: a ``Callback`` that draws ``progress_bar(desc, unit)``; the total may
    change as the work goes (an adaptive trace's does), and a new ``stage`` closes the bar and opens one
    named after it (in its ``unit``). The last bar is closed when the block ends."""
    bars: list[Any] = []          # made at the first report (or at a new stage)
    current = [None]

    def update(done: int, total: int, stage: str = "", unit_: str = "") -> None:
        if not bars or (stage and stage != current[0]):
            if bars:
                bars[0].close()
            bars[:] = [progress_bar(total, stage or desc, unit_ or unit, show=show, leave=leave)]
            current[0] = stage
        bar = bars[0]
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh() if done == total else bar.update(0)
    try:
        yield update
    finally:
        if bars:
            bars[0].close()


def report(callback: Callback, done: int, total: int, stage: str = "", unit: str = "") -> None:
    """Call ``callback(done, total[, stage, unit])`` when there is one (the library's side of the protocol)."""
    if callback is None:
        return
    if stage:
        callback(done, total, stage, unit)
    else:
        callback(done, total)


__all__ = ["Callback", "bar_callback", "progress_bar", "report", "LogBar"]
