"""Sequential: a chain of layers with flat parameter and gradient buffers.

All parameters of a model live in one 1-D array ``params`` and all gradients in ``grads``; each
layer's ``params``/``grads`` entries are views into them (the llm.c habit), so the optimizer is a few
whole-buffer operations and a checkpoint is two arrays. Names follow PyTorch's state_dict order:
``"<layer index>.<name>"`` (e.g. ``"0.W"``, ``"2.gamma"``, ``"2.running_mean"``).
"""

from minigan.backend import array_module, to_host


class Sequential:
    def __init__(self, *layers):
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers = list(layers)
        self.xp, self.dtype = layers[0].xp, layers[0].dtype
        entries = [(i, k, v) for i, layer in enumerate(layers) for k, v in layer.params.items()]
        total = sum(int(v.size) for _, _, v in entries)
        self.params = self.xp.empty(total, dtype=self.dtype)
        self.grads = self.xp.zeros(total, dtype=self.dtype)
        self.slices = {}
        offset = 0
        for i, name, value in entries:
            size, shape = int(value.size), value.shape
            param_view = self.params[offset : offset + size].reshape(shape)
            param_view[...] = value
            self.layers[i].params[name] = param_view
            self.layers[i].grads[name] = self.grads[offset : offset + size].reshape(shape)
            self.slices[f"{i}.{name}"] = (offset, shape)
            offset += size

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy, input_grad=True, param_grads=True):
        """Backpropagate dL/dy through every layer, last to first; return dL/dx (None without input_grad)."""
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy, input_grad=input_grad or i > 0, param_grads=param_grads)
        return dy

    def train(self):
        for layer in self.layers:
            layer.training = True
        return self

    def eval(self):
        for layer in self.layers:
            layer.training = False
        return self

    @property
    def training(self):
        return self.layers[0].training

    def named_parameters(self):
        """(name, parameter view) pairs, in flat-buffer order."""
        return [(f"{i}.{k}", v) for i, layer in enumerate(self.layers) for k, v in layer.params.items()]

    def named_buffers(self):
        return [(f"{i}.{k}", v) for i, layer in enumerate(self.layers) for k, v in layer.buffers.items()]

    def state(self):
        """Parameters (the flat buffer) and buffers, as NumPy arrays, for a checkpoint."""
        state = {"params": to_host(self.params).copy()}
        state.update({k: to_host(v).copy() for k, v in self.named_buffers()})
        return state

    def load_state(self, state):
        """Load ``state()``'s output (from either backend); shapes must match exactly."""
        expected = {"params": self.params.shape, **{k: v.shape for k, v in self.named_buffers()}}
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"state has no {key!r}")
            if tuple(state[key].shape) != tuple(shape):
                raise ValueError(f"state {key!r} has shape {tuple(state[key].shape)}, model needs {shape}")
            if state[key].dtype.kind != "f" or not bool(array_module(state[key]).isfinite(state[key]).all()):
                raise ValueError(f"state {key!r} is not all finite floating-point numbers ({state[key].dtype})")
        self.params[...] = self.xp.asarray(state["params"], dtype=self.dtype)
        for k, v in self.named_buffers():
            v[...] = self.xp.asarray(state[k], dtype=self.dtype)

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  ({i}) {layer!r}\n" for i, layer in enumerate(self.layers)) + ")"
