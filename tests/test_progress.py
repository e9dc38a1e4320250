"""landscape.progress: the library's ``callback(done, total)`` protocol and the displays at the edges (a
plain line every few seconds off a terminal, tqdm on one)."""
import io

import pytest

from landscape.progress import LogBar, bar_callback, progress_bar, report


def test_a_progress_line_is_never_printed_twice():
    """A bar that reaches its total writes its last line once (the density's was written again at close)."""
    out = io.StringIO()
    bar = LogBar(total=3, desc="density", unit="HVP", file=out, interval=0.0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [l.split(",")[0] for l in lines] == ["density: 1/3 HVP (33%)", "density: 2/3 HVP (67%)",
                                               "density: 3/3 HVP (100%)"]
    bar2 = LogBar(total=2, desc="train", file=out, interval=0.0)
    bar2.update(2)
    bar2.set_postfix(loss=0.5)
    bar2.close()                                   # the postfix changed: the last line says so
    assert out.getvalue().splitlines()[-1].endswith("[loss=0.5]")


def test_a_short_run_stays_silent_and_a_long_one_gives_an_eta():
    out = io.StringIO()
    quiet = LogBar(total=10, desc="x", file=out, interval=3600.0)
    quiet.update(5)
    quiet.close()
    assert out.getvalue() == ""
    bar = LogBar(total=4, desc="grid", unit="pt", file=out, interval=0.0)
    bar.update(1)
    assert "ETA" in out.getvalue().splitlines()[-1] and "1/4 pt (25%)" in out.getvalue()


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "7")
    assert LogBar(total=1).interval == 7.0
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "soon")
    assert LogBar(total=1).interval == 30.0                 # unreadable: the default, not a crash


def test_off_a_terminal_the_bar_is_a_log_line_and_hidden_bars_draw_nothing(capsys):
    bar = progress_bar(total=2, desc="train")                # pytest's stderr is not a terminal
    assert isinstance(bar, LogBar)
    hidden = progress_bar(total=2, desc="train", show=False)
    hidden.update(2)
    hidden.close()
    assert capsys.readouterr().err == ""


def test_bar_callback_turns_the_protocol_into_a_bar(monkeypatch, capsys):
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "0")
    with bar_callback("trace", unit="HVP") as cb:
        report(cb, 2, 10)
        report(cb, 6, 12)                                    # a total that grows (adaptive trace)
        report(None, 1, 1)                                   # no callback: nothing
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("trace: 2/10 HVP") and lines[-1].startswith("trace: 6/12 HVP (50%)")
    with pytest.raises(ValueError):                          # the bar is closed when the block fails too
        with bar_callback("x") as cb:
            raise ValueError


def test_a_new_stage_opens_its_own_bar(monkeypatch, capsys):
    """A job of several stages (evaluate: PGD, then AutoAttack) names each; the edge shows one bar a stage."""
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "0")
    with bar_callback("evaluate", unit="sample") as cb:
        report(cb, 4, 8, "PGD-20", "sample")
        report(cb, 8, 8, "PGD-20", "sample")
        report(cb, 1, 4, "AutoAttack", "member")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("PGD-20: 4/8 sample") and any(l.startswith("PGD-20: 8/8 sample") for l in lines)
    assert lines[-1].startswith("AutoAttack: 1/4 member")
