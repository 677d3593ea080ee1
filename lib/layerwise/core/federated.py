"""Federated learning simulated on one machine: client data, participation, FedAvg, evaluation.

Shared by the chapters that simulate federated training (the first is FedD2S). Each piece has the
shape it would have in a real federated framework, so the same logic could be moved there. In
Flower's terms: a client's local update is ``NumPyClient.fit`` (parameters and config in,
parameters, example count and metrics out), the per-client evaluation is
``NumPyClient.evaluate``, choosing participants and what to send them is a strategy's
``configure_fit``, and combining the answers is its ``aggregate_fit``. Here the messages are the
dataclasses :class:`FitIns` and :class:`FitRes`, and the "network" is a function call.

Two baselines live here, because every federated chapter compares against them:

- **local-only** training (:func:`run_local`): each client trains its own model on its own data
  and never communicates;
- **FedAvg** (McMahan et al., 2017; :func:`fedavg_client_update`, :func:`fedavg_aggregate`,
  :func:`run_fedavg`): clients start each round from the server's weights, run a few epochs of
  SGD, and the server averages the returned weights, weighted by the clients' example counts.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise.core.env import progress_bar

__all__ = ["ClientData", "LocalConfig", "FitIns", "FitRes", "FedHistory", "sample_participants",
           "weighted_average", "EpochSampler", "client_generator", "Cohort", "local_train", "client_accuracies",
           "fedavg_client_update", "fedavg_aggregate", "run_local", "run_fedavg"]


@dataclass
class ClientData:
    """One client's private data: a training split and a local test split drawn with the same
    label distribution. ``X_*: (N, ...)`` float, ``y_*: (N,)`` int64."""

    cid: int
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_examples(self) -> int:
        return int(self.y_train.shape[0])

    def label_counts(self, num_classes: int) -> torch.Tensor:
        """``(num_classes,)`` training examples per class."""
        return torch.bincount(self.y_train.cpu(), minlength=num_classes)

    def to(self, device: torch.device | str) -> "ClientData":
        return ClientData(self.cid, self.X_train.to(device), self.y_train.to(device), self.X_test.to(device),
                          self.y_test.to(device))


@dataclass
class LocalConfig:
    """How a client trains in one round: ``steps`` mini-batch steps of ``optimizer`` (``"sgd"`` or
    ``"adam"``) on its data, with a fresh optimiser each round, as a stateless client would have
    (``momentum`` applies to SGD only). Batches come from :class:`EpochSampler`."""

    steps: int = 4
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass
class FitIns:
    """Server -> client at the start of a round (Flower: ``FitIns``): the global weights."""

    round: int
    weights: dict[str, torch.Tensor]
    config: dict = field(default_factory=dict)


@dataclass
class FitRes:
    """Client -> server at the end of a round (Flower: ``FitRes``): the updated weights, the
    number of examples they were trained on, and metrics."""

    cid: int
    num_examples: int
    weights: dict[str, torch.Tensor]
    metrics: dict = field(default_factory=dict)


@dataclass
class FedHistory:
    """What a federated run measured. ``acc[r, k]``: client ``k``'s personalised accuracy (its
    model on its own local test split) after round ``r``; ``participants[r]``: who took part."""

    name: str
    acc: np.ndarray
    participants: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """``(R,)`` mean client accuracy per round."""
        return self.acc.mean(1)

    @property
    def worst(self) -> np.ndarray:
        """``(R,)`` accuracy of the worst client per round."""
        return self.acc.min(1)

    @property
    def final(self) -> np.ndarray:
        """``(K,)`` every client's accuracy after the last round."""
        return self.acc[-1]


def _check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"ratio (the participation ratio) must be in (0, 1], got {ratio!r}")
    return float(ratio)


