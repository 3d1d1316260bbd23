"""Progress output (metalearn/progress.py and the loops that use it): a Keras-style bar
with an ETA on a terminal, plain lines when the output is not a terminal, nothing with
verbose=0. A fake stream whose isatty() says True stands in for a terminal."""

import io
import re
import sys

import numpy as np
import pytest

import metalearn as ml
from metalearn.progress import Progbar, _format_time, _format_value, _per_step
from tests.helpers import dense_model


class FakeStream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_terminal_draws_a_bar_with_an_eta_then_ends_the_line():
    out = FakeStream(tty=True)
    bar = Progbar(10, verbose=1, interval=0.0, stream=out)
    for i in range(1, 11):
        bar.update(i, {"loss": 1.0 / i})
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 10  # redrawn in place, one line
    assert re.match(r" 3/10 \[=+>\.+\] - ETA: \d+s - loss: 0\.3333", frames[2]), frames[2]
    assert all("ETA" in f for f in frames[:-1])
    last = frames[-1]
    assert last.startswith("10/10 [" + "=" * 30 + "]") and "ETA" not in last
    assert re.search(r" - \d+s \d+(us|ms|s)/step - loss: 0\.1000", last), last
    assert text.endswith("\n") and text.count("\n") == 1


def test_terminal_redraws_are_rate_limited():
    out = FakeStream(tty=True)
    bar = Progbar(1000, verbose=1, interval=3600.0, stream=out)
    for i in range(1, 1001):
        bar.update(i)
    assert out.getvalue().count("\r") <= 2  # the first draw, the final one


def test_not_a_terminal_prints_one_plain_line_at_the_end():
    out = FakeStream(tty=False)
    bar = Progbar(5, verbose=1, stream=out)
    for i in range(1, 5):
        bar.update(i, [("loss", 0.5), ("accuracy", 0.75)])
        assert out.getvalue() == ""  # nothing until the end
    bar.update(5, [("loss", 0.25)])
    text = out.getvalue()
    assert "\r" not in text and "[" not in text
    assert re.fullmatch(
        r"5/5 - \d+s - \d+(us|ms|s)/step - loss: 0\.2500 - accuracy: 0\.7500\n", text
    )


@pytest.mark.parametrize("tty", [True, False])
def test_verbose_0_is_silent(tty):
    out = FakeStream(tty=tty)
    bar = Progbar(3, verbose=0, interval=0.0, stream=out)
    for i in range(1, 4):
        bar.update(i, {"loss": 1.0})
    bar.add(1)
    assert out.getvalue() == ""


def test_verbose_2_is_one_line_even_on_a_terminal():
    out = FakeStream(tty=True)
    bar = Progbar(4, verbose=2, interval=0.0, stream=out)
    for i in range(1, 5):
        bar.update(i, {"loss": 2.0})
    assert "\r" not in out.getvalue() and out.getvalue().count("\n") == 1


def test_unknown_target_and_add():
    out = FakeStream(tty=True)
    bar = Progbar(None, verbose=1, interval=0.0, stream=out)
    bar.add(2)
    bar.add(1)
    assert out.getvalue().split("\r")[-1].startswith("3/Unknown")
    bar.update(3, finalize=True)
    assert out.getvalue().endswith("\n")


def test_nothing_after_the_end():
    out = FakeStream(tty=False)
    bar = Progbar(2, verbose=1, stream=out)
    bar.update(2)
    bar.update(2)
    assert out.getvalue().count("\n") == 1


def test_formats():
    assert _format_time(4.4) == "4s"
    assert _format_time(75) == "1:15"
    assert _format_time(3725) == "1:02:05"
    assert _format_value(0.5) == "0.5000"
    assert _format_value(0.0) == "0.0000"
    assert _format_value(2.5e-5) == "2.5000e-05"
    assert _format_value(123456.0) == "1.2346e+05"
    assert _per_step(2.0, "step") == "2s/step"
    assert _per_step(0.004, "step") == "4ms/step"
    assert _per_step(5e-6, "sample") == "5us/sample"


