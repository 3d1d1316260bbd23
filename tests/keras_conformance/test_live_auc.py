"""AUC against live Keras 3 (PyTorch backend): every curve (ROC, PR, PRGAIN) and
summation method, flat and ``multi_label`` (with ``num_labels``), label and sample
weights, ``from_logits``, predictions on a grid (ties at the thresholds) and not, over
two batches: the same result. Marked ``keras``."""

import itertools

import numpy as np
import pytest

from metalearn.keras import metrics as mm

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()


@pytest.mark.parametrize("trial", range(6))
def test_auc_matches_keras(trial):
    rng = np.random.default_rng(trial)
    n = [3, 5, 11, 50, 200, 7][trial]
    multi, grid, logits = trial % 2 == 0, trial in (1, 2, 5), trial in (3, 4)
    labels = 3
    yp = rng.integers(0, 21, (16, labels)) / 20.0 if grid else rng.uniform(size=(16, labels))
    yp = yp.astype("float32")
    if logits:
        yp = (yp * 8 - 4).astype("float32")
    yt = (rng.uniform(size=(16, labels)) < 0.5).astype("float32")
    sw = rng.uniform(0, 2, 16).astype("float32") if trial % 3 else None
    lw = rng.uniform(0, 1, labels).tolist() if trial in (2, 3) else None
    for curve, how in itertools.product(
        ["ROC", "PR", "PRGAIN"], ["interpolation", "minoring", "majoring"]
    ):
        kw = dict(
            num_thresholds=n,
            curve=curve,
            summation_method=how,
            multi_label=multi,
            label_weights=lw,
            from_logits=logits,
        )
        if multi:
            kw["num_labels"] = labels
        theirs, ours = KERAS.metrics.AUC(**kw), mm.AUC(**kw)
        for m in (theirs, ours):
            m.update_state(yt, yp, sample_weight=sw)
            m.update_state(yt[:5], yp[:5])
        np.testing.assert_allclose(
            float(ours.result()),
            float(KERAS.ops.convert_to_numpy(theirs.result())),
            rtol=1e-5,
            atol=1e-6,
            err_msg=str(kw),
        )
