"""benchmarks/reproduce.py's maml_conv4 options of the accuracy-gap study (issue 20,
docs/GAP.md): --init picks the same initialisation for both peers, --iterations stops a
run at a count, --curve keeps the per-iteration losses; the PyTorch peer's network follows
the initialisation's formula."""

import json
import math

import pytest

from metalearn.meta.models import has_conv
from tests.helpers import REPO, load_script, needs_omniglot


@pytest.fixture(scope="module")
def reproduce():
    return load_script(REPO / "benchmarks" / "reproduce.py", "reproduce")


def test_init_choices_are_checked(reproduce):
    assert reproduce.parse_args(["--init", "torch"]).init == "torch"
    assert reproduce.parse_args([]).init == "native"
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--init", "kaiming"])


@needs_omniglot
@pytest.mark.skipif(not has_conv(), reason="no conv ops")
def test_metalearn_peer_stops_at_iterations_and_saves_its_curve(reproduce, tmp_path):
    rows = reproduce.main(
        ["--only", "maml_conv4", "--peer", "metalearn", "--iterations", "2", "--episodes", "2"]
        + ["--init", "torch", "--curve", str(tmp_path / "c.json"), "--verbose", "0"]
    )
    assert len(rows) == 1 and rows[0][1].startswith("5-way 1-shot, 2 it in")
    curve = json.loads((tmp_path / "c-metalearn.json").read_text())
    assert curve["init"] == "torch" and len(curve["loss"]) == len(curve["seconds"]) == 2
    assert all(math.isfinite(v) for v in curve["loss"])
    assert curve["seconds"][0] <= curve["seconds"][1]


@pytest.mark.torch
@pytest.mark.parametrize("init", ["native", "torch", "glorot"])
def test_torch_peer_initialisation_follows_the_formula(reproduce, init):
    torch = pytest.importorskip("torch")
    net = reproduce.torch_conv4(init, seed=0)
    found = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(found) == 5
    for m in found:
        w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
        fan_in = w[0].size
        fan_out = w.shape[0] * (w[0, 0].size if w.ndim == 4 else 1)
        if init == "glorot":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert not b.any()
        else:  # kaiming_uniform_(a=sqrt 5): 1 / sqrt(fan_in), the bias too
            bound = 1.0 / math.sqrt(fan_in)
            assert abs(b).max() <= bound and abs(b).max() > 0.5 * bound
        assert abs(w).max() <= bound * (1 + 1e-6) and abs(w).max() > 0.9 * bound
    with pytest.raises(ValueError, match="kaiming"):
        reproduce.torch_conv4("kaiming")
