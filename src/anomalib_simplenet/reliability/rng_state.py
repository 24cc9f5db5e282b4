"""Global random-number-generator states as plain data, so a resumed run draws what the uninterrupted one did.

Lightning restores weights, optimisers and loop counters on resume but not the global RNGs, which drive the
training dataloader's shuffle order, SimpleNet's feature noise, UNetAE's masking and dropout and
DistillClassifier's transform labels. Everything here is tensors, ints and strings: checkpoints holding it still
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """States of Python's ``random``, NumPy's legacy global generator, torch CPU and (if present) CUDA."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; parts missing from ``state`` (e.g. CUDA on a CPU run) are left alone."""
    python = state.get("python")
    if python is not None:
        random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()), python["gauss"]))
    numpy_state = state.get("numpy")
    if numpy_state is not None:
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (numpy_state["kind"], keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"]),
        )
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
