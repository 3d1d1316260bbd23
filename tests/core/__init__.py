"""The C core through metalearn._core: tensors, ops and their gradients, traces, kernels."""
