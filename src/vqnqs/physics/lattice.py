"""Lattices: open or periodic chains and L x W square lattices.

Sites are numbered row-major: site ``(row, col)`` of an ``L x W`` lattice is ``row * W + col``;
a chain of N sites is the ``1 x N`` case with its own size string ``"N"``.
A configuration of spins is a vector ``s`` of length ``n_sites`` in this order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch

BOUNDARIES = ("open", "periodic")
_SIZE_PATTERN = re.compile(r"^(\d+)(?:x(\d+))?$")


def parse_size(size: str) -> tuple[int, ...]:
    """``"32"`` -> ``(32,)``, ``"6x6"`` -> ``(6, 6)``; anything else raises ``ValueError``."""
    match = _SIZE_PATTERN.match(str(size).strip())
    if match is None:
        raise ValueError(f"size {size!r}: expected a chain length 'N' or a square lattice 'LxW' (e.g. 32 or 6x6)")
    dims = tuple(int(d) for d in match.groups() if d is not None)
    if any(d < 1 for d in dims):
        raise ValueError(f"size {size!r}: every dimension must be a positive integer")
    if len(dims) == 1 and dims[0] < 2:
        raise ValueError(f"size {size!r}: a chain needs at least 2 sites")
    return dims


def format_size(shape: tuple[int, ...]) -> str:
    """Inverse of :func:`parse_size`."""
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class Lattice:
    """A chain ``(N,)`` or a square lattice ``(L, W)`` with open or periodic boundaries."""

    shape: tuple[int, ...]
    boundary: str = "open"

    def __post_init__(self) -> None:
        if len(self.shape) not in (1, 2) or any(d < 1 for d in self.shape):
            raise ValueError(f"lattice shape {self.shape}: expected (N,) or (L, W) with positive entries")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary {self.boundary!r}: expected one of {BOUNDARIES}")

    @classmethod
    def from_size(cls, size: str, boundary: str = "open") -> Lattice:
        return cls(parse_size(size), boundary)

    @property
    def size(self) -> str:
        return format_size(self.shape)

    @property
    def n_sites(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def periodic(self) -> bool:
        return self.boundary == "periodic"

    def _coords(self, site: int) -> tuple[int, int]:
        rows, cols = self._grid
        return divmod(site, cols)

    @property
    def _grid(self) -> tuple[int, int]:
        return (1, self.shape[0]) if len(self.shape) == 1 else (self.shape[0], self.shape[1])

    @cached_property
    def bonds(self) -> tuple[tuple[int, int], ...]:
        """Nearest-neighbour bonds ``(i, j)`` with ``i < j``, each listed once.

        Periodic wrap-around bonds are added only along dimensions longer than 2, where they are
        distinct from the open bonds (a periodic 2-site ring has a single bond, not a double one).
        """
        rows, cols = self._grid
        found: set[tuple[int, int]] = set()
        for r in range(rows):
            for c in range(cols):
                here = r * cols + c
                for dr, dc, extent, pos in ((0, 1, cols, c), (1, 0, rows, r)):
                    if extent == 1:
                        continue
                    if pos + 1 < extent:
                        there = (r + dr) * cols + (c + dc)
                    elif self.periodic and extent > 2:
                        there = ((r + dr) % rows) * cols + (c + dc) % cols
                    else:
                        continue
                    found.add((min(here, there), max(here, there)))
        return tuple(sorted(found))

    @cached_property
    def diagonal_bonds(self) -> tuple[tuple[int, int], ...]:
        """Next-nearest-neighbour (diagonal) bonds ``(i, j)`` with ``i < j``, each listed once.

        Site ``(r, c)`` is joined to ``(r + 1, c + 1)`` and ``(r + 1, c - 1)``. As for :attr:`bonds`, a
        periodic dimension wraps around only when it is longer than 2: along a dimension of length 2 the
        wrapped neighbour is the open one, so a bond is never doubled (a 2 x W periodic lattice has the
        diagonals of a 2-row strip, periodic along W only). A chain has none.
        """
        if len(self.shape) == 1:
            return ()
        rows, cols = self._grid

        def step(pos: int, delta: int, extent: int) -> int | None:
            moved = pos + delta
            if 0 <= moved < extent:
                return moved
            return moved % extent if self.periodic and extent > 2 else None

        found: set[tuple[int, int]] = set()
        for r in range(rows):
            for c in range(cols):
                for dc in (1, -1):
                    r2, c2 = step(r, 1, rows), step(c, dc, cols)
                    if r2 is None or c2 is None:
                        continue
                    here, there = r * cols + c, r2 * cols + c2
                    found.add((min(here, there), max(here, there)))
        return tuple(sorted(found))

    def bond_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bonds as a ``(n_bonds, 2)`` int64 tensor."""
        return torch.tensor(self.bonds, dtype=torch.int64, device=device).reshape(-1, 2)

    def diagonal_bond_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Diagonal bonds as a ``(n_diagonal_bonds, 2)`` int64 tensor."""
        return torch.tensor(self.diagonal_bonds, dtype=torch.int64, device=device).reshape(-1, 2)

    @cached_property
    def sublattice(self) -> tuple[int, ...]:
        """Checkerboard parity ``(row + col) % 2`` of every site."""
        return tuple(sum(self._coords(i)) % 2 for i in range(self.n_sites))

    @property
    def is_bipartite(self) -> bool:
        """True when every bond joins the two checkerboard sublattices (odd periodic rings are not)."""
        parity = self.sublattice
        return all(parity[i] != parity[j] for i, j in self.bonds)
