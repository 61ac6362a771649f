"""Published numbers: the OPTiML paper's Tables I, II and III, transcribed to a long CSV.

``results/reference/optiml-paper.csv`` has one row per printed cell: table (I, II, III),
protocol, method (our registry name), dataset, fraction (percent), value (AUROC x 100, as
printed; Table III's 0.685 becomes 68.5), printed_delta (the number in parentheses, where
printed) and printed_arrow. ``transcribe`` rebuilds it from the paper's markdown (or from
``tests/fixtures/optiml-paper-tables.tsv``, its table rows alone), so the file can be checked
against its source at any time; reports recompute every delta from the values
and footnote where the printed one disagrees.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"
COLUMNS = ["table", "protocol", "method", "ablation", "dataset", "fraction", "value", "printed_delta", "printed_arrow"]

# the paper's row labels -> our method names
PAPER_METHODS = {"Sup.1": "sup1", "Sup.2": "sup2", "SimCLR": "simclr", "MoCoV2": "mocov2", "MoCov2": "mocov2",
                 "DenseCL": "densecl", "BYOL": "byol", "SimSiam": "simsiam", "VICReg": "vicreg", "VicReg": "vicreg",
                 "PCRLv2": "pcrlv2", "OPTiML": "optiml"}
# the paper's supervised rows: its tables compare every row with Sup.2, marked "(bs)"; Sup.1 is
# the other baseline (what a table falls back to when Sup.2 is absent, as for our records)
PAPER_BASELINE_RANKS = {"sup2": 0, "sup1": 1}
DATASETS = ("nih", "vindr", "rsna")
FRACTIONS = (1.0, 10.0, 100.0)

_CELL = re.compile(r"(?P<value>-?\d+(?:\.\d+)?)\s*<sub>\((?P<delta>[-+]?\d+(?:\.\d+)?)\)</sub>\s*(?P<arrow>\S*)")


def _plain(text: str) -> str:
    return re.sub(r"</?(b|math)>", "", text).replace("$\\uparrow$", "↑").replace("$\\downarrow$", "↓") \
        .replace("\\uparrow", "↑").replace("\\downarrow", "↓").strip()


def transcribe(paper: Path, ablation_variants: dict[frozenset, str]) -> pd.DataFrame:
    """The three tables of the OPTiML paper (its markdown, or just its table rows) as the reference CSV's rows.

    ``ablation_variants`` names the method of each Table III row by its switches
    (``frozenset({("var+cov", True), ("CV-SIM", False)})`` -> a variant's name): the methods
    declare them (``Method.ablation``), and reports do not import methods.
    """
    lines = Path(paper).read_text().splitlines()
    rows = []
    for table, protocol, marker in (("I", "finetune", "TABLE I:"), ("II", "frozen", "TABLE II:")):
        start = next(i for i, line in enumerate(lines) if line.startswith(marker))
        header = next(i for i in range(start, len(lines)) if lines[i].startswith("Methods"))
        for line in lines[header + 2 : header + 12]:
            cells = line.split("\t")
            label = _plain(re.sub(r"<sub>\(bs\)</sub>", "", cells[0]))
            method = PAPER_METHODS[label]
            for position, cell in enumerate(cells[1:10]):
                match = _CELL.search(_plain(cell))
                arrow = match["arrow"] if match["arrow"] in ("↑", "↓") else ""
                rows.append([table, protocol, method, "", DATASETS[position // 3], FRACTIONS[position % 3],
                             float(match["value"]), float(match["delta"]), arrow])
    start = next(i for i, line in enumerate(lines) if line.startswith("TABLE III:"))
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("Method\t"))
    switch_names = lines[header].split("\t")[1:3]  # var+cov, CV-SIM
    for line in lines[header + 1 : header + 5]:
        cells = [_plain(cell) for cell in line.split("\t")]
        switches = {name: cell == "✓" for name, cell in zip(switch_names, cells[1:3])}
        for fraction, cell in zip((1.0, 10.0), cells[3:5]):
            rows.append(["III", "finetune", ablation_variants[frozenset(switches.items())],
                         ";".join(f"{name}={'on' if on else 'off'}" for name, on in switches.items()),
                         "nih", fraction, round(float(cell) * 100, 1), None, ""])
    return pd.DataFrame(rows, columns=COLUMNS)


def load_reference(name: str) -> pd.DataFrame:
    """A reference CSV by path, or by name under ./results/reference/ or the repository's."""
    candidates = [Path(name), Path.cwd() / "results" / "reference" / f"{name}.csv", REFERENCE_DIR / f"{name}.csv"]
    path = next((candidate for candidate in candidates if candidate.is_file()), candidates[-1])
    if not path.is_file():
        available = sorted(p.stem for p in REFERENCE_DIR.glob("*.csv"))
        raise FileNotFoundError(f"--reference {name}: no {path} (available: {', '.join(available) or 'none'})")
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values={"printed_delta": [""]})
    except (ValueError, UnicodeDecodeError, OSError) as error:  # pandas' ParserError is a ValueError
        reason = (str(error).strip().splitlines() or [""])[0]
        raise FileNotFoundError(f"--reference {path}: not a reference CSV ({reason}); expected columns {COLUMNS}") from None
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise FileNotFoundError(f"--reference {path}: missing column(s) {missing}; expected {COLUMNS}")
    return table
