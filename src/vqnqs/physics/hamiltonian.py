"""Spin Hamiltonians as batched connected elements.

Spins are 0/1 integers; spin ``s_i = 0`` is ``Z_i = +1`` (up), ``s_i = 1`` is ``Z_i = -1`` (down).
For a batch of configurations ``s: (B, N)`` a Hamiltonian returns every configuration ``s'`` with
``H[s, s'] != 0`` in one vectorised call::

    configs  (B, M, N)  same dtype and device as s; slot 0 is s itself (the diagonal)
    elements (B, M)     H[s, s'] in the requested float dtype
    valid    (B, M)     False where slot m is not a connection of this s (its element is 0)

``M`` is fixed per Hamiltonian, so the result is a dense tensor that batches on any device.
The local energy of a wave function is then ``sum_m elements * valid * psi(configs_m) / psi(s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vqnqs.physics.lattice import Lattice
from vqnqs.physics.systems import SYSTEMS, foreign_setting

# Keys of ``describe()`` left out at these default values, so that the records (reference JSON, metrics,
# model info, checkpoints) of the plain models are as they were before the key existed.
DESCRIPTION_DEFAULTS = {"J2": 0.0}


def with_description_defaults(record: dict) -> dict:
    """``record`` (a description, or a dict holding one's keys) with the omitted defaults filled in."""
    return {**DESCRIPTION_DEFAULTS, **record}


@dataclass(frozen=True)
class ConnectedElements:
    configs: torch.Tensor  # (B, M, N)
    elements: torch.Tensor  # (B, M)
    valid: torch.Tensor  # (B, M) bool


def spins_to_z(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 spins -> Pauli Z eigenvalues +1/-1."""
    return 1.0 - 2.0 * s.to(dtype)


class Hamiltonian:
    """Base class: a lattice, a name, and the batched connected-element call."""

    system: str
    lattice: Lattice
    max_connections: int  # M

    @property
    def n_sites(self) -> int:
        return self.lattice.n_sites

    def connected(self, s: torch.Tensor, dtype: torch.dtype = torch.float64) -> ConnectedElements:
        raise NotImplementedError

    def diagonal(self, s: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``H[s, s]`` for a batch ``s: (B, N)`` -> ``(B,)``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Parameters that identify this Hamiltonian (for JSON outputs and tags)."""
        raise NotImplementedError


def _bond_zz(s: torch.Tensor, bonds: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sum_<ij> Z_i Z_j`` per configuration: (B, N) -> (B,)."""
    z = spins_to_z(s, dtype)
    if bonds.numel() == 0:
        return torch.zeros(s.shape[0], dtype=dtype, device=s.device)
    return (z[:, bonds[:, 0]] * z[:, bonds[:, 1]]).sum(dim=1)


class TransverseFieldIsing(Hamiltonian):
    """``H = -J sum_<ij> Z_i Z_j - Gamma sum_i X_i`` in Pauli units.

    Connections: the diagonal, then one single-spin flip per site (``M = 1 + N``), each with
    element ``-Gamma``.
    """

    system = "tfim"

    def __init__(self, lattice: Lattice, gamma: float = 1.0, coupling: float = 1.0) -> None:
        for name, value in (("gamma", gamma), ("J", coupling)):
            if not math.isfinite(value):
                raise ValueError(f"{name} = {value}: expected a finite number")
        self.lattice = lattice
        self.gamma = float(gamma)
        self.coupling = float(coupling)
        self.max_connections = 1 + lattice.n_sites

    def diagonal(self, s: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        bonds = self.lattice.bond_tensor(s.device)
        return -self.coupling * _bond_zz(s, bonds, dtype)

    def connected(self, s: torch.Tensor, dtype: torch.dtype = torch.float64) -> ConnectedElements:
        batch, n = s.shape
        flip = torch.eye(n, dtype=torch.bool, device=s.device)  # (N, N): row m flips site m
        flipped = torch.where(flip.unsqueeze(0), 1 - s.unsqueeze(1), s.unsqueeze(1))  # (B, N, N)
        configs = torch.cat([s.unsqueeze(1), flipped], dim=1)  # (B, 1 + N, N)
        off = torch.full((batch, n), -self.gamma, dtype=dtype, device=s.device)
        elements = torch.cat([self.diagonal(s, dtype).unsqueeze(1), off], dim=1)
        valid = torch.ones(batch, 1 + n, dtype=torch.bool, device=s.device)
        valid[:, 1:] = self.gamma != 0.0
        return ConnectedElements(configs, elements, valid)

    def describe(self) -> dict:
        return {"system": self.system, "gamma": self.gamma, "J": self.coupling}


class Heisenberg(Hamiltonian):
    """``H = J1 sum_<ij> S_i . S_j + J2 sum_<<ij>> S_i . S_j`` with ``S = sigma / 2`` (S.S units).

    ``<ij>`` are the nearest-neighbour bonds, ``<<ij>>`` the diagonal (next-nearest-neighbour) bonds of
    the square lattice (:attr:`~vqnqs.physics.lattice.Lattice.diagonal_bonds`); ``J1`` is ``coupling``
    and ``J2`` is ``j2`` (``j2 = 0``: the plain antiferromagnet, exactly as without the term).

    ``S_i . S_j = Z_i Z_j / 4 + (S+_i S-_j + S-_i S+_j) / 2``: the diagonal is
    ``J1/4 sum_<ij> Z Z + J2/4 sum_<<ij>> Z Z`` and each anti-aligned bond connects to the
    configuration with that pair exchanged, element ``J/2`` (``J1`` or ``J2``, the bond's).

    Marshall's sign rule (``sign_rule=True``) conjugates with ``U = prod_{i in B} Z_i``, B the second
    checkerboard sublattice; an exchange on bond ``(i, j)`` picks up ``(-1)^([i in B] + [j in B])``.
    Nearest-neighbour bonds join the sublattices (the lattice must be bipartite), so their element
    becomes ``-J1/2``; diagonal bonds join a sublattice to itself, so theirs stays ``+J2/2``. The rotation
    leaves the spectrum unchanged for every ``J2``, and at ``J2 = 0`` makes the ground state positive
    (phase zero). For ``J2 != 0`` the model is frustrated: the rotated ground state is no longer positive
    everywhere (the rule is only approximately right, for small ``J2``), so a phase is needed in general.
    ``sign_rule=None`` means on where the lattice is bipartite, for any ``J2``.

    Connections: the diagonal, then one slot per nearest-neighbour bond, then, only when ``j2 != 0``,
    one slot per diagonal bond (``M = 1 + n_bonds (+ n_diagonal_bonds)``), valid where the bond is
    anti-aligned.
    """

    system = "heisenberg"

    def __init__(self, lattice: Lattice, coupling: float = 1.0, sign_rule: bool | None = None, j2: float = 0.0) -> None:
        for name, value in (("J", coupling), ("j2", j2)):
            if not math.isfinite(value):
                raise ValueError(f"{name} = {value}: expected a finite number")
        if j2 != 0.0 and len(lattice.shape) != 2:
            raise ValueError(
                f"j2 = {j2}: the J1-J2 model here is on the square lattice; {lattice.size} is a chain (expected 'LxW')"
            )
        if sign_rule is None:
            sign_rule = lattice.is_bipartite
        if sign_rule and not lattice.is_bipartite:
            raise ValueError(
                f"sign_rule: Marshall's sign rule needs a bipartite lattice; "
                f"{lattice.size} {lattice.boundary} is not (use --no-sign-rule)"
            )
        self.lattice = lattice
        self.coupling = float(coupling)
        self.j2 = float(j2)
        self.sign_rule = bool(sign_rule)
        self.max_connections = 1 + len(self._bonds())

    def _bonds(self) -> tuple[tuple[int, int], ...]:
        """The exchange bonds, slot order: nearest neighbours, then diagonals when ``j2 != 0``."""
        return self.lattice.bonds + (self.lattice.diagonal_bonds if self.j2 != 0.0 else ())

    def _hops(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The exchange element of each bond (``(K,)``): ``J/2``, times ``-1`` across the sublattices with the
        sign rule."""
        parity = self.lattice.sublattice
        n_nn = len(self.lattice.bonds)
        values = [
            0.5
            * (self.coupling if k < n_nn else self.j2)
            * (-1.0 if self.sign_rule and parity[i] != parity[j] else 1.0)
            for k, (i, j) in enumerate(self._bonds())
        ]
        return torch.tensor(values, dtype=dtype, device=device)

    def diagonal(self, s: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        bonds = self.lattice.bond_tensor(s.device)
        energy = 0.25 * self.coupling * _bond_zz(s, bonds, dtype)
        if self.j2 != 0.0:
            energy = energy + 0.25 * self.j2 * _bond_zz(s, self.lattice.diagonal_bond_tensor(s.device), dtype)
        return energy

    def connected(self, s: torch.Tensor, dtype: torch.dtype = torch.float64) -> ConnectedElements:
        batch, n = s.shape
        bonds = torch.tensor(self._bonds(), dtype=torch.int64, device=s.device).reshape(-1, 2)  # (K, 2)
        n_bonds = bonds.shape[0]
        swap = torch.zeros(n_bonds, n, dtype=torch.bool, device=s.device)  # (K, N): bond k's two sites
        swap[torch.arange(n_bonds, device=s.device), bonds[:, 0]] = True
        swap[torch.arange(n_bonds, device=s.device), bonds[:, 1]] = True
        exchanged = torch.where(swap.unsqueeze(0), 1 - s.unsqueeze(1), s.unsqueeze(1))  # (B, K, N)
        configs = torch.cat([s.unsqueeze(1), exchanged], dim=1)  # (B, 1 + K, N)

        anti_aligned = s[:, bonds[:, 0]] != s[:, bonds[:, 1]]  # (B, K)
        hops = self._hops(dtype, s.device)  # (K,)
        off = torch.where(anti_aligned, hops, torch.zeros((), dtype=dtype, device=s.device))  # (B, K)
        elements = torch.cat([self.diagonal(s, dtype).unsqueeze(1), off], dim=1)
        valid = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=s.device), anti_aligned], dim=1)
        return ConnectedElements(configs, elements, valid)

    def describe(self) -> dict:
        """``J2`` only when nonzero, so that the records of the plain model are as they always were."""
        extra = {"J2": self.j2} if self.j2 != 0.0 else {}
        return {"system": self.system, "J": self.coupling, **extra, "sign_rule": self.sign_rule}


def build_hamiltonian(
    system: str,
    size: str,
    boundary: str = "open",
    gamma: float = 1.0,
    coupling: float = 1.0,
    sign_rule: bool | None = None,
    j2: float = 0.0,
) -> Hamiltonian:
    """The one place that turns (system, size, boundary, couplings) into a Hamiltonian."""
    if system not in SYSTEMS:
        raise ValueError(f"system {system!r}: expected one of {', '.join(SYSTEMS)}")
    if not math.isfinite(j2):
        raise ValueError(f"j2 = {j2}: expected a finite number")
    lattice = Lattice.from_size(size, boundary)
    if system == "tfim":
        if len(lattice.shape) != 1:
            raise ValueError(f"size {size!r}: the transverse-field Ising model here is a chain; expected 'N'")
        if j2 != 0.0:
            raise ValueError(f"j2 = {j2}: {foreign_setting(system, 'j2')}")
        return TransverseFieldIsing(lattice, gamma=gamma, coupling=coupling)
    return Heisenberg(lattice, coupling=coupling, sign_rule=sign_rule, j2=j2)
