"""``mf``, ``sasrec`` and ``din``: small torch models over ids and genres."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recicl.evaluate.classical import genres_by_item

if TYPE_CHECKING:
    import torch
    from torch import nn

from recicl.evaluate.baselines.common import (
    _demo_columns,
    _flat,
    _labels,
    _one_thread,
    _row_of,
    _strings,
)

#: Token kinds added to an item's embedding in a behaviour sequence (0 = padding).
DISLIKED, LIKED, HISTORY = 1, 2, 3


@dataclass(frozen=True)
class ItemSpace:
    """Embedding rows of items (row 0: unknown / padding, a zero vector) and their genres.

    Built from the catalog plus every item of the training rows, so a catalog item that first
    appears after the training periods still has a row (its genres are known; its id embedding
    is zeroed after fitting because no event fitted it)."""

    ids: pd.Index
    genres: np.ndarray  # [rows, max genres] genre indices, 0 = none
    genre_count: int

    @classmethod
    def build(cls, train: pa.Table, catalog: pa.Table) -> ItemSpace:
        genre_lists = genres_by_item(catalog)
        _, demo_items, _ = _demo_columns(train)
        _, history_items = _flat(train["history"])
        seen = np.concatenate(
            [_strings(train["item_id"]), demo_items, _strings(history_items)]
        ).astype(str)
        ids = pd.Index(sorted(set(genre_lists) | set(seen.tolist())), dtype=object)
        names = sorted({g for values in genre_lists.values() for g in values})
        genre_index = {g: i + 1 for i, g in enumerate(names)}
        width = max([len(v) for v in genre_lists.values()] + [1])
        genres = np.zeros((len(ids) + 1, width), np.int64)
        for row, item in enumerate(ids, start=1):
            values = [genre_index[g] for g in genre_lists.get(item, [])]
            genres[row, : len(values)] = values
        return cls(ids, genres, len(names))

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Embedding row of each item id (0 for an item this space does not know)."""
        return self.ids.get_indexer(pd.Index(items, dtype=object)) + 1


