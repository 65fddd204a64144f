"""``python -m fastloss bench --report DIR`` at tiny sizes on a few losses: the page
exists, links only to files that exist, the charts are PNGs, and the tables say
what was measured (times as recorded in the JSON, speed-ups = baseline / fastloss
from the same row).  numba is left out: its first compiles alone take longer
than this whole test."""
import json
import re
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("torch")

from fastloss._bench import main  # noqa: E402
from fastloss._report import fmt_time  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNITS = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "r-{tag}"
    argv = ["bench", "--report", str(out), "--quick", "--sizes", "1000,4000",
            "--backends", "c,numpy,torch", "--losses", "mse_loss,dice_loss,nt_xent_loss"]
    assert main(argv) == 0
    (folder,) = out.parent.glob("r-*")                   # {tag} was filled in
    (data_file,) = folder.glob("data-*.json")
    return folder, (folder / "README.md").read_text(), json.loads(data_file.read_text())


def test_page_names_machine_and_command(report):
    folder, text, data = report
    tag = data["meta"]["tag"]
    assert folder.name == f"r-{tag}" and re.fullmatch(r"[a-z0-9-]+-\d+core-\d{4}-\d\d-\d\d", tag)
    assert data["meta"]["cpu"] in text and data["meta"]["date"] in text
    assert "`python -m fastloss bench --report" in text and "--quick" in text
    assert data["bandwidth_GBps"] > 0


def test_links_exist_and_charts_are_pngs(report):
    folder, text, data = report
    links = re.findall(r"\]\(([^)]+)\)", text)
    tag = data["meta"]["tag"]
    assert sorted(links) == sorted(f"{f}-{tag}.png"
                                   for f in ("elementwise", "overlap", "pairwise", "memory"))
    for link in links:
        path = folder / link
        assert path.is_file(), link                      # relative to the page
        blob = path.read_bytes()
        assert blob.startswith(PNG_SIGNATURE) and len(blob) > 10_000, link


def _tables(text):
    """{heading: [row dicts]} of the page's markdown tables."""
    tables, heading, head = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading, head = line[3:], None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if head is None:
                head = cells
            elif not set(cells[0]) <= set("-:"):
                tables.setdefault(heading, []).append(dict(zip(head, cells)))
        else:
            head = None
    return tables


def _seconds(cell):
    value, unit = cell.split()
    return float(value) * UNITS[unit]


def test_tables_match_the_measurements(report):
    _, text, data = report
    tables = _tables(text)
    recorded = {(r["case"], r["shape"], r["mode"], r["backend"]): r["seconds"]
                for r in data["times"]}
    checked = 0
    for heading, rows in tables.items():
        if heading.startswith("Peak"):
            continue
        for row in rows:
            times = {b: row[b] for b in ("c", "numpy", "torch") if row.get(b, "–") != "–"}
            assert "c" in times, row
            for b, cell in times.items():
                seconds = recorded[row["case"], list(row.values())[1], row["mode"], b]
                assert seconds > 0 and cell == fmt_time(seconds)
            for base in ("numpy", "torch"):
                if f"c vs {base}" in row and base in times:
                    shown = float(row[f"c vs {base}"].rstrip("x"))
                    want = _seconds(times[base]) / _seconds(times["c"])
                    # the ratio's last digit, plus the 4-digit rounding of both times
                    digit = 1.0 if shown >= 10 else 0.1 if shown >= 1 else 0.01
                    assert abs(shown - want) <= digit / 2 + 2e-3 * want, (row, want)
                    checked += 1
    assert {"Elementwise losses", "Overlap (Dice-family) losses",
            "Pairwise (representation-learning) losses"} <= set(tables)
    assert checked >= 2 * 2 * 2 + 2 * 2 + 2 * 2      # mse vs numpy+torch, dice, nt_xent


def test_memory_table(report):
    _, text, data = report
    rows = _tables(text)["Peak extra memory (value+grad)"]
    assert {r["case"] for r in rows} == {"dice_loss[3d]", "nt_xent_loss"}
    assert all(r["peak_extra_bytes"] is not None and r["peak_extra_bytes"] >= 0
               for r in data["memory"])
    assert {r["backend"] for r in data["memory"] if r["case"] == "nt_xent_loss"} == {"c", "torch"}


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # its import fails
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        main(["bench", "--report", str(tmp_path / "r"), "--quick"])
    assert not (tmp_path / "r").exists()                 # it failed before measuring
