"""Render one email (subject, text, HTML) from Jinja2 templates.

A template is chosen by name from an allowlist: the name must be a plain key
(`^[a-z][a-z0-9_]{0,63}$`) and `<name>.txt.j2`, `<name>.html.j2` and `<name>.subject.j2`
must all be files in the templates directory. Nothing else picks a path.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
PARTS = ("subject", "txt", "html")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


class TemplateNotFound(ValueError):
    """The template name is not a key, or one of its three files is missing."""

    def __init__(self, template: str, directory: Path, reason: str) -> None:
        super().__init__(f"email template {template!r}: {reason} (in {directory})")
        self.template = template


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def longdate(value: datetime) -> str:
    """'14 March 2025' in UTC (naive datetimes are taken as UTC). Locale-independent."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


@functools.lru_cache(maxsize=16)
def _environment(directory: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["longdate"] = longdate
    return env


def _present(directory: Path) -> set[str]:
    try:
        with os.scandir(directory) as entries:
            return {e.name for e in entries if e.is_file()}
    except OSError:
        return set()


def render(templates_dir: Path, template: str, context: Mapping[str, Any]) -> RenderedEmail:
    """Render `template` from `templates_dir` with `context`.

    Raises TemplateNotFound (a ValueError) for an unknown name; jinja2's UndefinedError
    for a variable the template uses but the context lacks; ValueError for an
    `update_payment_url` that is not http(s) or an empty subject.
    """
    directory = Path(templates_dir)
    if not isinstance(template, str) or not _NAME.match(template):
        raise TemplateNotFound(str(template), directory, "not a template name (lowercase letters, digits, _)")
    present = _present(directory)
    files = {part: f"{template}.{part}.j2" for part in PARTS}
    missing = [name for name in files.values() if name not in present]
    if missing:
        raise TemplateNotFound(template, directory, f"missing {', '.join(missing)}")

    url = context.get("update_payment_url")
    if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^\s<>\"']+$", url)):
        raise ValueError(f"update_payment_url = {url!r}: must be an http(s) URL")

    # `first_notice_at`: when the campaign's first email really went out; unknown means
    # none is known to have, and no template may claim an earlier notice then
    context = {"first_notice_at": None, **context}
    env = _environment(str(directory.resolve()))
    subject = " ".join(env.get_template(files["subject"]).render(context).split())
    if not subject:
        raise ValueError(f"email template {template!r}: rendered an empty subject")
    text = env.get_template(files["txt"]).render(context)
    html = env.get_template(files["html"]).render(context)
    return RenderedEmail(subject=subject, text=text, html=html)
