"""The search page and the API docs: static HTML, CSS and JavaScript served by the app itself.

Nothing is loaded from another origin (Swagger UI's files come from the fastapi-swagger
package), so the Content-Security-Policy can allow this origin's scripts alone.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_swagger.resources
from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SWAGGER_UI_DIR = Path(fastapi_swagger.resources.__file__).resolve().parent

router = APIRouter(include_in_schema=False)


@router.get("/")
async def search_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
async def api_docs() -> FileResponse:
    return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})