def _right_aligned(lengths: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """[rows, width] matrix of each row's newest ``width`` values, newest in the last column,
    zero-padded on the left (values must be > 0 to tell them from padding)."""
    out = np.zeros((len(lengths), width), np.int64)
    if width == 0 or not len(values):
        return out
    rows = _row_of(lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(values)) - starts[rows]  # 0 = oldest
    column = width - (lengths[rows] - position)
    keep = column >= 0
    out[rows[keep], column[keep]] = values[keep]
    return out


@dataclass(frozen=True)
class Encoded:
    """Integer tensors of a sample table for the sequence models."""

    target: np.ndarray  # [n] item rows
    demo_items: np.ndarray  # [n, demo width] item rows, newest last, 0 = padding
    demo_kinds: np.ndarray  # [n, demo width] DISLIKED / LIKED, 0 = padding
    history_items: np.ndarray  # [n, history width]


def encode(samples: pa.Table, space: ItemSpace, demo_width: int, history_width: int) -> Encoded:
    """Item rows of each sample's target, demos and history (the row's own events only)."""
    lengths, demo_items, demo_labels = _demo_columns(samples)
    history_lengths, history = _flat(samples["history"])
    demo_rows = space.rows(demo_items)
    # a demo whose item the space does not know keeps its label token (row 0 = zero item vector)
    kinds = np.where(demo_labels > 0, LIKED, DISLIKED)
    history_rows = space.rows(_strings(history))
    known_history = history_rows > 0  # an unknown liked item carries nothing: dropped
    history_lengths = np.bincount(
        _row_of(history_lengths)[known_history], minlength=len(history_lengths)
    )
    return Encoded(
        target=space.rows(_strings(samples["item_id"])),
        # +1 so that row 0 (unknown item) survives the padding test; shifted back below
        demo_items=np.maximum(_right_aligned(lengths, demo_rows + 1, demo_width) - 1, 0),
        demo_kinds=_right_aligned(lengths, kinds, demo_width),
        history_items=_right_aligned(history_lengths, history_rows[known_history], history_width),
    )


def _batches(count: int, size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    import torch

    order = torch.arange(count) if generator is None else torch.randperm(count, generator=generator)
    yield from order.split(size)


def _fit_torch(
    model: nn.Module,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    seed: int,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    penalty: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> None:
    """Adam on binary cross-entropy, seeded shuffles: the same seed gives the same weights."""
    import torch

    tensors = {key: torch.from_numpy(value) for key, value in inputs.items()}
    target = torch.from_numpy(labels.astype(np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        for index in _batches(len(target), batch_size, generator):
            batch = {key: value[index] for key, value in tensors.items()}
            loss = loss_fn(model(**batch), target[index])
            if penalty is not None:
                loss = loss + penalty(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def _predict(model: nn.Module, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    import torch

    tensors = {key: torch.from_numpy(value) for key, value in inputs.items()}
    count = len(next(iter(tensors.values()))) if tensors else 0
    out = []
    with torch.no_grad():
        for index in _batches(count, batch_size, None):
            logits = model(**{key: value[index] for key, value in tensors.items()})
            out.append(torch.sigmoid(logits.double()).numpy())
    return np.concatenate(out) if out else np.zeros(0)


# -- mf --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MFSettings:
    """Small on purpose: ~60k training rows, ~600 users, ~9k items on the bundled MovieLens."""

    dim: int = 16
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 1024
    l2: float = 0.1  # on the vectors of each batch's users and items (chosen on D0-D4 -> D5)


def _mf_module(users: int, items: int, dim: int) -> nn.Module:
    import torch
    from torch import nn

    class MF(nn.Module):
        """sigmoid(b + b_u + b_i + <p_u, q_i>); row 0 of each table is the unseen id (zero)."""

        def __init__(self) -> None:
            super().__init__()
            self.user = nn.Embedding(users + 1, dim, padding_idx=0)
            self.item = nn.Embedding(items + 1, dim, padding_idx=0)
            self.user_bias = nn.Embedding(users + 1, 1, padding_idx=0)
            self.item_bias = nn.Embedding(items + 1, 1, padding_idx=0)
            self.bias = nn.Parameter(torch.zeros(()))
            for table in (self.user, self.item):
                nn.init.normal_(table.weight, std=0.1)
                with torch.no_grad():
                    table.weight[0].zero_()
            for table in (self.user_bias, self.item_bias):
                nn.init.zeros_(table.weight)

        def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
            dot = (self.user(user) * self.item(item)).sum(-1)
            return (
                self.bias + self.user_bias(user).squeeze(-1) + self.item_bias(item).squeeze(-1)
            ) + dot

    return MF()


@dataclass
class MatrixFactorization:
    """Fitted user and item vectors (row 0: unseen, zero) over the training rows' ids."""

    users: pd.Index
    items: pd.Index
    module: Any  # the torch module

    def _inputs(self, samples: pa.Table) -> dict[str, np.ndarray]:
        return {
            "user": self.users.get_indexer(pd.Index(_strings(samples["user_id"]))) + 1,
            "item": self.items.get_indexer(pd.Index(_strings(samples["item_id"]))) + 1,
        }

    def score(self, samples: pa.Table, catalog: pa.Table) -> np.ndarray:
        with _one_thread():
            return _predict(self.module, self._inputs(samples))

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        """(item ids, [items, dim] fitted vectors) of every item seen in the training rows."""
        return list(self.items), self.module.item.weight.detach().numpy()[1:].copy()

    def user_vectors(self) -> tuple[list[str], np.ndarray]:
        """(user ids, [users, dim] fitted vectors) of every user seen in the training rows."""
        return list(self.users), self.module.user.weight.detach().numpy()[1:].copy()


def fit_mf(
    train: pa.Table, *, seed: int, settings: MFSettings | None = None
) -> MatrixFactorization:
    """``mf`` with explicit sizes (:func:`fit_baseline` uses the defaults)."""
    import torch

    s = settings or MFSettings()
    users = pd.Index(sorted(set(_strings(train["user_id"]).tolist())), dtype=object)
    items = pd.Index(sorted(set(_strings(train["item_id"]).tolist())), dtype=object)
    with _one_thread():
        torch.manual_seed(seed)
        module: Any = _mf_module(len(users), len(items), s.dim)  # its tables, not nn.Module's
        fitted = MatrixFactorization(users, items, module)

        def l2(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            vectors = module.user(batch["user"]).pow(2).sum(-1)
            return s.l2 * (vectors + module.item(batch["item"]).pow(2).sum(-1)).mean()

        _fit_torch(
            module,
            fitted._inputs(train),
            _labels(train),
            seed=seed,
            epochs=s.epochs,
            lr=s.lr,
            batch_size=s.batch_size,
            penalty=l2,
        )
    return fitted


# -- sasrec and din --------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSettings:
    """Sizes of the two sequence models (small: they fit in seconds on one core)."""

    dim: int = 32
    blocks: int = 2  # sasrec
    heads: int = 2  # sasrec
    dropout: float = 0.2
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 0.0


def _item_encoder(space: ItemSpace, dim: int) -> nn.Module:
    """An item's vector: its id embedding plus the mean embedding of its catalog genres."""
    import torch
    from torch import nn

    class Items(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ids = nn.Embedding(len(space.ids) + 1, dim, padding_idx=0)
            self.genre = nn.Embedding(space.genre_count + 1, dim, padding_idx=0)
            self.bias = nn.Embedding(len(space.ids) + 1, 1, padding_idx=0)
            nn.init.normal_(self.ids.weight, std=0.05)
            nn.init.normal_(self.genre.weight, std=0.05)
            nn.init.zeros_(self.bias.weight)
            with torch.no_grad():
                self.ids.weight[0].zero_()
                self.genre.weight[0].zero_()
            genres = torch.from_numpy(space.genres)
            self.genres: torch.Tensor
            self.genre_count: torch.Tensor
            self.register_buffer("genres", genres)
            self.register_buffer("genre_count", (genres > 0).sum(-1, keepdim=True).clamp(min=1))

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            genres = self.genre(self.genres[rows]).sum(-2) / self.genre_count[rows]
            return self.ids(rows) + genres

        def forget(self, seen: np.ndarray) -> None:
            """Zero the id vectors and biases no training event fitted (never-seen items)."""
            unseen = torch.from_numpy(~seen)
            with torch.no_grad():
                self.ids.weight[unseen] = 0.0
                self.bias.weight[unseen] = 0.0

    return Items()


def _sasrec_module(space: ItemSpace, width: int, s: SequenceSettings) -> nn.Module:
    import torch
    from torch import nn

    class Block(nn.Module):
        """Pre-norm causal self-attention + point-wise feed-forward, with residuals."""

        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(s.dim), nn.LayerNorm(s.dim)
            self.qkv, self.out = nn.Linear(s.dim, 3 * s.dim), nn.Linear(s.dim, s.dim)
            self.ff = nn.Sequential(
                nn.Linear(s.dim, s.dim), nn.ReLU(), nn.Dropout(s.dropout), nn.Linear(s.dim, s.dim)
            )
            self.drop = nn.Dropout(s.dropout)

        def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
            batch, length, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
            heads = [
                t.view(batch, length, s.heads, s.dim // s.heads).transpose(1, 2) for t in (q, k, v)
            ]
            weights = heads[0] @ heads[1].transpose(-1, -2) / (s.dim // s.heads) ** 0.5
            # a large negative, not -inf: a padding query then attends to itself, never NaN
            weights = weights.masked_fill(~allowed[:, None], -1e9).softmax(-1)
            mixed = (self.drop(weights) @ heads[2]).transpose(1, 2).reshape(batch, length, s.dim)
            x = x + self.drop(self.out(mixed))
            return x + self.drop(self.ff(self.norm2(x)))

    class SASRec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items: Any = _item_encoder(space, s.dim)
            self.kinds = nn.Embedding(3, s.dim, padding_idx=0)
            self.positions = nn.Embedding(max(width, 1), s.dim)
            self.blocks = nn.ModuleList([Block() for _ in range(s.blocks)])
            self.norm = nn.LayerNorm(s.dim)
            self.head = nn.Linear(s.dim, 1)
            self.drop = nn.Dropout(s.dropout)
            causal = torch.ones(max(width, 1), max(width, 1), dtype=torch.bool).tril()
            self.causal: torch.Tensor
            self.register_buffer("causal", causal)

        def forward(
            self, target: torch.Tensor, demo_items: torch.Tensor, demo_kinds: torch.Tensor
        ) -> torch.Tensor:
            present = demo_kinds > 0
            x = self.items(demo_items) + self.kinds(demo_kinds) + self.positions.weight
            x = self.drop(x * present[..., None])
            eye = torch.eye(x.shape[1], dtype=torch.bool)
            allowed = (self.causal & present[:, None, :]) | eye
            for block in self.blocks:
                x = block(x, allowed)
            newest = self.norm(x[:, -1]) * present[:, -1:]  # zero for a row without demos
            item = self.items(target)
            return (
                (newest * item).sum(-1)
                + self.head(newest).squeeze(-1)
                + self.items.bias(target).squeeze(-1)
            )

    return SASRec()


def _din_module(space: ItemSpace, s: SequenceSettings) -> nn.Module:
    import torch
    from torch import nn

    class DIN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items: Any = _item_encoder(space, s.dim)
            self.kinds = nn.Embedding(4, s.dim, padding_idx=0)
            self.attention = nn.Sequential(nn.Linear(4 * s.dim, 32), nn.PReLU(), nn.Linear(32, 1))
            self.mlp = nn.Sequential(
                nn.Linear(3 * s.dim, 64),
                nn.PReLU(),
                nn.Dropout(s.dropout),
                nn.Linear(64, 32),
                nn.PReLU(),
                nn.Linear(32, 1),
            )

        def forward(
            self,
            target: torch.Tensor,
            demo_items: torch.Tensor,
            demo_kinds: torch.Tensor,
            history_items: torch.Tensor,
        ) -> torch.Tensor:
            history_kinds = torch.where(history_items > 0, HISTORY, 0)
            items = torch.cat([history_items, demo_items], dim=1)
            kinds = torch.cat([history_kinds, demo_kinds], dim=1)
            present = (kinds > 0).unsqueeze(-1)
            behaviours = (self.items(items) + self.kinds(kinds)) * present
            query = self.items(target)
            expanded = query.unsqueeze(1).expand_as(behaviours)
            pairs = torch.cat(
                [behaviours, expanded, behaviours - expanded, behaviours * expanded], dim=-1
            )
            # DIN's activation unit: unnormalised weights, so the pooled interest also says how
            # much relevant behaviour there is
            weights = self.attention(pairs) * present
            interest = (weights * behaviours).sum(1)
            logit = self.mlp(torch.cat([interest, query, interest * query], dim=-1)).squeeze(-1)
            return logit + self.items.bias(target).squeeze(-1)

    return DIN()


@dataclass
class SequenceModel:
    """A fitted SASRec or DIN: the item space and widths frozen at fit time, and the module."""

    kind: str
    space: ItemSpace
    demo_width: int
    history_width: int
    module: Any  # the torch module

    def inputs(self, samples: pa.Table) -> dict[str, np.ndarray]:
        encoded = encode(samples, self.space, self.demo_width, self.history_width)
        inputs = {
            "target": encoded.target,
            "demo_items": encoded.demo_items,
            "demo_kinds": encoded.demo_kinds,
        }
        if self.kind == "din":
            inputs["history_items"] = encoded.history_items
        return inputs

    def score(self, samples: pa.Table, catalog: pa.Table) -> np.ndarray:
        with _one_thread():
            return _predict(self.module, self.inputs(samples))


def fit_sequence(
    kind: str,
    train: pa.Table,
    catalog: pa.Table,
    *,
    seed: int,
    settings: SequenceSettings | None = None,
) -> SequenceModel:
    """``sasrec`` or ``din`` with explicit sizes (:func:`fit_baseline` uses the defaults)."""
    import torch

    s = settings or SequenceSettings()
    space = ItemSpace.build(train, catalog)
    demo_lengths, _ = _flat(train["demos"])
    history_lengths, _ = _flat(train["history"])
    demo_width = max(int(demo_lengths.max(initial=0)), 1)
    history_width = max(int(history_lengths.max(initial=0)), 1)
    with _one_thread():
        torch.manual_seed(seed)
        module: Any = (  # the model's own attributes (items.forget), not nn.Module's
            _sasrec_module(space, demo_width, s) if kind == "sasrec" else _din_module(space, s)
        )
        fitted = SequenceModel(kind, space, demo_width, history_width, module)
        inputs = fitted.inputs(train)
        _fit_torch(
            module,
            inputs,
            _labels(train),
            seed=seed,
            epochs=s.epochs,
            lr=s.lr,
            batch_size=s.batch_size,
            weight_decay=s.weight_decay,
        )
        seen = np.zeros(len(space.ids) + 1, bool)
        for key in ("target", "demo_items", "history_items"):
            if key in inputs:
                seen[inputs[key].ravel()] = True
        seen[0] = False
        module.items.forget(seen)
    return fitted
