"""The API's OpenAPI schema and a documentation page that needs no network.

    api_docs = "token"   (default) /openapi.json and /docs answer with the bearer token only
    api_docs = "public"  both are open (an internal network, a developer machine)
    api_docs = "off"     neither exists (404)

`/docs` is plain HTML rendered from the schema (every route, its parameters, its answers
and their fields): no script, no CDN, so it opens on a machine without internet.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from dunning.config import Settings
from starter.api_requests import authorize, error


def _ref(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_ref(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_ref(schema.get('items', {}))}]"
    return str(schema.get("type", "object"))


def render(spec: dict[str, Any]) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(spec['info']['title'])} API</title>",
           "<style>body{font-family:sans-serif;max-width:980px;margin:24px auto;color:#1f2933}"
           "code{background:#f4f5f7;padding:1px 4px}td,th{text-align:left;padding:2px 8px;vertical-align:top}"
           "h2{margin-top:28px;border-top:1px solid #e4e7eb;padding-top:12px}</style></head><body>",
           f"<h1>{e(spec['info']['title'])} API {e(spec['info'].get('version', ''))}</h1>"]  # fmt: skip
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            out.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2>")
            if op.get("description") or op.get("summary"):
                out.append(f"<p>{e(op.get('description') or op.get('summary'))}</p>")
            params = op.get("parameters", [])
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>type</th></tr>")
                out += [f"<tr><td>{e(p['name'])}</td><td>{e(p['in'])}</td><td>{e(_ref(p.get('schema', {})))}</td></tr>"
                        for p in params]  # fmt: skip
                out.append("</table>")
            out.append("<table><tr><th>answer</th><th>body</th></tr>")
            for code, resp in op.get("responses", {}).items():
                schema = resp.get("content", {}).get("application/json", {}).get("schema", {})
                out.append(f"<tr><td>{e(str(code))}</td><td>{e(_ref(schema) if schema else resp.get('description', ''))}</td></tr>")
            out.append("</table>")
    out.append("<h2>Schemas</h2>")
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        fields = ", ".join(f"{k}: {_ref(v)}" for k, v in schema.get("properties", {}).items())
        out.append(f"<p><strong>{e(name)}</strong> {{ {e(fields)} }}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def add_docs(app: FastAPI, settings: Settings) -> None:
    if settings.api_docs == "off":
        return

    def refused(request: Request) -> JSONResponse | None:
        return None if settings.api_docs == "public" else authorize(request, settings)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        no = refused(request)
        return no if no is not None else JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, response_model=None)
    async def docs(request: Request) -> HTMLResponse | JSONResponse:
        no = refused(request)
        return no if no is not None else HTMLResponse(render(app.openapi()))


__all__ = ["add_docs", "error", "render"]
