"""Writing banned (row, token) pairs into vLLM's logits without waiting for the GPU.

`logits[rows, tokens] = float("-inf")` on a CUDA tensor blocks the CPU until the GPU has finished the work
queued before it (the whole forward pass: 49.8 ms of 50 in bench/guard_device_check.py), which under vLLM's
async scheduling makes every decode step serial. `index_put_` with a -inf tensor already on the device does
not wait.
"""

from __future__ import annotations

import numpy as np
import torch


class BanWriter:
    """Writes -inf at the banned (row, token) pairs of the logits without allocating or waiting per step.

    On a GPU the pairs travel through one of two pinned host buffers in turn (an event says when the GPU has
    read the one about to be refilled: two steps ago, long done) into a device buffer, and `index_put_` takes
    a device -inf: nothing a step does allocates pinned memory or makes a scalar tensor (vLLM's built-in
    min-tokens processor keeps its -inf on the device the same way).
    """

    def __init__(self, pin_memory: bool, capacity: int = 4096):
        self.pin_memory, self.capacity = pin_memory, capacity
        self.host: list[torch.Tensor] = []
        self.read: list[torch.cuda.Event | None] = [None, None]
        self.dev: torch.Tensor | None = None
        self.neg_inf: torch.Tensor | None = None
        self.turn = 0

    def _buffers(self, logits: torch.Tensor, k: int) -> None:
        if self.dev is not None and k <= self.capacity and self.dev.device == logits.device:
            if self.neg_inf is None or self.neg_inf.dtype != logits.dtype:
                self.neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
            return
        for event in self.read:  # growing: the old buffers must be read before they go
            if event is not None:
                event.synchronize()
        while self.capacity < k:
            self.capacity *= 2
        self.host = [torch.empty((2, self.capacity), dtype=torch.int64, pin_memory=self.pin_memory) for _ in range(2)]
        self.read = [None, None]
        self.dev = torch.empty((2, self.capacity), dtype=torch.int64, device=logits.device)
        self.neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)

    def write(self, logits: torch.Tensor, rows: np.ndarray, toks: np.ndarray) -> torch.Tensor:
        k = rows.size
        if not k:
            return logits
        if logits.device.type == "cpu":
            logits[torch.from_numpy(rows), torch.from_numpy(toks)] = float("-inf")
            return logits
        self._buffers(logits, k)
        assert self.dev is not None and self.neg_inf is not None
        i, self.turn = self.turn, self.turn ^ 1
        if (event := self.read[i]) is not None:
            event.synchronize()
        host = self.host[i]
        host[0, :k] = torch.from_numpy(rows)
        host[1, :k] = torch.from_numpy(toks)
        dev = self.dev[:, :k]
        dev.copy_(host[:, :k], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.read[i] = event
        logits.index_put_((dev[0], dev[1]), self.neg_inf)
        return logits
