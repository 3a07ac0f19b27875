"""`oneencoder serve MODEL INDEX`: a search page over an index, for a person rather than a script.

The page (stages/static/, plain HTML + JS, no build step) sends a typed phrase or an uploaded sound,
image or clip to `POST /api/search` and shows the top hits of every indexed modality: images as
thumbnails, sounds and clips in players, texts as they are, each with its score.

What the server trusts and what it does not:
- The model is loaded once, at start, and its fingerprint checked against the index's there: a server
  that would answer every query with vectors from another space refuses to start, with the message.
- Media go out only as `GET /media/{modality}/{row}`: the file of row `row` of an indexed modality
  (and `.../play`: the same, a clip re-encoded when no browser plays its codec, see stages/playable.py).
  No part of a request is ever joined to a path, so no request reaches a file outside the collection.
- An upload is capped at `max_upload_bytes` while it arrives (413), must carry an extension of a
  modality the model reads (415), must decode (422, the reader's MediaError), and lives in a temporary
  folder deleted as soon as its query is embedded.
Every refusal is JSON `{"detail": "<what is wrong and what to do>"}`, which the page shows as it is.
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oneencoder.index import Hit, SearchIndex, search_model
from oneencoder.model import OneEncoder
from oneencoder.readers import MediaError

from .embed import EXTENSIONS as FOLDER_EXTENSIONS
from .playable import needs_transcoding, webm
from .report import HTML

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 64 * 2**20  # a minute of 1080p video, an hour of mp3, any photo
MAX_TEXT_CHARS = 1000  # text encoders read a few hundred tokens at most; more is a pasted document
MAX_K = 100
DEFAULT_K = 8
# What an upload's extension says it is: the same suffixes `oneencoder embed` sorts a folder by. The
# reader still has to decode the file: a renamed one is a 422.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    modality: tuple(suffix for suffix, its in FOLDER_EXTENSIONS.items() if its == modality)
    for modality in ("image", "audio", "video")
}
MEDIA_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"}
ROW = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also takes "²"


class UploadTooLargeError(Exception):
    """The request body passed the server's upload cap while it was arriving."""


class UploadLimit:
    """ASGI middleware capping the body of `POST /api/search` at `limit` bytes: a declared
    Content-Length above it is refused before a byte is read, and a body streamed without one is cut
    off as it passes the cap, so an upload never fills the temporary folder's disk."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/api/search":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large_response(self.limit)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLargeError
            return message

        await self.app(scope, counted, send)


def too_large_response(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"the upload is larger than this server's limit of {_size(limit)}; send a "
                                   f"shorter clip or a smaller file, or start the server with a larger "
                                   f"--max_upload_mb"}, status_code=413)


def model_report(model_folder: Path) -> Path | None:
    """The report of the run that made the model: in its folder (`oneencoder evaluate --output`) or in
    the pipeline's output around it."""
    return next((folder / HTML for folder in (model_folder, model_folder.parent) if (folder / HTML).is_file()), None)


