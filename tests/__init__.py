"""metalearn's test suite, grouped by the layer under test (see tests/conftest.py for the
shared fixtures and tests/helpers.py for the shared constants and builders):

core/              the C core through _core: tensors, ops, gradients, traces, kernels
keras/             the Keras face: layers, losses, metrics, optimizers, models, tape
meta/              meta-learning: MAML and the other algorithms, tasks, data, memory
system/            whole programs: the article, the README, notebooks, the demo, the C example
reliability/       bad input, refused calls, threads, leaks, allocation
keras_conformance/ Keras 3's own expected values, and the live comparison with Keras
reference/         PyTorch fixtures (*.npz) and the scripts that generate them
"""
