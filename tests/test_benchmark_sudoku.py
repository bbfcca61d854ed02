"""The Sudoku benchmark's report: rows with and without candidate fills make one table and plot."""

from benchmarks.sudoku import MAIN, _markdown, _plot


def _row(clues, dilation, candidates, solved):
    return {"clues": clues, "steps": 50, "time_dilation": dilation, "time_dilation_start": None,
            "candidates": candidates, "nfe": 50 * dilation * candidates,
            "solved_fraction": solved, "single_fill_solved": solved / 2,
            "rows_cols_only_fraction": solved, "blank_cell_accuracy": 0.9, "sample_s": 1.0}


def test_report_table_and_plot(tmp_path):
    rows = [_row(30, 8, 1, 0.5), _row(30, 32, 1, 0.6), _row(30, 8, 4, 0.8), _row(40, 8, 1, 0.9)]
    payload = {"env": {"device": "cpu", "threads": 1, "commit": "abc", "torch": "2"},
               "train_time_s": 60.0, "train_steps": 10, "batch_size": 4, "budget_min": 1,
               "n_puzzles": 8, "rows": rows}
    md = _markdown(payload)
    assert "| candidates | nfe | solved_fraction | single_fill_solved |" in md
    assert md.count("\n| 30 |") == 3 and "| 4 | 1600 |" in md
    # Pooled over 30+ clues: only settings run at every such count (dilation 8 at 30 and 40).
    pooled = md[md.index("pooled"):]
    assert "dilation 8 (400 NFE): 0.7000" in pooled and "dilation 32" not in pooled
    _plot(rows, MAIN, tmp_path / "sudoku.png")
    assert (tmp_path / "sudoku.png").stat().st_size > 0
