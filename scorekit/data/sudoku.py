"""Sudoku: seeded generator of complete grids and puzzles, and a checker of all 27 units.

Grids are (9, 9) integer arrays with digits 1..9 (0 = blank in puzzles); batches are (B, 9, 9)
tensors, and the diffusion models see one-hot boards (B, 81, 9). Generation is pure Python
(randomised depth-first search with the most-constrained-cell heuristic); `augment` turns a few
grids into many by the validity-preserving symmetries (digit relabelling, row / column swaps
inside bands and stacks, band / stack swaps, transposition).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["sudoku_grids", "random_grid", "random_grids", "count_solutions", "make_puzzle",
           "make_puzzles", "is_valid", "is_latin", "solves", "violations", "pick_fill",
           "augment", "to_onehot", "from_onehot", "PEERS", "UNITS"]

# The 27 units (rows, columns, boxes) as lists of cell indices 0..80, and each cell's 20 peers.
UNITS = ([[9 * r + c for c in range(9)] for r in range(9)]
         + [[9 * r + c for r in range(9)] for c in range(9)]
         + [[9 * (3 * br + r) + 3 * bc + c for r in range(3) for c in range(3)]
            for br in range(3) for bc in range(3)])
PEERS = [sorted({j for u in UNITS if i in u for j in u} - {i}) for i in range(81)]
_ALL = 0x3FE  # bits 1..9


def _search(cells: list[int], rng: np.random.Generator | None, limit: int) -> tuple[int, list]:
    """Depth-first search over cell digits (0 = blank); returns (#solutions up to limit, first)."""
    masks = [_ALL] * 81
    for i, d in enumerate(cells):
        if d:
            for p in PEERS[i]:
                masks[p] &= ~(1 << d)
    for i, d in enumerate(cells):
        if d and not masks[i] >> d & 1:
            return 0, []  # the givens already clash
    cells = list(cells)
    found: list[list[int]] = []
    count = 0

    def rec() -> bool:
        nonlocal count
        best, best_n = -1, 10
        for i in range(81):
            if not cells[i]:
                n = bin(masks[i]).count("1")
                if n < best_n:
                    best, best_n = i, n
                    if n <= 1:
                        break
        if best < 0:
            count += 1
            if not found:
                found.append(list(cells))
            return count >= limit
        digits = [d for d in range(1, 10) if masks[best] >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        for d in digits:
            changed = [p for p in PEERS[best] if not cells[p] and masks[p] >> d & 1]
            cells[best] = d
            for p in changed:
                masks[p] &= ~(1 << d)
            stop = rec()
            cells[best] = 0
            for p in changed:
                masks[p] |= 1 << d
            if stop:
                return True
        return False

    rec()
    return count, (found[0] if found else [])


def random_grid(rng: np.random.Generator) -> np.ndarray:
    """A uniformly seeded random complete valid grid, (9, 9) int64 with digits 1..9."""
    _, sol = _search([0] * 81, rng, 1)
    return np.array(sol, dtype=np.int64).reshape(9, 9)


def random_grids(n: int, seed: int = 0) -> Tensor:
    """n random complete grids from `seed`: (n, 9, 9) int64."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([random_grid(rng) for _ in range(n)]))


def sudoku_grids(n: int, generator: torch.Generator | None = None, max_known: int = 64,
                 min_known: int = 0, eval_clues: tuple[int, ...] | list[int] = (30, 35, 40),
                 unique: bool = True) -> Tensor:
    """n complete grids (n, 9, 9) for `make_dataset("sudoku")`, seeded by `generator`.

    The other options are recorded with the dataset: training boards get a uniform number of
    givens in [min_known, max_known]; evaluation makes puzzles with each of `eval_clues` givens
    (`unique`: exactly one solution).
    """
    if not 0 <= max_known <= 80:
        raise ValueError(f"max_known must lie in [0, 80], got {max_known!r}")
    if not 0 <= min_known <= max_known:
        raise ValueError(f"min_known must lie in [0, max_known={max_known}], got {min_known!r}")
    if any(not 0 <= int(c) <= 81 for c in eval_clues):
        raise ValueError(f"eval_clues must lie in [0, 81], got {list(eval_clues)}")
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    return random_grids(n, seed=seed)


def count_solutions(puzzle: np.ndarray | Tensor, limit: int = 2) -> int:
    """Number of completions of a (9, 9) puzzle (0 = blank), counted up to `limit`."""
    return _search([int(d) for d in np.asarray(puzzle).reshape(81)], None, limit)[0]


def make_puzzle(grid: np.ndarray | Tensor, n_clues: int, rng: np.random.Generator,
                unique: bool = False) -> np.ndarray:
    """Blank all but `n_clues` random cells of a complete grid; (9, 9) with 0 = blank.

    `unique=True` blanks cells one at a time in random order, skipping any whose removal
    admits a second solution, so the puzzle has exactly one solution (it may keep more than
    `n_clues` clues when no further cell can go; rare above ~25 clues).
    """
    if not 0 <= n_clues <= 81:
        raise ValueError(f"n_clues must lie in [0, 81], got {n_clues}")
    flat = np.asarray(grid).reshape(81).copy()
    order = rng.permutation(81)
    if not unique:
        flat[order[n_clues:]] = 0
        return flat.reshape(9, 9)
    kept = 81
    for i in order:
        if kept <= n_clues:
            break
        d, flat[i] = flat[i], 0
        if count_solutions(flat, 2) == 1:
            kept -= 1
        else:
            flat[i] = d
    return flat.reshape(9, 9)


def make_puzzles(grids: Tensor, n_clues: int, seed: int = 0, unique: bool = False) -> Tensor:
    """A puzzle with `n_clues` clues for each grid (B, 9, 9) -> (B, 9, 9), 0 = blank."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([make_puzzle(g.numpy(), n_clues, rng, unique)
                                      for g in grids]))


