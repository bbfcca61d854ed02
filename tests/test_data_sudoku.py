"""Sudoku data: seeded generator, puzzles, symmetries and a checker of all 27 units."""

import numpy as np
import pytest
import torch

from scorekit.data import make_dataset
from scorekit.data.sudoku import (
    augment,
    count_solutions,
    from_onehot,
    is_latin,
    is_valid,
    make_puzzle,
    make_puzzles,
    pick_fill,
    random_grids,
    solves,
    to_onehot,
    violations,
)

# A published valid grid.
VALID = torch.tensor([[5, 3, 4, 6, 7, 8, 9, 1, 2], [6, 7, 2, 1, 9, 5, 3, 4, 8],
                      [1, 9, 8, 3, 4, 2, 5, 6, 7], [8, 5, 9, 7, 6, 1, 4, 2, 3],
                      [4, 2, 6, 8, 5, 3, 7, 9, 1], [7, 1, 3, 9, 2, 4, 8, 5, 6],
                      [9, 6, 1, 5, 3, 7, 2, 8, 4], [2, 8, 7, 4, 1, 9, 6, 3, 5],
                      [3, 4, 5, 2, 8, 6, 1, 7, 9]])


def test_checker_known_valid_grid():
    assert is_valid(VALID[None]).item() and is_latin(VALID[None]).item()


def test_checker_rejects_swap_in_a_row():
    bad = VALID.clone()
    bad[0, 0], bad[0, 1] = bad[0, 1].item(), bad[0, 0].item()
    assert not is_valid(bad[None]).item()


def test_checker_rejects_latin_square_with_bad_boxes():
    """Cyclic shifts: every row and column is a permutation (rows and columns valid), but the
    first box holds 1, 2, 3 three times: a checker that skips boxes accepts it, ours must not."""
    cyclic = torch.tensor([[(r + c) % 9 + 1 for c in range(9)] for r in range(9)])[None]
    assert is_latin(cyclic).item()
    assert not is_valid(cyclic).item()


def test_solves_requires_the_givens():
    puzzle = VALID.clone()[None]
    puzzle[0, 1:, :] = 0
    other = augment(VALID[None].clone(), torch.Generator().manual_seed(0))
    assert solves(VALID[None], puzzle).item()
    assert is_valid(other).item() and not solves(other, puzzle).item()


def test_violations_and_pick_fill():
    """Unit counts: a valid grid 0; two cells of row 0 swapped inside a box break their two
    columns (2); the cyclic Latin square breaks all 9 boxes. pick_fill keeps the fill with the
    fewest, never one that changed a given, and marks which fills solve."""
    swapped = VALID.clone()
    swapped[0, 0], swapped[0, 1] = swapped[0, 1].item(), swapped[0, 0].item()
    cyclic = torch.tensor([[(r + c) % 9 + 1 for c in range(9)] for r in range(9)])
    assert violations(torch.stack([VALID, swapped, cyclic])).tolist() == [0, 2, 9]
    puzzle = VALID.clone()
    puzzle[3:] = 0   # givens: the first three rows
    other = augment(VALID[None].clone(), torch.Generator().manual_seed(0))[0]
    assert is_valid(other[None]).item() and not solves(other[None], puzzle[None]).item()
    broken = VALID.clone()
    broken[8, 7], broken[8, 8] = broken[8, 8].item(), broken[8, 7].item()   # blanks only
    fills = torch.stack([torch.stack([other, cyclic, broken, VALID]),
                         torch.stack([other, cyclic, broken, broken])])
    best, solved = pick_fill(fills, torch.stack([puzzle, puzzle]))
    assert torch.equal(best[0], VALID) and torch.equal(best[1], broken)
    assert solved.tolist() == [[False, False, False, True], [False] * 4]
    with pytest.raises(ValueError, match="fills"):
        pick_fill(fills[0], puzzle[None])


def test_generator_seeded_and_valid():
    a, b = random_grids(20, seed=3), random_grids(20, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, random_grids(20, seed=4))
    assert is_valid(a).all()
    assert len({tuple(g.flatten().tolist()) for g in a}) == 20


def test_augment_preserves_validity_and_mixes():
    grids = random_grids(8, seed=0).repeat(16, 1, 1)
    out = augment(grids, torch.Generator().manual_seed(1))
    assert is_valid(out).all()
    assert len({tuple(g.flatten().tolist()) for g in out}) == len(out)


def test_puzzles_have_the_clues_and_a_unique_solution():
    grids = random_grids(6, seed=5)
    puz = make_puzzles(grids, 30, seed=0, unique=True)
    assert ((puz > 0).flatten(1).sum(1) == 30).all()
    assert all(count_solutions(p) == 1 for p in puz)
    assert ((puz == grids) | (puz == 0)).all()
    loose = make_puzzle(grids[0].numpy(), 20, np.random.default_rng(0))
    assert (loose > 0).sum() == 20 and count_solutions(loose, limit=5) > 1
    with pytest.raises(ValueError, match="n_clues must lie in"):
        make_puzzle(grids[0].numpy(), 90, np.random.default_rng(0))


def test_onehot_round_trip_and_dataset():
    grids = random_grids(3, seed=1)
    x = to_onehot(grids)
    assert x.shape == (3, 81, 9) and torch.equal(from_onehot(x), grids)
    data = make_dataset("sudoku", n_train=5, n_test=2, seed=0, eval_clues=[30])
    assert data.train.shape == (5, 9, 9) and data.test.shape == (2, 9, 9)
    assert data.sample_shape == (81, 9) and data.kind == "sudoku" and is_valid(data.train).all()
    with pytest.raises(ValueError, match="max_known"):
        make_dataset("sudoku", n_train=2, n_test=1, max_known=90)
    with pytest.raises(ValueError, match="min_known"):
        make_dataset("sudoku", n_train=2, n_test=1, min_known=50, max_known=40)
    with pytest.raises(ValueError, match="shape"):
        is_valid(torch.zeros(9, 9, dtype=torch.long))
