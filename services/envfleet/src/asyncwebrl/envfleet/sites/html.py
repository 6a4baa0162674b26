"""HTML fragments the built-in sites share: escaping, notices, status pills, tables,
link bars, hidden fields, labelled inputs and check/radio options.

Each returns a string of markup. Text arguments are escaped here; arguments named
``*_html`` (and a table's ``rows``) are markup the caller built and escaped.
The page frame itself is ``base.page``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def banner(message: str, kind: str = "error", id_: str = "", *, markup: bool = False) -> str:
    """A notice box, ``<div class="banner <kind>" id="<id_ or kind>">``; "" when there is no message.
    With ``markup`` the message is HTML already (a link in it, say)."""
    if not message:
        return ""
    return f'<div class="banner {kind}" id="{id_ or kind}">{message if markup else esc(message)}</div>'


def pill(text: str, cls: str = "pill", prefix: str = "pill-") -> str:
    """A status label, styled by its lower-cased text: ``<span class="pill pill-paid">Paid</span>``."""
    return f'<span class="{cls} {prefix}{esc(text.lower())}">{esc(text)}</span>'


def table(headers: Iterable[str], rows: str, cls: str = "") -> str:
    """A table with a header row of ``headers`` (text) and then ``rows`` (``<tr>`` markup)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><tr>{head}</tr>{rows}</table>"


def links(items: Iterable[tuple[str, str, str]], active: str, id_prefix: str) -> str:
    """A bar of links (tabs, a menu) from (key, label, href); each gets the id ``<id_prefix><key>``
    and the one whose key is ``active`` the class ``active``."""
    return "".join(
        f'<a id="{id_prefix}{key}" class="{"active" if key == active else ""}" href="{esc(href)}">{esc(label)}</a>'
        for key, label, href in items
    )


def hidden(fields: Mapping[str, Any], keep_empty: bool = False) -> str:
    """Hidden form inputs, one a field; one whose value is empty is left out unless ``keep_empty``."""
    return "".join(f'<input type="hidden" name="{k}" value="{esc(v)}">' for k, v in fields.items() if keep_empty or v)


NO_AUTOCOMPLETE = ' autocomplete="off"'  # for text_input's attrs


def text_input(id_: str, label: str, value: Any = None, *, name: str = "", type_: str = "text",
               placeholder: str = "", attrs: str = "") -> str:
    """A label and its text input (named ``name`` or ``id_``); ``attrs`` is added to the input as written."""
    extra = (f' value="{esc(value)}"' if value is not None else "") + (
        f' placeholder="{esc(placeholder)}"' if placeholder else "")
    return (f'<label for="{id_}">{esc(label)}</label><input type="{type_}" id="{id_}" name="{name or id_}"'
            f'{extra}{attrs}>')


def option(kind: str, id_: str, name: str, label_html: str, *, value: str | None = None, checked: bool = False,
           cls: str = "opt", sep: str = " ") -> str:
    """A checkbox or radio button (``kind``) inside its label; ``sep`` goes between the input and the label."""
    value_attr = f' value="{esc(value)}"' if value is not None else ""
    return (f'<label class="{cls}" for="{id_}"><input type="{kind}" id="{id_}" name="{name}"{value_attr}'
            f'{" checked" if checked else ""}>{sep}{label_html}</label>')
