"""FedD2S: personalised data-free federated knowledge distillation (Atapour et al., 2024,
arXiv:2402.10846).

Clients keep personal models and never share weights. Knowledge travels as distillation, without
any public or synthetic data set: in each round the participating clients upload the
intermediate representations of their own data at the layers that still take part, with their
soft labels; the server trains one small *head* per layer that turns a representation into class
probabilities (cross-entropy on the labels + KL to the clients' soft labels); the heads go back
to the clients, where they turn each client's own representations into soft labels that the
client's model distils (cross-entropy + KL). As rounds pass, a **deep-to-shallow layer-dropping**
schedule removes the deepest layers from this exchange, so that the deep, task-specific layers
stay personal while the shallow ones keep sharing.

Only the abstract and third-party summaries of the paper could be read when this was written,
and no official code exists. What follows the paper: personal models, data-free distillation in
two directions with KL + CE, server-side head models that map intermediate representations to
soft labels, deep-to-shallow layer dropping governed by a dropping rate, a participation ratio,
Dirichlet non-IID splits. What is our reading: the exact schedule (:func:`active_depth`), the
losses' weights and temperature, one linear head per layer, and which data the heads are trained
on. The chapter tabulates this.

Pieces, in the order of one round (the server side is a ``Strategy``, the client a
``NumPyClient``, in Flower's terms; see :mod:`layerwise.core.federated`):

- :func:`dirichlet_split` — the non-IID split of a data set into clients (the experiment's setup);
- :func:`active_depth` — how many layers (from the input) still take part in round ``t``;
- :class:`D2SFitIns` / :class:`D2SFitRes` — the messages of one round;
- :func:`kd_loss` — the temperature-scaled KL distillation loss used in both directions;
- :func:`client_update` — the client: distil from the global heads, then upload representations;
- :func:`server_update` — the server: distil the uploaded knowledge into the layer heads;
- :func:`run_fedd2s` — the whole simulation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from layerwise.core.env import progress_bar
from layerwise.core.federated import (ClientData, Cohort, EpochSampler, FedHistory, LocalConfig, client_accuracies,
                                      client_generator, local_train, sample_participants)

__all__ = ["dirichlet_split", "dirichlet_proportions", "split_clients", "active_depth", "kd_loss",
           "LayeredNet", "mlp_net", "conv_net", "D2SConfig", "D2SFitIns", "D2SFitRes", "make_heads",
           "client_update", "server_update", "run_fedd2s"]


# --------------------------------------------------------------------------- the non-IID split

def dirichlet_split(labels: torch.Tensor, proportions: torch.Tensor) -> list[torch.Tensor]:
    """Split example indices among clients by per-class proportions (the Dirichlet label split).

    labels: ``(N,)`` int class indices in ``[0, C)``; proportions: ``(C, K)``, row ``c`` the share
    of class ``c`` that goes to each of the ``K`` clients (rows sum to 1; drawn from
    Dirichlet(α) by :func:`dirichlet_proportions`). For each class ``c`` the indices of its
    examples, in increasing order, are cut at ``round(n_c * cumsum(proportions[c]))`` (computed in
    float64, the last cut forced to ``n_c``); client ``k`` gets the ``k``-th piece. Returns ``K``
    int64 tensors of indices, each sorted increasingly: a partition of ``range(N)``.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be a (N,) integer tensor, got {getattr(labels, 'shape', type(labels).__name__)}")
    if not isinstance(proportions, torch.Tensor) or proportions.dim() != 2:
        raise ValueError("proportions must be a (C, K) tensor of per-class client shares, got "
                         f"{getattr(proportions, 'shape', type(proportions).__name__)}")
    num_classes, num_clients = proportions.shape
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) to match proportions of shape {tuple(proportions.shape)}")
    p = proportions.detach().to("cpu", torch.float64)
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(num_classes, dtype=torch.float64), atol=1e-6):
        raise ValueError("proportions must be >= 0 with every row summing to 1")
    labels = labels.cpu()
    pieces: list[list[torch.Tensor]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        n = idx.numel()
        cuts = torch.round(torch.cumsum(p[c], 0) * n).long()
        cuts[-1] = n
        start = 0
        for k in range(num_clients):
            stop = int(cuts[k])
            pieces[k].append(idx[start:stop])
            start = max(start, stop)
    return [torch.sort(torch.cat(parts)).values if parts else torch.zeros(0, dtype=torch.long) for parts in pieces]


def dirichlet_proportions(num_classes: int, num_clients: int, alpha: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``(C, K)`` float64: each row drawn from Dirichlet(α·1_K). Small α (0.1) gives each client a
    few classes; large α (100) gives everyone nearly the same mix. Reproducible from
    ``generator`` (which seeds NumPy's Dirichlet sampler)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha (the Dirichlet concentration) must be > 0, got {alpha!r}")
    for name, v in (("num_classes", num_classes), ("num_clients", num_clients)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(num_clients, float(alpha)), size=num_classes))


def split_clients(X_train: torch.Tensor, y_train: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
                  num_clients: int, alpha: float, *, generator: torch.Generator | None = None,
                  min_train: int = 10, max_tries: int = 100) -> tuple[list[ClientData], torch.Tensor]:
    """Clients with Dirichlet(α) label skew: one draw of proportions splits the training set *and*
    the test set, so each client's local test split has its training label distribution.
    Proportions are redrawn until every client has at least ``min_train`` training examples.
    Returns the clients and the ``(C, K)`` proportions used."""
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    for _ in range(max_tries):
        props = dirichlet_proportions(num_classes, num_clients, alpha, generator)
        train_parts = dirichlet_split(y_train, props)
        if min(len(t) for t in train_parts) >= min_train:
            break
    else:
        raise ValueError(f"no Dirichlet(alpha={alpha}) draw gave every one of {num_clients} clients "
                         f"{min_train} training examples in {max_tries} tries: use fewer clients or a larger alpha")
    test_parts = dirichlet_split(y_test, props)
    dev = X_train.device
    clients = [ClientData(k, X_train[tr.to(dev)], y_train[tr.to(dev)], X_test[te.to(dev)], y_test[te.to(dev)])
               for k, (tr, te) in enumerate(zip(train_parts, test_parts))]
    return clients, props


# --------------------------------------------------------------------------- the schedule

def active_depth(round: int, num_layers: int, rate: float) -> int:
    """Deep-to-shallow layer dropping: how many layers, counted from the input, still take part in
    the distillation in round ``round`` (0-based).

    All ``num_layers`` layers take part at first; the deepest ones leave at ``rate`` layers per
    round, so ``depth = num_layers - floor(rate * round)``, never below 1 (the shallowest layer
    always shares). ``rate = 0`` switches dropping off. Layers ``1..depth`` are active.
    """
    if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0:
        raise ValueError(f"rate (layers dropped per round) must be a number >= 0, got {rate!r}")
    return max(1, int(num_layers) - math.floor(rate * round))


# --------------------------------------------------------------------------- the distillation loss

def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge-distillation loss: ``T² · mean_b KL(q_b ‖ softmax(s_b / T))``.

    student_logits ``s``: ``(B, C)``; teacher_probs ``q``: ``(B, C)`` (rows sum to 1, already
    softened by the teacher's temperature; zeros allowed, with ``0 · log 0 = 0``). The ``T²``
    keeps the gradient's scale independent of ``T`` (Hinton et al., 2015). Returns a scalar of
    the logits' dtype. Used in both directions of FedD2S: client <- global heads, heads <- clients.
    """
    if not isinstance(student_logits, torch.Tensor) or student_logits.dim() != 2:
        raise ValueError(f"student_logits must be (B, C), got {getattr(student_logits, 'shape', type(student_logits).__name__)}")
    if not isinstance(teacher_probs, torch.Tensor) or teacher_probs.shape != student_logits.shape:
        raise ValueError(f"teacher_probs must have the shape of student_logits {tuple(student_logits.shape)}, "
                         f"got {getattr(teacher_probs, 'shape', type(teacher_probs).__name__)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    q = teacher_probs.to(student_logits.dtype)
    kl = torch.xlogy(q, q) - q * log_student               # xlogy: 0 * log 0 = 0
    return temperature ** 2 * kl.sum(-1).mean()


# --------------------------------------------------------------------------- models with layers

class LayeredNet(nn.Module):
    """A network of ``L`` blocks and a classifier whose block outputs are exposed.

    ``forward(x)`` returns logits ``(B, C)``; ``forward(x, features=True)`` returns
    ``(logits, [r_1, ..., r_L])`` where ``r_l: (B, feature_dims[l-1])`` is block ``l``'s output
    (spatially averaged for convolutional blocks): the intermediate representations FedD2S shares.
    """

    def __init__(self, blocks: Sequence[nn.Module], feature_dims: Sequence[int], num_classes: int,
                 pool: bool = False):
        super().__init__()
        if len(blocks) != len(feature_dims) or not blocks:
            raise ValueError(f"blocks ({len(blocks)}) and feature_dims ({len(feature_dims)}) must be non-empty and match")
        self.blocks = nn.ModuleList(blocks)
        self.feature_dims = [int(d) for d in feature_dims]
        self.classifier = nn.Linear(self.feature_dims[-1], num_classes)
        self.pool = pool
        self.num_classes = num_classes

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def _flat(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3)) if self.pool else h

    def forward(self, x: torch.Tensor, features: bool = False):
        reps = []
        h = x
        for block in self.blocks:
            h = block(h)
            if features:
                reps.append(self._flat(h))
        logits = self.classifier(self._flat(h))
        return (logits, reps) if features else logits


def mlp_net(in_features: int, widths: Sequence[int], num_classes: int) -> LayeredNet:
    """An MLP of ``len(widths)`` Linear-ReLU blocks (for flat digits, ``in_features = 64``)."""
    blocks, d = [], in_features
    for w in widths:
        blocks.append(nn.Sequential(nn.Linear(d, w), nn.ReLU()))
        d = w
    return LayeredNet(blocks, list(widths), num_classes)


def conv_net(in_channels: int, widths: Sequence[int], num_classes: int) -> LayeredNet:
    """A CNN of ``len(widths)`` blocks (3×3 conv, GroupNorm, ReLU, 2×2 max-pool); each block's
    representation is its channel-wise spatial mean. GroupNorm rather than BatchNorm: no running
    statistics to go stale between rounds."""
    blocks, c = [], in_channels
    for w in widths:
        blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.ReLU(),
                                    nn.MaxPool2d(2)))
        c = w
    return LayeredNet(blocks, list(widths), num_classes, pool=True)


def make_heads(feature_dims: Sequence[int], num_classes: int) -> nn.ModuleList:
    """The server's head models: one linear map per layer, representation -> class logits."""
    return nn.ModuleList(nn.Linear(d, num_classes) for d in feature_dims)


# --------------------------------------------------------------------------- messages and config

@dataclass
class D2SConfig:
    """FedD2S's knobs. ``rate``: layers dropped per round (:func:`active_depth`); ``temperature``
    and ``kd_weight``: the distillation's T and weight on the client; ``server_*``: how the
    server trains its heads each round (Adam, ``server_steps`` mini-batches of ``server_batch``
    from the pooled uploads, CE + ``server_kd_weight`` · KL)."""

    rate: float = 0.25
    temperature: float = 3.0
    kd_weight: float = 1.0
    server_steps: int = 10
    server_batch: int = 512
    server_lr: float = 1e-2
    server_kd_weight: float = 1.0


@dataclass
class D2SFitIns:
    """Server -> client: the round, how many layers take part, and the global heads of those
    layers (state dicts; ``None`` in the first round, before any knowledge exists)."""

    round: int
    depth: int
    heads: list[dict[str, torch.Tensor]] | None = None


@dataclass
class D2SFitRes:
    """Client -> server: for the client's training examples, the representations at the active
    layers (``features[l]: (N, d_l)``, ``l < depth``), its soft labels ``(N, C)`` at temperature
    T, and its labels ``(N,)``. No weights are sent."""

    cid: int
    num_examples: int
    features: list[torch.Tensor]
    soft_labels: torch.Tensor
    labels: torch.Tensor
    metrics: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- client and server

def _load_heads(states: list[dict[str, torch.Tensor]], model: LayeredNet) -> list[nn.Linear]:
    heads = []
    for l, s in enumerate(states):
        h = nn.Linear(model.feature_dims[l], model.num_classes).to(s["weight"].device, s["weight"].dtype)
        h.load_state_dict(s)
        h.requires_grad_(False)
        heads.append(h)
    return heads


def client_update(cohort: Cohort, params: dict[str, torch.Tensor], clients: Sequence[ClientData],
                  samplers: Sequence[EpochSampler], ins: D2SFitIns, cfg: LocalConfig, d2s: D2SConfig
                  ) -> tuple[dict[str, torch.Tensor], list[D2SFitRes]]:
    """One FedD2S client round (``NumPyClient.fit``), run for every participant at once.

    ``params``: the participants' personal parameters, stacked ``(m, ...)`` (see
    :class:`~layerwise.core.federated.Cohort`); ``clients[i]`` owns slice ``i``. Each client:

    1. Global -> local distillation: ``cfg.steps`` steps on
       ``CE(f(x), y) + kd_weight · mean_l kd_loss(f(x), softmax(g_l(r_l(x)) / T), T)`` over the
       active layers ``l <= depth``, where ``g_l`` is the (frozen) global head of layer ``l`` and
       ``r_l(x)`` the client's own layer-``l`` representation. In the first round (no heads
       yet) this is plain cross-entropy.
    2. Upload: the representations of its training data at the active layers, its soft labels
       ``softmax(f(x) / T)`` and its labels.

    Returns the new personal parameters ``(m, ...)`` and one :class:`D2SFitRes` per client.
    """
    T = d2s.temperature
    heads = _load_heads(ins.heads, cohort.base) if ins.heads else []
    if len(heads) > ins.depth:
        raise ValueError(f"the server sent {len(heads)} heads for depth {ins.depth}")

    def loss_fn(out, xb, yb):
        logits, reps = out                                    # (m, B, C), [(m, B, d_l)]
        flat = logits.flatten(0, 1)
        ce = F.cross_entropy(flat, yb.flatten(), reduction="none").view(yb.shape).mean(1)
        if not heads:
            return ce
        kd = 0.0
        for l, g in enumerate(heads):
            with torch.no_grad():
                q = F.softmax(g(reps[l]) / T, dim=-1)         # the global head's soft labels
            kd = kd + kd_loss(flat, q.flatten(0, 1), T)
        # kd averages over all m*B rows; every client has B of them, so the per-client values sum
        # to m * kd: adding kd to each of the m entries gives each client its own gradient.
        return ce + d2s.kd_weight * kd / len(heads)

    new, loss = local_train(_FeatureCohort(cohort), params, clients, samplers, cfg, loss_fn)
    results = []
    for i, c in enumerate(clients):
        with torch.no_grad():
            logits, reps = functional_call(cohort.base, {k: v[i] for k, v in new.items()}, (c.X_train,),
                                           {"features": True})
        results.append(D2SFitRes(c.cid, c.num_examples, [r.detach() for r in reps[:ins.depth]],
                                 F.softmax(logits / T, dim=-1), c.y_train.clone(), {"loss": loss}))
    return new, results


class _FeatureCohort:
    """A view of a cohort whose forward also returns the layer representations."""

    def __init__(self, cohort: Cohort):
        self.cohort = cohort

    def forward(self, params, x):
        return self.cohort.forward(params, x, features=True)


def server_update(heads: nn.ModuleList, results: Sequence[D2SFitRes], depth: int, d2s: D2SConfig,
                  generator: torch.Generator | None = None) -> float:
    """One FedD2S server round (the strategy's ``aggregate_fit``): local -> global distillation.

    Pool the participants' uploads and train the head ``g_l`` of every active layer ``l < depth``
    on ``CE(g_l(r_l), y) + server_kd_weight · kd_loss(g_l(r_l), p, T)`` (``r_l``: the uploaded
    layer-``l`` representations, ``p``: the clients' soft labels) for ``server_steps`` Adam steps
    on mini-batches of ``server_batch`` examples. The heads are independent, so one optimiser on
    the sum of their losses trains each exactly as if alone. No data beyond the uploads is used
    (data-free). Heads of dropped layers are left as they are. Returns the last loss (summed
    over the active heads).
    """
    if not results:
        raise ValueError("results is empty: no client answered")
    if not 1 <= depth <= len(heads):
        raise ValueError(f"depth must be in [1, {len(heads)}], got {depth}")
    feats = [torch.cat([r.features[l] for r in results]) for l in range(depth)]
    P = torch.cat([r.soft_labels for r in results])
    Y = torch.cat([r.labels for r in results])
    params = [p for l in range(depth) for p in heads[l].parameters()]
    opt = torch.optim.Adam(params, lr=d2s.server_lr)
    n, bs = len(Y), min(d2s.server_batch, len(Y))
    loss = torch.zeros(())
    for _ in range(d2s.server_steps):
        idx = torch.randperm(n, generator=generator)[:bs].to(Y.device)
        y, p = Y[idx], P[idx]
        loss = 0.0
        for l in range(depth):
            z = heads[l](feats[l][idx])
            loss = loss + F.cross_entropy(z, y) + d2s.server_kd_weight * kd_loss(z, p, d2s.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def run_fedd2s(make_model: Callable[[], LayeredNet], clients: Sequence[ClientData], rounds: int, cfg: LocalConfig,
               d2s: D2SConfig, *, ratio: float = 1.0, seed: int = 0, progress: bool | None = None) -> FedHistory:
    """The FedD2S simulation: personal models from a common initialisation, one set of server
    heads; each round ``t`` the server picks a ``ratio`` share of clients and sends them the heads
    of the ``active_depth(t, L, rate)`` shallowest layers (``configure_fit``); they run
    :func:`client_update`; the server runs :func:`server_update` (``aggregate_fit``). Every
    client's personal model is evaluated on its local test split after every round."""
    init = make_model()
    cohort = Cohort(init, len(clients))
    device = next(init.parameters()).device
    heads = make_heads(init.feature_dims, init.num_classes).to(device)
    samplers = [EpochSampler(c.num_examples, cfg.batch_size, client_generator(seed, k)) for k, c in enumerate(clients)]
    server_gen = torch.Generator().manual_seed(seed)
    acc = np.zeros((rounds, len(clients)))
    parts, depths = [], []
    start = time.perf_counter()
    for t in progress_bar(range(rounds), desc="FedD2S", enabled=progress):
        depth = active_depth(t, init.num_layers, d2s.rate)                         # configure_fit
        chosen = sample_participants(len(clients), ratio, server_gen)
        states = [{k: v.detach().clone() for k, v in heads[l].state_dict().items()} for l in range(depth)]
        ins = D2SFitIns(t, depth, states if t > 0 else None)
        mine = {k: v[chosen] for k, v in cohort.params.items()}
        new, results = client_update(cohort, mine, [clients[k] for k in chosen], [samplers[k] for k in chosen],
                                     ins, cfg, d2s)                                # fit, on each client
        for k, v in new.items():
            cohort.params[k][chosen] = v
        server_update(heads, results, depth, d2s, server_gen)                      # aggregate_fit
        acc[t] = client_accuracies(cohort, clients)                                # evaluate
        parts.append(chosen)
        depths.append(depth)
    return FedHistory("FedD2S", acc, parts, time.perf_counter() - start,
                      {"cohort": cohort, "heads": heads, "depths": depths})
