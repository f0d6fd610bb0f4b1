"""Small HTML helpers shared by the sections; everything untrusted goes through :func:`esc`."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from trainguard.report.svg import esc

NO_DATA: Final = '<p class="nodata">no data recorded</p>'

MAX_TEXT: Final = 1000
"""Characters of one message or cell kept; the rest is cut (the ledger has it all)."""
MAX_JSON: Final = 2000
"""Characters of one evidence / payload JSON shown."""


def when(t: float | None) -> str:
    """UTC time of a ledger event (the writer's clock)."""
    if t is None:
        return ""
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return esc(repr(t))


def cut(text: object, limit: int = MAX_TEXT) -> str:
    """Untrusted text, shortened and escaped."""
    value = str(text)
    if len(value) > limit:
        value = value[:limit] + f"… [{len(value) - limit} more characters]"
    return esc(value)


def as_json(value: Any, limit: int = MAX_JSON, *, compact: bool = False) -> str:
    """A payload as JSON (indented unless ``compact``), shortened and escaped, in a ``<pre>``."""
    try:
        text = json.dumps(
            value,
            indent=None if compact else 1,
            separators=(", ", ": ") if compact else None,
            sort_keys=True,
            ensure_ascii=False,
            default=str,
        )
    except (TypeError, ValueError):
        text = repr(value)
    return f"<pre>{cut(text, limit)}</pre>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    table_id: str | None = None,
    row_attrs: Sequence[str] | None = None,
) -> str:
    """A table of already escaped cells (``<td>`` included when a cell starts with one)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row)
        attrs = f" {row_attrs[i]}" if row_attrs is not None else ""
        body.append(f"<tr{attrs}>{cells}</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def definition_list(items: Mapping[str, Any]) -> str:
    """``name: value`` pairs; values that are not plain text are shown as JSON."""
    parts = []
    for key, value in items.items():
        shown = cut(value) if isinstance(value, str | int | float) else as_json(value)
        parts.append(f"<dt>{cut(key, 200)}</dt><dd>{shown}</dd>")
    return f"<dl>{''.join(parts)}</dl>" if parts else ""


def section(anchor: str, title: str, body: str) -> str:
    """One ``<section>`` with a heading."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def more(shown: int, total: int, what: str) -> str:
    """A note that the table was cut, naming where the rest is."""
    if total <= shown:
        return ""
    return (
        f'<p class="note">{total - shown} more {esc(what)} not shown; '
        "see <code>trainguard ledger show</code> / <code>trainguard findings</code>.</p>"
    )


def who(actor: Mapping[str, Any] | None) -> str:
    """The process or user responsible, on one line: ``pid 12 · user bob · host h · cmd``."""
    if not actor:
        return ""
    parts = [
        f"{name} {actor[name]}"
        for name in ("pid", "user", "uid", "host")
        if actor.get(name) not in (None, "")
    ]
    cmdline = actor.get("cmdline")
    if cmdline:
        parts.append(str(cmdline))
    return f'<div class="who">{cut(" · ".join(parts), 400)}</div>'
