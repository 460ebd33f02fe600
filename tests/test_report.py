"""save_plot: legends only where they belong, the caller's legend kept, the file written."""

import os
import warnings

import numpy as np

from jaxopt_ft import report


def test_save_plot_adds_missing_legends_only(tmp_path):
    plt = report.pyplot()
    fig, (lines, placed, image) = plt.subplots(1, 3)
    lines.plot([0, 1], [0, 1], label="a")
    placed.plot([0, 1], [1, 0], label="b")
    own = placed.legend(loc="upper left", fontsize=6)
    image.imshow(np.eye(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a legend without labelled artists would warn
        name = report.save_plot(fig, os.fspath(tmp_path), "plot.png")
    assert name == "plot.png" and (tmp_path / "plot.png").stat().st_size > 0
    assert [t.get_text() for t in lines.get_legend().get_texts()] == ["a"]
    assert lines.get_legend().get_texts()[0].get_fontsize() == 8
    assert placed.get_legend() is own and own.get_texts()[0].get_fontsize() == 6
    assert image.get_legend() is None
    assert not plt.fignum_exists(fig.number)


def test_save_plot_without_legends(tmp_path):
    plt = report.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    report.save_plot(fig, os.fspath(tmp_path), "bare.png", legend=False, dpi=50)
    assert ax.get_legend() is None
    assert (tmp_path / "bare.png").stat().st_size > 0