def _unit_ok(grids: Tensor, units: list[list[int]]) -> Tensor:
    """(B, U) bool: unit u of grid b holds the digits 1..9 once each."""
    flat = grids.reshape(grids.shape[0], 81).long()
    idx = torch.tensor(units, device=flat.device)                       # (U, 9)
    vals = flat[:, idx]                                                 # (B, U, 9)
    onehot = torch.nn.functional.one_hot(vals.clamp(0, 9), 10)[..., 1:]  # 0 counts as missing
    return (onehot.sum(-2) == 1).all(-1)


def _units_ok(grids: Tensor, units: list[list[int]]) -> Tensor:
    return _unit_ok(grids, units).all(-1)


def violations(grids: Tensor) -> Tensor:
    """Number of the 27 units (rows, columns, boxes) that do not hold 1..9 once each;
    (B, 9, 9) -> (B,) int64 (0 exactly for a valid grid)."""
    _check_grids(grids)
    return (~_unit_ok(grids, UNITS)).sum(-1)


def is_valid(grids: Tensor) -> Tensor:
    """Every row, column AND 3x3 box holds the digits 1..9 once; (B, 9, 9) -> (B,) bool."""
    _check_grids(grids)
    return _units_ok(grids, UNITS)


def is_latin(grids: Tensor) -> Tensor:
    """Rows and columns only (a Latin square; boxes unchecked); (B, 9, 9) -> (B,) bool."""
    _check_grids(grids)
    return _units_ok(grids, UNITS[:18])


def solves(grids: Tensor, puzzles: Tensor) -> Tensor:
    """Valid in all 27 units and equal to the puzzle's givens; (B, 9, 9) x 2 -> (B,) bool."""
    _check_grids(puzzles)
    if grids.shape != puzzles.shape:
        raise ValueError(f"grids {tuple(grids.shape)} and puzzles {tuple(puzzles.shape)} differ")
    given = puzzles > 0
    return is_valid(grids) & ((grids == puzzles) | ~given).flatten(1).all(1)


def pick_fill(fills: Tensor, puzzles: Tensor) -> tuple[Tensor, Tensor]:
    """Per puzzle, the candidate fill violating the fewest units (the first among ties; one
    that changed a given ranks below all others): fills (B, k, 9, 9), puzzles (B, 9, 9) ->
    (best (B, 9, 9), solved (B, k) bool). Needs no solution: only the puzzle's rules."""
    _check_grids(puzzles)
    if fills.dim() != 4 or fills.shape[0] != puzzles.shape[0] or fills.shape[2:] != (9, 9):
        raise ValueError(f"fills must have shape (B={puzzles.shape[0]}, k, 9, 9), got "
                         f"{tuple(fills.shape)}")
    posed = puzzles[:, None].expand_as(fills)
    changed = ((fills != posed) & (posed > 0)).flatten(2).any(2)
    bad = violations(fills.flatten(0, 1)).view_as(changed)
    best = (bad + len(UNITS) * changed).argmin(1)
    return fills[torch.arange(fills.shape[0]), best], (bad == 0) & ~changed


def _check_grids(grids: Tensor) -> None:
    if grids.dim() != 3 or tuple(grids.shape[1:]) != (9, 9):
        raise ValueError(f"grids must have shape (B, 9, 9), got {tuple(grids.shape)}")


def augment(grids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Apply a random validity-preserving symmetry to each grid; (B, 9, 9) -> (B, 9, 9)."""
    b = grids.shape[0]

    def perm(n: int, size: int) -> Tensor:
        return torch.argsort(torch.rand(n, size, generator=generator), dim=1)

    def lines() -> Tensor:  # permute the 3 bands, then the 3 lines inside each band
        bands, inner = perm(b, 3), perm(b * 3, 3).reshape(b, 3, 3)
        return (3 * bands[:, :, None] + torch.gather(inner, 1, bands[:, :, None].expand(b, 3, 3))
                ).reshape(b, 9)

    rows, cols = lines(), lines()
    out = torch.gather(grids, 1, rows[:, :, None].expand(b, 9, 9))
    out = torch.gather(out, 2, cols[:, None, :].expand(b, 9, 9))
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip[:, None, None], out.transpose(1, 2), out)
    relabel = torch.cat([torch.zeros(b, 1, dtype=torch.long), perm(b, 9) + 1], dim=1)
    return torch.gather(relabel, 1, out.reshape(b, 81)).reshape(b, 9, 9)


def to_onehot(grids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 9, 9) digits 1..9 -> (B, 81, 9) one-hot boards."""
    return torch.nn.functional.one_hot(grids.reshape(grids.shape[0], 81) - 1, 9).to(dtype)


def from_onehot(x: Tensor) -> Tensor:
    """(B, 81, 9) boards (one-hot or probabilities) -> (B, 9, 9) digits by argmax."""
    return (x.argmax(-1) + 1).reshape(x.shape[0], 9, 9)
