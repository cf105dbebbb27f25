"""The book's pages agree with its records: every stored comparison table equals what the current records give, and
every chapter's printed result of its own head (its run, its seeds, its "What to notice") is the recorded one.
A chapter re-executed out of order, a record edited by hand, or a seed run added after a page was executed fails
here, naming the notebook and the cell."""

import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from seglab.book import comparison, results, stats
from seglab.book.export import notebooks

ROOT = Path(__file__).resolve().parents[2]
BOOK_RESULTS = ROOT / "book" / "results"


@pytest.fixture
def book_records(monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(BOOK_RESULTS))


def html_outputs(cell):
    return [o["data"]["text/html"] for o in cell.get("outputs", []) if "text/html" in o.get("data", {})]


def stream_text(nb):
    return "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")


def markdown_outputs(nb):
    return "\n".join(o["data"]["text/markdown"] for c in nb.cells for o in c.get("outputs", [])
                     if "text/markdown" in o.get("data", {}))


COMPARE = re.compile(r"chapter\.compare\(MODE, up_to=(\d+)\)")


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.name)
def test_stored_comparison_tables_equal_the_records(notebook, book_records):
    nb = nbformat.read(notebook, as_version=4)
    for index, cell in enumerate(nb.cells):
        found = COMPARE.search(cell.source) if cell.cell_type == "code" else None
        if not found:
            continue
        with pd.option_context("display.max_columns", 20, "display.width", 80):
            expected = comparison.frame("quick", "book", up_to=int(found.group(1)), latency=False)._repr_html_()
        stored = html_outputs(cell)
        assert stored, f"{notebook.name} cell {index} compares heads but stored no table"
        assert stored[0] == expected, (f"{notebook.name} cell {index}: the stored comparison table differs from what "
                                       "book/results gives now (a missing row or a stale value); re-execute the "
                                       "chapters in order with python -m seglab.book.execute")


def chapter_records():
    for record in results.load_all("quick", folder=BOOK_RESULTS, split="book"):
        if 0 < record.get("chapter", 0) < 90:
            yield record


def notebook_of(chapter):
    return next(p for p in notebooks() if p.name.startswith(f"{chapter:02d}_"))


@pytest.mark.parametrize("record", list(chapter_records()), ids=lambda r: r["head"])
def test_each_chapter_prints_its_recorded_result(record, book_records):
    nb = nbformat.read(notebook_of(record["chapter"]), as_version=4)
    head, text = record["head"], stream_text(nb)
    printed = re.findall(rf"^{re.escape(head)}: mIoU ([\d.]+)%", text, flags=re.M)
    assert printed, f"chapter {record['chapter']} prints no result line for {head}"
    assert float(printed[0]) == round(100 * record["miou"], 1), (
        f"chapter {record['chapter']} printed {head} at {printed[0]}% but its record holds "
        f"{100 * record['miou']:.2f}%: re-execute the chapter")
    summary = stats.summary(stats.runs("quick", "book")[head])
    over = re.findall(rf"^{re.escape(head)} over (\d+) seeds: mIoU ([\d.]+) ± ([\d.]+)%", text, flags=re.M)
    assert over, f"chapter {record['chapter']} does not print {head}'s mean over seeds (chapter.repeat)"
    assert (int(over[-1][0]), float(over[-1][1]), float(over[-1][2])) == (
        summary["n"], round(summary["mean"], 1), round(summary["sd"], 1)), (
        f"chapter {record['chapter']}: {head}'s printed mean over seeds {over[-1]} is not what its records give "
        f"({summary['n']} seeds, {summary['mean']:.2f} ± {summary['sd']:.2f})")
    notice = markdown_outputs(nb)
    reached = re.findall(rf"- {re.escape(head)} reaches \*\*([\d.]+)% mIoU\*\*", notice)
    assert reached and float(reached[0]) == round(100 * record["miou"], 1), (
        f"chapter {record['chapter']}: its 'What to notice' does not state {head}'s recorded mIoU")


def test_every_head_has_three_seeds_of_one_protocol(book_records):
    every = stats.runs("quick", "book")  # raises on a seed record of another protocol
    heads = [r["head"] for r in chapter_records()]
    short = {h: len(every[h]) for h in heads if len(every[h]) < 3}
    assert not short, f"heads with fewer than 3 seeds: {short} (python -m seglab.book.seeds --all)"