def sample_participants(num_clients: int, ratio: float, generator: torch.Generator | None = None) -> list[int]:
    """The clients taking part in one round: ``max(1, round(ratio * K))`` of the ``K`` clients,
    drawn without replacement with ``generator``; returned sorted. ``ratio = 1``: everyone."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}")
    ratio = _check_ratio(ratio)
    m = max(1, int(round(ratio * num_clients)))
    if m == num_clients:
        return list(range(num_clients))
    return sorted(torch.randperm(num_clients, generator=generator)[:m].tolist())


def weighted_average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg's aggregation: ``sum_k w_k state_k / sum_k w_k`` for every entry of the state dicts
    (floating-point entries; integer buffers such as BatchNorm's step counter are taken from the
    first state)."""
    if not states:
        raise ValueError("states is empty: no client answered")
    if len(weights) != len(states):
        raise ValueError(f"weights has {len(weights)} entries for {len(states)} states")
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    w = w / w.sum()
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for wk, s in zip(w, states):
            acc += wk * s[key].to(torch.float64)
        out[key] = acc.to(first.dtype)
    return out


class EpochSampler:
    """Mini-batch indices for one client, epoch after epoch: a fresh permutation of ``range(n)``
    from ``generator`` is cut into batches of ``batch_size`` (the remainder dropped, as
    :func:`layerwise.core.train.batches` does); the position carries over between rounds."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> torch.Tensor:
        """The next ``(batch_size,)`` int64 indices."""
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx


def client_generator(seed: int, cid: int) -> torch.Generator:
    """The generator client ``cid`` draws its batches with in a run seeded ``seed``."""
    return torch.Generator().manual_seed(int(seed) * 1009 + 17 * int(cid) + 1)


class Cohort:
    """``K`` models of one architecture held as stacked parameters ``(K, ...)`` and run in lockstep
    with ``torch.func.vmap``: client ``k`` only ever touches slice ``k`` of each parameter and its
    own data, so the result is that of ``K`` separate models, computed in one batched call.

    ``params[name]: (K, *shape)``; ``forward(params, x: (K, B, ...), **kw)`` returns the outputs
    of every model on its own batch, stacked on a leading axis.
    """

    def __init__(self, model: nn.Module, num: int):
        if any(True for _ in model.buffers()):
            raise ValueError("Cohort supports models without buffers (use GroupNorm, not BatchNorm)")
        self.base = model
        self.params = {k: v.detach().unsqueeze(0).repeat(num, *([1] * v.dim())).clone()
                       for k, v in model.named_parameters()}

    @property
    def num(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, **kwargs):
        from torch.func import functional_call, vmap

        return vmap(lambda p, xb: functional_call(self.base, p, (xb,), kwargs))(params, x)

    def forward_one(self, k: int, x: torch.Tensor, **kwargs):
        """Model ``k`` on ``x: (N, ...)`` (any N), without gradients."""
        from torch.func import functional_call

        with torch.no_grad():
            return functional_call(self.base, {n: p[k] for n, p in self.params.items()}, (x,), kwargs)

    def state(self, k: int) -> dict[str, torch.Tensor]:
        """Model ``k``'s parameters as a state dict."""
        return {n: p[k].clone() for n, p in self.params.items()}

    def model(self, k: int) -> nn.Module:
        """Model ``k`` as an ordinary module (a copy)."""
        m = copy.deepcopy(self.base)
        m.load_state_dict(self.state(k))
        return m


def local_train(cohort: Cohort, params: dict[str, torch.Tensor], clients: Sequence[ClientData],
                samplers: Sequence[EpochSampler], cfg: LocalConfig,
                loss_fn: Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[dict[str, torch.Tensor], float]:
    """``cfg.steps`` optimiser steps for the participating clients at once.

    params: ``(m, ...)`` starting parameters of the ``m`` participants (``clients[i]`` uses slice
    ``i`` and ``samplers[i]``). ``loss_fn(out, xb, yb)`` gets the cohort's outputs on the batches
    ``xb: (m, B, ...)``, ``yb: (m, B)`` and returns the ``(m,)`` per-client losses (default:
    cross-entropy of the logits). The optimiser sees their sum: as the clients' parameters are
    disjoint, each client gets exactly its own gradient, and SGD and Adam act element-wise, so
    this is ``m`` independent local trainings. Returns the trained parameters and the mean loss.
    """
    def ce(out, xb, yb):
        return F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape).mean(1)

    loss_fn = loss_fn or ce
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = cfg.make_optimizer(list(leaves.values()))
    total = 0.0
    for _ in range(cfg.steps):
        idx = [s.next().to(c.y_train.device) for s, c in zip(samplers, clients)]
        xb = torch.stack([c.X_train[i] for c, i in zip(clients, idx)])
        yb = torch.stack([c.y_train[i] for c, i in zip(clients, idx)])
        losses = loss_fn(cohort.forward(leaves, xb), xb, yb)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        total += losses.mean().item()
    return {k: v.detach() for k, v in leaves.items()}, total / cfg.steps


