"""The one counts table: parameters, FLOPs and ratios per expert, plus a total row when there are several.

`eval` and `report` print and export these rows (CaseResult.counts_rows), the window's figures panel shows
them and its exports write them (session.sizes), so the numbers are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuckerscope.core.compression.counting import NetworkCost


@dataclass(frozen=True)
class ExpertSize:
    """One expert's (or the total's) size before and after compression, on one patch of its plans' size."""

    name: str
    df: float | str  # '' on the total row
    params_original: int
    params_compressed: int
    flops_original: int
    flops_compressed: int
    method: str = "tucker"
    conv_flops_original: int = 0  # the convolutions alone (the paper's FLOPs also count norms, as fvcore does)
    conv_flops_compressed: int = 0

    @classmethod
    def of(
        cls, name: str, df: float, costs: tuple[NetworkCost, NetworkCost], method: str = "tucker"
    ) -> ExpertSize:
        original, compressed = costs
        return cls(
            name, df, original.params, compressed.params, original.flops, compressed.flops, method,
            original.conv_flops, compressed.conv_flops,
        )  # fmt: skip

    @property
    def params_ratio(self) -> float:
        return self.params_original / max(self.params_compressed, 1)

    @property
    def flops_ratio(self) -> float:
        return self.flops_original / max(self.flops_compressed, 1)

    def row(self) -> dict[str, object]:
        """The CSV / JSON row (column names as `eval --export` writes them)."""
        return {
            "expert": self.name,
            "df": self.df,
            "method": self.method,
            "params_original": self.params_original,
            "params_compressed": self.params_compressed,
            "params_ratio": self.params_ratio,
            "flops_original": self.flops_original,
            "flops_compressed": self.flops_compressed,
            "flops_ratio": self.flops_ratio,
            "conv_flops_original": self.conv_flops_original,
            "conv_flops_compressed": self.conv_flops_compressed,
        }


def with_total(sizes: Sequence[ExpertSize]) -> list[ExpertSize]:
    """The experts' rows, then a 'total' row when there is more than one expert."""
    rows = list(sizes)
    if len(rows) > 1:
        methods = {row.method for row in rows}
        rows.append(
            ExpertSize(
                "total",
                "",
                sum(r.params_original for r in sizes),
                sum(r.params_compressed for r in sizes),
                sum(r.flops_original for r in sizes),
                sum(r.flops_compressed for r in sizes),
                methods.pop() if len(methods) == 1 else "mixed",
                sum(r.conv_flops_original for r in sizes),
                sum(r.conv_flops_compressed for r in sizes),
            )
        )
    return rows


def counts_table(sizes: Sequence[ExpertSize]) -> list[dict[str, object]]:
    """The rows `eval` exports and the figures panel shows."""
    return [row.row() for row in with_total(sizes)]
