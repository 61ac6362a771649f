"""The plan of a run: its cells, and the methods that cannot run here with the reason.

Made once per ``bench run`` (``RunPlan.for_cells``) and executed alike by the inline runner
(``Runner.run``) and the grid dispatcher (``dispatch``); ``bench status`` reads its stored form
(``plan.json``). Which planned cells are left to do is decided when a run starts
(``Runner.pending``): another process may have finished some since the plan was made.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrbench.benchmark.config import RunConfig
from cxrbench.methods import get_method
from cxrbench.records.schema import Cell


def grid_cells(methods, datasets, protocols, label_fractions, seeds) -> list[Cell]:
    """Every combination, in this order: method, dataset, protocol, fraction, seed."""
    return [
        Cell(method, dataset, protocol, float(fraction), int(seed))
        for method in methods
        for dataset in datasets
        for protocol in protocols
        for fraction in label_fractions
        for seed in seeds
    ]


def cells_by_method(cells: list[Cell]) -> dict[str, list[Cell]]:
    """The cells grouped by method, methods in the order they first appear (one pretraining each)."""
    grouped: dict[str, list[Cell]] = {}
    for cell in cells:
        grouped.setdefault(cell.method, []).append(cell)
    return grouped


@dataclass
class RunPlan:
    cells: list[Cell]
    cannot_run: dict[str, str]  # method -> why its cells cannot run here (weights it cannot load, ...)

    @classmethod
    def for_cells(cls, cells: list[Cell], config: RunConfig) -> RunPlan:
        reasons = {name: get_method(name).cannot_run(config.method_hyperparameters(name), config.backbone)
                   for name in cells_by_method(cells)}
        return cls(list(cells), {name: reason for name, reason in reasons.items() if reason})

    @property
    def methods(self) -> list[str]:
        return list(cells_by_method(self.cells))

    def runnable(self) -> list[Cell]:
        """The planned cells whose method can run here."""
        return [cell for cell in self.cells if cell.method not in self.cannot_run]

    def pretraining_methods(self) -> list[str]:
        return [name for name in self.methods if get_method(name).pretrains]