def client_accuracies(cohort: Cohort, clients: Sequence[ClientData], which: Sequence[int] | None = None) -> np.ndarray:
    """Personalised accuracy of every client: model ``which[k]`` (default ``k``) of the cohort on
    client ``k``'s own local test split. ``(K,)``."""
    which = list(range(len(clients))) if which is None else which
    return np.array([(cohort.forward_one(w, c.X_test).argmax(-1) == c.y_test).float().mean().item()
                     for w, c in zip(which, clients)])


def _stack(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def fedavg_client_update(cohort: Cohort, clients: Sequence[ClientData], samplers: Sequence[EpochSampler],
                         ins: FitIns, cfg: LocalConfig) -> list[FitRes]:
    """FedAvg's client (``fit``), for each participant: start from the global weights, train
    locally, return the new weights and the example count (run for all participants at once)."""
    start = _stack([ins.weights] * len(clients))
    new, loss = local_train(cohort, start, clients, samplers, cfg)
    return [FitRes(c.cid, c.num_examples, {k: v[i] for k, v in new.items()}, {"loss": loss})
            for i, c in enumerate(clients)]


def fedavg_aggregate(results: Sequence[FitRes]) -> dict[str, torch.Tensor]:
    """FedAvg's server (``aggregate_fit``): the example-weighted average of the clients' weights."""
    return weighted_average([r.weights for r in results], [r.num_examples for r in results])


def run_local(make_model: Callable[[], nn.Module], clients: Sequence[ClientData], rounds: int, cfg: LocalConfig,
              *, seed: int = 0, progress: bool | None = None) -> FedHistory:
    """Local-only baseline: every client trains its own copy of the initial model on its own data,
    ``cfg.steps`` per round (every client, every round), and never communicates."""
    cohort = Cohort(make_model(), len(clients))
    samplers = [EpochSampler(c.num_examples, cfg.batch_size, client_generator(seed, k)) for k, c in enumerate(clients)]
    acc = np.zeros((rounds, len(clients)))
    start = time.perf_counter()
    for r in progress_bar(range(rounds), desc="local only", enabled=progress):
        cohort.params, _ = local_train(cohort, cohort.params, clients, samplers, cfg)
        acc[r] = client_accuracies(cohort, clients)
    return FedHistory("local only", acc, [list(range(len(clients)))] * rounds, time.perf_counter() - start,
                      {"cohort": cohort})


def run_fedavg(make_model: Callable[[], nn.Module], clients: Sequence[ClientData], rounds: int, cfg: LocalConfig,
               *, ratio: float = 1.0, seed: int = 0, progress: bool | None = None) -> FedHistory:
    """FedAvg: each round a ``ratio`` share of the clients trains the global model locally and the
    server averages. Personalised accuracy is the global model on each client's local test split."""
    model = make_model()
    cohort = Cohort(model, 1)
    weights = cohort.state(0)
    samplers = [EpochSampler(c.num_examples, cfg.batch_size, client_generator(seed, k)) for k, c in enumerate(clients)]
    server_gen = torch.Generator().manual_seed(seed)
    acc = np.zeros((rounds, len(clients)))
    parts = []
    start = time.perf_counter()
    for r in progress_bar(range(rounds), desc="FedAvg", enabled=progress):
        chosen = sample_participants(len(clients), ratio, server_gen)             # configure_fit
        results = fedavg_client_update(cohort, [clients[k] for k in chosen], [samplers[k] for k in chosen],
                                       FitIns(r, weights), cfg)                    # fit, on each client
        weights = fedavg_aggregate(results)                                        # aggregate_fit
        cohort.params = _stack([weights])
        acc[r] = client_accuracies(cohort, clients, [0] * len(clients))            # evaluate
        parts.append(chosen)
    return FedHistory("FedAvg", acc, parts, time.perf_counter() - start, {"cohort": cohort, "weights": weights})
