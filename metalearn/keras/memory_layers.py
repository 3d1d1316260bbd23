"""Layers around the knowledge memory (Kaiser et al. 2017, "Learning to Remember Rare Events").

``MemoryRecall`` reads a ``metalearn.KnowledgeMemory`` from inside a model: a differentiable
soft read of the payloads of the top-k keys nearest to the layer's input (the gradient
reaches the input, so the encoder in front of it trains through the read), or, with
``output="labels"``, the label of the nearest key (no gradient; one-shot prediction with no
gradient step at test time).
"""

import numpy as np

from metalearn import _core

from .layers import Layer

__all__ = ["MemoryRecall"]


class MemoryRecall(Layer):
    """Recalls from a KnowledgeMemory: ``inputs (batch, key_size) -> recall``.

    Args:
        memory: a ``metalearn.KnowledgeMemory`` (not a weight of the layer: it is not saved
            with the model's weights; save it with ``memory.save``), or the dict that
            ``get_config`` gives for one (``{"capacity", "key_size", "payload_size"}``),
            which makes a new, empty memory of that size.
        k: number of neighbours read.
        temperature: softmax temperature of the soft read.
        output: ``"payload"`` (default when the memory has payloads): the attention-weighted
            payload ``(batch, payload_size)``, differentiable; ``"weights"``: the attention
            weights ``(batch, k)``, differentiable; ``"labels"``: the label of the nearest
            key ``(batch,)`` as a float tensor (-1 when the memory is empty), no gradient.
        update: when True, calling the layer with ``training=True`` and ``labels=...`` also
            writes the inputs into the memory (the update rule) after reading.
    """

    def __init__(self, memory, k=8, temperature=1.0, output=None, update=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(memory, dict):
            # from_config: the memory's contents are state, like weights; the config holds
            # its size only, and the rebuilt layer reads a new, empty memory of that size
            from metalearn.memory import KnowledgeMemory

            cfg = dict(memory.get("config", memory))
            unknown = set(cfg) - {"capacity", "key_size", "payload_size"}
            if unknown or not {"capacity", "key_size"} <= set(cfg):
                raise ValueError(
                    f"MemoryRecall: memory config needs capacity and key_size "
                    f"(and optionally payload_size), got {sorted(cfg)}"
                )
            memory = KnowledgeMemory(**cfg)
        elif not all(hasattr(memory, a) for a in ("capacity", "key_size", "payload_size", "read")):
            raise TypeError(
                f"MemoryRecall: memory must be a metalearn.KnowledgeMemory, got "
                f"{type(memory).__name__}"
            )
        if output is None:
            output = "payload" if memory.payload_size > 0 else "weights"
        if output not in ("payload", "weights", "labels"):
            raise ValueError(
                f"MemoryRecall: output must be 'payload', 'weights' or 'labels', got {output!r}"
            )
        if output == "payload" and memory.payload_size == 0:
            raise ValueError("MemoryRecall: output='payload' needs a memory with payload_size > 0")
        if not 1 <= int(k) <= memory.capacity:
            raise ValueError(f"MemoryRecall: k must be in [1, {memory.capacity}], got {k}")
        if not float(temperature) > 0:
            raise ValueError(f"MemoryRecall: temperature must be positive, got {temperature}")
        self._memory = memory
        self.k = int(k)
        self.temperature = float(temperature)
        self.output = output
        self.update = bool(update)

    @property
    def memory(self):
        return self._memory

    def build(self, input_shape):
        if (
            not isinstance(input_shape, tuple)
            or len(input_shape) != 2
            or input_shape[-1] != self._memory.key_size
        ):
            raise ValueError(
                f"{self.name}: expected inputs of shape (batch, "
                f"{self._memory.key_size}), got {input_shape}"
            )
        self.built = True

    def call(self, inputs, labels=None, training=None):
        mem = self._memory
        if self.output == "labels":
            data = inputs.numpy() if isinstance(inputs, _core.Tensor) else inputs
            out = _core.tensor(mem.predict(data).astype(np.float32))
        elif self.output == "weights":
            out = mem.read(inputs, k=self.k, temperature=self.temperature, return_weights=True)
            out = out[1] if isinstance(out, tuple) else out
        else:
            out = mem.read(inputs, k=self.k, temperature=self.temperature)
        if self.update and training and labels is not None:
            data = inputs.numpy() if isinstance(inputs, _core.Tensor) else inputs
            mem.update(data, np.asarray(labels).reshape(-1))
        return out

    def compute_output_shape(self, input_shape):
        if self.output == "labels":
            return (input_shape[0],)
        if self.output == "weights":
            return (input_shape[0], self.k)
        return (input_shape[0], self._memory.payload_size)

    def get_config(self):
        config = super().get_config()
        mem = self._memory
        config.update(
            memory={
                "class_name": "KnowledgeMemory",
                "config": {
                    "capacity": int(mem.capacity),
                    "key_size": int(mem.key_size),
                    "payload_size": int(mem.payload_size),
                },
            },
            k=self.k,
            temperature=self.temperature,
            output=self.output,
            update=self.update,
        )
        return config
