"""The playground: GET / serves one page that streams an answer from this server's own
POST /v1/chat/completions and draws the search behind each committed set. The page and its two assets
are files of this package, served as they are: no build step, nothing fetched from elsewhere."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.api.errors import ApiError

HERE = Path(__file__).parent
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
# Only this server's own files and API: no CDN, and no inline script, so text that slipped into the
# page as markup still could not run.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff"}

# Open like /health: the page asks for the API key itself when the API answers 401.
router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(HERE / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/playground/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise ApiError(404, f"the playground has no file {name!r}", code="not_found")
    return FileResponse(HERE / name, media_type=ASSETS[name], headers=HEADERS)