# ------------------------------------------------------------------ the long calls


def _model():
    return dense_model(3, 4, 1)


def _xy():
    rng = np.random.default_rng(0)
    return rng.random((64, 3), dtype=np.float32), rng.random((64, 1), dtype=np.float32)


def test_model_fit_bar_on_a_terminal(monkeypatch):
    out = FakeStream(tty=True)
    monkeypatch.setattr(sys, "stdout", out)
    _model().fit(*_xy(), epochs=2, batch_size=8, verbose=1)
    text = out.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert re.search(r"8/8 \[=+\]", text) and "loss:" in text and "\r" in text


def test_model_fit_plain_lines_when_piped(monkeypatch):
    out = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stdout", out)
    _model().fit(*_xy(), epochs=3, batch_size=8, verbose=1)
    lines = [l for l in out.getvalue().splitlines() if l and not l.startswith("Epoch")]
    assert "\r" not in out.getvalue() and "[" not in out.getvalue()
    assert len(lines) == 3 and all(re.match(r"8/8 - \d+s - .*loss: ", l) for l in lines)


@pytest.mark.parametrize("tty", [True, False])
def test_model_fit_and_evaluate_silent_with_verbose_0(monkeypatch, tty):
    out = FakeStream(tty=tty)
    monkeypatch.setattr(sys, "stdout", out)
    model = _model()
    model.fit(*_xy(), epochs=2, batch_size=8, verbose=0)
    model.evaluate(*_xy(), verbose=0)
    model.predict(_xy()[0], verbose=0)
    assert out.getvalue() == ""


def _maml():
    from metalearn.meta import MAML, models

    ml.random.set_seed(0)
    return MAML(models.sinusoid_mlp(hidden=(8,)), inner_lr=0.01)


def test_meta_fit_bar_with_eta_on_a_terminal(monkeypatch):
    from metalearn.tasks import Sinusoid

    out = FakeStream(tty=True)
    monkeypatch.setattr(sys, "stdout", out)
    maml = _maml()
    import metalearn.progress as progress

    monkeypatch.setattr(
        progress.Progbar.__init__, "__defaults__", (30, 1, 0.0, None, "step")
    )  # redraw every update
    maml.fit(Sinusoid(seed=0), iterations=20, meta_batch_size=2, verbose=1)
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) >= 10
    assert any(re.match(r" ?\d+/20 \[.*\] - ETA: \d+s - loss: .* - mse: ", f) for f in frames)
    assert frames[-1].startswith("20/20 [") and frames[-1].endswith("\n")


def test_meta_fit_plain_lines_with_eta_when_piped(monkeypatch):
    from metalearn.tasks import Sinusoid

    out = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stdout", out)
    _maml().fit(Sinusoid(seed=0), iterations=20, meta_batch_size=2, verbose=1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    middle = [l for l in lines if l.startswith("iteration ")]
    assert len(middle) >= 5 and all("ETA:" in l for l in middle)
    assert re.match(r"20/20 - \d+s - ", lines[-1])


@pytest.mark.parametrize("tty", [True, False])
def test_meta_fit_and_evaluate_silent_with_verbose_0(monkeypatch, tty):
    from metalearn.tasks import Sinusoid

    out = FakeStream(tty=tty)
    monkeypatch.setattr(sys, "stdout", out)
    maml = _maml()
    maml.fit(Sinusoid(seed=0), iterations=5, meta_batch_size=2, verbose=0)
    maml.evaluate(Sinusoid(seed=1), episodes=5, verbose=0)
    assert out.getvalue() == ""


def test_evaluate_over_many_episodes_shows_progress(monkeypatch):
    from metalearn.tasks import Sinusoid

    out = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stdout", out)
    _maml().evaluate(Sinusoid(seed=1), episodes=30, verbose=1)
    lines = out.getvalue().splitlines()
    assert any(l.startswith("episode ") and "ETA:" in l for l in lines)
    assert re.match(r"30/30 - \d+s - \d+(us|ms|s)/episode - mse: ", lines[-1])
