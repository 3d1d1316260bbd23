"""What test_saving_ema.py and test_saving_optimizer_slots.py share: an optimizer's
variables in Keras 3's ``optimizer/vars`` layout (the dict a ``.keras`` file holds),
and a model resumed from them, the h5py-free part of saving and loading."""

from metalearn.keras import saving


def vars_file(m):
    """The ``{"optimizer/vars": {"0": ..., ...}}`` part of a ``.keras`` file for ``m``."""
    return {"optimizer/vars": {str(i): a for i, a in enumerate(saving._optimizer_arrays(m))}}


def restore(m, file):
    """Restores ``m``'s optimizer from ``file`` as ``load_model`` does."""
    saving._optimizer_plan(m, file, "f.keras", "load_model")()


def resumed_after(model, make, x, y, steps=3):
    """``(run, resumed, file)``: ``run`` trained ``steps`` batches from ``model(make())``;
    ``resumed`` a fresh ``model(make())`` with its weights and its optimizer restored from
    ``file``, checked to be at step ``steps``."""
    run = model(make())
    for _ in range(steps):
        run.train_on_batch(x, y)
    file = vars_file(run)
    resumed = model(make())
    resumed.set_weights(run.get_weights())
    restore(resumed, file)
    assert resumed.optimizer.iterations == steps
    return run, resumed, file
