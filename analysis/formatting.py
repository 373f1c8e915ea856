"""Numbers and text of every table: spread statistics over runs, ``mean ± std`` cells, LaTeX escaping
and the booktabs tabular. The one place the tables (``tables``, ``multidomain``, ``weak``) take them
from."""

from __future__ import annotations

import math

import pandas as pd


def sample_std(values: pd.Series) -> float:
    """Sample standard deviation (ddof 1) of the defined values; NaN for fewer than two."""
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def mean_defined(values: pd.Series) -> float:
    """Mean of the values that are not NaN; NaN if none is."""
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def join_distinct(values: pd.Series) -> str:
    """The distinct defined values, sorted and ``; ``-separated (a column that should hold one value)."""
    return "; ".join(sorted({str(v) for v in values.dropna()}))


def fmt_mean_std(mean: float, std: float, digits: int = 1, signed: bool = False) -> str:
    """``41.2 ± 1.3``; the mean alone where the std is undefined (n = 1); empty where there is no mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    mean = round(float(mean), digits) + 0.0  # no "-0.0"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return text
    return f"{text} ± {std:.{digits}f}"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex(text: object) -> str:
    """Text as LaTeX: special characters escaped, ``±`` and ``×`` as math."""
    out = "".join(LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("×", r"$\times$")


def latex_tabular(table: pd.DataFrame, align: str) -> list[str]:
    """A booktabs ``tabular`` of a formatted table, as lines."""
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(latex(c) for c in table.columns) + r" \\",
             r"\midrule"]
    lines += [" & ".join(latex(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    return lines + [r"\bottomrule", r"\end{tabular}"]