def create_app(model_folder: str | Path, index_folder: str | Path,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The search app over `index_folder`, embedding queries with the model in `model_folder`.

    Raises the index's IndexModelMismatchError (naming both fingerprints) when the model is not the
    one the index was built from, so a wrong pair of folders fails at start, not at the first query.
    """
    if max_upload_bytes <= 0:
        raise ValueError(f"max_upload_bytes must be positive (got {max_upload_bytes})")
    index = SearchIndex.load(index_folder)
    model = OneEncoder.from_pretrained(model_folder).eval()
    index.check_model(model.fingerprint())
    searcher = Searcher(index, model)
    report = model_report(Path(model_folder))

    app = FastAPI(title="oneencoder search", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(UploadLimit, limit=max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(UploadTooLargeError)
    async def upload_too_large(request: Request, error: UploadTooLargeError) -> JSONResponse:
        return too_large_response(max_upload_bytes)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        """What the page needs to build its form: what can be asked, what will answer, the limits."""
        return {"query_modalities": searcher.query_modalities, "indexed": searcher.indexed,
                "extensions": {m: list(EXTENSIONS[m]) for m in searcher.query_modalities if m in EXTENSIONS},
                "max_upload_bytes": max_upload_bytes, "max_text_chars": MAX_TEXT_CHARS,
                "max_k": MAX_K, "default_k": DEFAULT_K, "model_fingerprint": index.model_fingerprint,
                "report": "/report" if report else None}

    @app.get("/report", include_in_schema=False)
    async def report_page() -> FileResponse:
        """The model's report (stages/report.py), when its run wrote one."""
        if report is None:
            raise HTTPException(404, f"no {HTML} beside the model {model_folder}: draw it with `oneencoder report`")
        return FileResponse(report)

    @app.post("/api/search")
    async def search(request: Request) -> dict[str, Any]:
        """Multipart form: `text` (a phrase) or `file` (a sound, image or clip; its modality from its
        extension, or `modality` when given), `k` (hits per modality), `targets` (indexed modalities
        to search, comma-separated; default all)."""
        # Parsed here rather than by FastAPI, which would turn the upload cap's exception into a 400.
        async with request.form(max_files=1, max_fields=8) as form:
            k = _k(form.get("k"))
            targets = searcher.targets(form.get("targets"))
            text, upload = form.get("text"), form.get("file")
            if isinstance(upload, str) or (upload is not None and not upload.filename):
                upload = None  # a form with an empty file input sends an empty part without a name
            if isinstance(text, str) and text.strip():
                if upload is not None:
                    raise HTTPException(400, "send either a text or a file, not both")
                if len(text) > MAX_TEXT_CHARS:
                    raise HTTPException(400, f"the text has {len(text)} characters; at most {MAX_TEXT_CHARS}")
                searcher.check_query_modality("text")
                return await run_in_threadpool(searcher.search, "text", text.strip(), targets, k, None)
            if upload is None:
                raise HTTPException(400, "type a text or choose a file (a sound, an image or a clip) to search with")
            name = Path(upload.filename).name
            modality = searcher.upload_modality(name, form.get("modality"))
            with tempfile.TemporaryDirectory(prefix="oneencoder-serve-") as folder:
                path = Path(folder) / f"query{Path(name).suffix.lower()}"
                with path.open("wb") as copy:
                    while chunk := await upload.read(2**20):
                        copy.write(chunk)
                return await run_in_threadpool(searcher.search, modality, path, targets, k, name)

    @app.get("/media/{modality}/{row}")
    async def media(modality: str, row: str) -> FileResponse:
        """The file of an indexed row, found from the index alone (never from the request's text)."""
        return FileResponse(searcher.media_path(modality, row), headers=MEDIA_HEADERS)

    @app.get("/media/{modality}/{row}/play")
    async def playable(modality: str, row: str) -> Response:
        """The row's file as a browser plays it: a clip in a codec no browser decodes as a WebM."""
        path = searcher.media_path(modality, row)
        if modality == "video" and await run_in_threadpool(needs_transcoding, path):
            content = await run_in_threadpool(webm, path, path.stat().st_mtime)
            return Response(content, media_type="video/webm", headers=MEDIA_HEADERS)
        return FileResponse(path, headers=MEDIA_HEADERS)

    return app


class Searcher:
    """The loaded model and index, and every check a query goes through before it reaches them.
    One query at a time reaches the model: its encoders are not documented as thread-safe, and on a
    CPU one query already uses every core."""

    def __init__(self, index: SearchIndex, model: OneEncoder) -> None:
        self.index = index
        self.model = model
        # {modality: rows}: what the page reports, and the bound a /media row must stay under.
        self.indexed = {modality: len(rows) for modality, rows in index.rows.items()}
        self.lock = threading.Lock()
        self.query_modalities = list(model.modalities)

    def check_query_modality(self, modality: str) -> None:
        if modality not in self.query_modalities:
            raise HTTPException(400, f"this model reads {', '.join(self.query_modalities)}, not {modality}: "
                                     f"query with one of those")

    def targets(self, value: Any) -> list[str]:
        if not isinstance(value, str) or not value.strip():
            return list(self.index.modalities)
        wanted = [word.strip() for word in value.split(",") if word.strip()]
        unknown = [m for m in wanted if m not in self.index.modalities]
        if unknown:
            raise HTTPException(400, f"{', '.join(unknown)} not indexed; the index has "
                                     f"{', '.join(self.index.modalities)}")
        return wanted

    def upload_modality(self, name: str, asked: Any) -> str:
        """The modality an uploaded file is read as: its extension's, which must agree with `asked`."""
        suffix = Path(name).suffix.lower()
        readable = {m: EXTENSIONS[m] for m in self.query_modalities if m in EXTENSIONS}
        found = next((m for m, suffixes in readable.items() if suffix in suffixes), None)
        accepted = "; ".join(f"{m}: {' '.join(s)}" for m, s in readable.items()) or "none (this model reads only text)"
        if found is None:
            raise HTTPException(415, f"{name}: {suffix or 'no extension'} is not a file type this model reads "
                                     f"(accepted: {accepted})")
        if isinstance(asked, str) and asked and asked != found:
            raise HTTPException(415, f"{name} is named as {found} ({suffix}), not {asked}; accepted for {asked}: "
                                     f"{' '.join(readable.get(asked, ())) or 'none'}")
        return found

    def search(self, modality: str, item: str | Path, targets: list[str], k: int, name: str | None) -> dict[str, Any]:
        """Embed the query once and search each target; a file that does not decode is a 422 naming
        the upload (not the temporary copy the reader saw)."""
        try:
            with self.lock:
                found = search_model(self.index, self.model, modality, item, targets, k)
        except MediaError as error:
            message = str(error).replace(str(item), name or "the upload")
            raise HTTPException(422, f"could not read the {modality} file: {message}") from None
        query: dict[str, Any] = {"modality": modality}
        query.update({"text": item} if name is None else {"file": name})
        return {"query": query, "results": {target: [self._hit(hit, rank) for rank, hit in enumerate(hits, 1)]
                                            for target, hits in found.items()}}

    def _hit(self, hit: Hit, rank: int) -> dict[str, Any]:
        """A hit as the page shows it: texts inline, media by URL and file name (never a full path)."""
        shown: dict[str, Any] = {"rank": rank, "score": round(hit.score, 4), "id": hit.id, "row": hit.row}
        if hit.modality == "text":
            shown["text"] = hit.source
            return shown
        url = f"/media/{hit.modality}/{hit.row}"
        shown.update(url=url, play_url=f"{url}/play", name=Path(hit.source).name)
        if hit.caption:
            shown["caption"] = hit.caption
        return shown

    def media_path(self, modality: str, row: str) -> Path:
        if modality not in self.indexed or modality == "text" or not ROW.fullmatch(row):
            raise HTTPException(404, "no such media: /media/<indexed modality>/<row of the index>")
        number = int(row)
        if number >= self.indexed[modality]:
            raise HTTPException(404, f"no row {number} in {modality}: it has {self.indexed[modality]} rows")
        path = Path(self.index.row(modality, number)["source"])
        if not path.is_file():
            raise HTTPException(404, f"row {number} of {modality} was indexed from a file that is gone; "
                                     f"embed and index the collection again")
        return path


def _k(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_K
    if not isinstance(value, str) or not value.isdecimal() or not 1 <= int(value) <= MAX_K:
        raise HTTPException(400, f"k must be a whole number from 1 to {MAX_K} (got {value!r})")
    return int(value)


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count} bytes"


def serve(model_folder: str | Path, index_folder: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(model_folder, index_folder, max_upload_bytes)
    print(f"oneencoder serve: open http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def serve_command(argv: Sequence[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="oneencoder serve",
                            description="A search page over an index: type a phrase or upload a sound, image or"
                                        " clip, see the top hits of every indexed modality.")
    parser.add_argument("model", help="the model folder the index was built with (config.json + model.safetensors)")
    parser.add_argument("index", help="an index folder written by `oneencoder index`")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20)
    args = parser.parse_args(list(argv))
    serve(args.model, args.index, args.host, args.port, int(args.max_upload_mb * 2**20))
