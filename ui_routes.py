"""The web page (GET /ui): our own static files from web/, MathJax from its installed package. No build step,
no CDN: everything the page loads comes from this app. Mounted under /ui; open without an API key (the page
asks for one when the API answers 401)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from config import Settings
from errors import InputError

PREFIX = "/ui"
router = APIRouter(prefix=PREFIX, tags=["web page"])
WEB = Path(__file__).resolve().parent / "web"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def mathjax_dir() -> Path | None:
    """MathJax 3's browser bundles, as installed by the django-static-mathjax wheel (no Django needed)."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    return folder if folder.is_dir() else None


def check(settings: Settings) -> None:
    missing = [n for n in ("index.html", "app.js", "app.css") if not (WEB / n).is_file()]
    if missing:
        raise RuntimeError(f"web/ lacks {', '.join(missing)}")


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise InputError(404, "not_found", f"no file {rel!r}")
    return path


@router.get("", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/static/{name:path}", include_in_schema=False)
async def static(name: str) -> FileResponse:
    path = _inside(WEB, name)
    return FileResponse(path, media_type=_TYPES.get(path.suffix), headers={"Cache-Control": "no-cache"})


@router.get("/vendor/mathjax/{name:path}", include_in_schema=False)
async def mathjax(name: str) -> FileResponse:
    folder = mathjax_dir()
    if folder is None:
        raise InputError(404, "mathjax_missing", "MathJax is not installed (pip install -r requirements.txt)")
    path = _inside(folder, name)
    return FileResponse(path, media_type=_TYPES.get(path.suffix), headers={"Cache-Control": "max-age=86400"})
