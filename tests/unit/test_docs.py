"""docs/flags.md documents every DARTS flag; docs/metrics.md documents every metric key the package emits.

Standard library only: the flag list comes from `config.flag_table()`, the metric keys from the string literals in
`openrlhf_darts/**/*.py` plus the `darts/drop_<reason>` keys `metrics.outcome_metrics` builds from `Decision`.
"""

import re
from pathlib import Path

import pytest

from openrlhf_darts.config import flag_table
from openrlhf_darts.core.types import Decision

pytestmark = [pytest.mark.unit]

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "openrlhf_darts"
KEY_LITERAL = re.compile(r"""["']((?:darts/|timing/darts_)[a-z0-9_]+)["']""")
DOC_KEY = re.compile(r"`((?:darts/|timing/darts_)[a-z0-9_]+)`")


def _flag_rows() -> dict[str, str]:
    """`--darts.x` -> its table row in docs/flags.md (the first cell names the flag)."""
    rows = {}
    for line in (REPO / "docs" / "flags.md").read_text().splitlines():
        match = re.match(r"\| `(--darts\.[a-z_]+)` \|", line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} has two rows"
            rows[match.group(1)] = line
    return rows


def emitted_metric_keys() -> set[str]:
    keys = {f"darts/drop_{reason.value}" for reason in Decision if reason is not Decision.KEEP}
    for path in PACKAGE.rglob("*.py"):
        keys |= set(KEY_LITERAL.findall(path.read_text()))
    return keys


def test_flags_doc_lists_every_flag_with_default_and_symbol():
    rows = _flag_rows()
    table = flag_table()
    assert sorted(rows) == sorted(flag for flag, *_ in table)
    for flag, default, symbol, _ in table:
        cells = [cell.strip() for cell in rows[flag].strip("|").split("|")]
        shown = {"False": "off"}.get(default, default)
        assert cells[1] == f"`{shown}`" or cells[1].startswith(shown), (flag, cells[1], shown)
        assert cells[2].startswith(symbol), (flag, cells[2], symbol)
        assert len(cells[3]) > 40, f"{flag}: say what it switches"


def test_metrics_doc_documents_every_emitted_key():
    documented = set(DOC_KEY.findall((REPO / "docs" / "metrics.md").read_text()))
    emitted = emitted_metric_keys()
    # The STYLE.md metric table's keys are among them (a scan that found nothing would pass vacuously).
    assert {"darts/candidates_mean", "darts/wasted_tokens", "darts/drop_aborted", "timing/darts_allocation"} <= emitted
    assert not emitted - documented, f"emitted but not in docs/metrics.md: {sorted(emitted - documented)}"
    assert not documented - emitted, f"in docs/metrics.md but emitted nowhere: {sorted(documented - emitted)}"
