"""Real data sets as in-memory tensors with a seeded train/test split."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Split:
    """A train/test split held as tensors: ``X_*: (N, ...)`` float32, ``y_*: (N,)`` int64."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X_test, self.y_test

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.X_train.to(device), self.y_train.to(device), self.X_test.to(device),
                     self.y_test.to(device), self.classes, self.name)

    def __repr__(self) -> str:
        return (f"Split({self.name}: train {tuple(self.X_train.shape)}, test {tuple(self.X_test.shape)}, "
                f"{self.num_classes} classes)")


def _seeded_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded permutation split into train and test indices."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_size))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))


def digits(*, test_size: float = 0.2, seed: int = 0, flat: bool = False,
           device: torch.device | str = "cpu") -> Split:
    """scikit-learn's 1,797 handwritten digits, pixels scaled to [0, 1].

    ``X: (N, 1, 8, 8)``, or ``(N, 64)`` with ``flat=True``. The split is stratified and
    reproducible from ``seed``.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    d = load_digits()
    X = (d.data.astype(np.float32) / 16.0)
    X = X if flat else X.reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    tr, te = _seeded_split(y, test_size, seed)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return Split(t(X[tr]), t(y[tr]), t(X[te]), t(y[te]), tuple(str(i) for i in range(10)), "digits")


def cifar10_available(root: str | Path = "data") -> bool:
    """True when CIFAR-10 can be had: its files are under ``root`` or torchvision can fetch them."""
    if (Path(root) / "cifar-10-batches-py" / "test_batch").exists():
        return True
    try:
        import torchvision  # noqa: F401
    except Exception:  # torchvision missing or broken beside this torch build
        return False
    return True


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    return data, labels


def cifar10(root: str | Path = "data", *, download: bool = False, limit: int | None = None,
            normalize: bool = True, device: torch.device | str = "cpu") -> Split:
    """CIFAR-10 from the standard ``cifar-10-batches-py`` files under ``root``.

    With ``download=True`` and torchvision installed, missing files are fetched through
    ``torchvision.datasets.CIFAR10`` first. ``limit`` keeps the first ``limit`` training and
    ``limit // 5`` test images. ``X: (N, 3, 32, 32)`` float32, per-channel standardised when
    ``normalize``.
    """
    base = Path(root) / "cifar-10-batches-py"
    if not (base / "test_batch").exists():
        if not download:
            raise FileNotFoundError(f"CIFAR-10 not found under {base}; pass download=True (needs torchvision)")
        try:
            import torchvision
        except Exception as e:  # pragma: no cover - depends on the machine
            raise RuntimeError("downloading CIFAR-10 needs torchvision, which could not be imported "
                               f"({e}); install it or place the files under {base}") from e
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    if limit is not None and (not isinstance(limit, int) or limit < 5):
        raise ValueError(f"limit must be an int >= 5 or None, got {limit!r}")
    parts = [_read_batch(p) for p in sorted(base.glob("data_batch_*"))]
    if not parts:
        raise FileNotFoundError(f"no data_batch_* files under {base}")
    Xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    Xte, yte = _read_batch(base / "test_batch")
    if limit is not None:
        Xtr, ytr, Xte, yte = Xtr[:limit], ytr[:limit], Xte[: limit // 5], yte[: limit // 5]

    def prep(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a).float().div_(255.0)
        if normalize:
            x = (x - torch.tensor(_CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(_CIFAR_STD).view(1, 3, 1, 1)
        return x.to(device)

    return Split(prep(Xtr), torch.from_numpy(ytr).to(device), prep(Xte), torch.from_numpy(yte).to(device),
                 CIFAR10_CLASSES, "cifar10")


def write_fake_cifar10(root: str | Path, n_train: int = 50, n_test: int = 10, seed: int = 0) -> Path:
    """Write a tiny random data set in CIFAR-10's exact on-disk format (for tests)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def dump(name: str, n: int) -> None:
        d = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, size=n).tolist(), b"batch_label": name.encode()}
        with open(base / name, "wb") as f:
            pickle.dump(d, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", n_train // 5)
    dump("test_batch", n_test)
    return base
