"""The search server (stages/serve.py) and its page: the API through FastAPI's TestClient, the page in
Debian's headless Chromium through playwright, on a planted collection of eight shapes (image, sound,
clip, caption each) embedded by a tiny random model of all four modalities. Every query the tests make
is a member of the collection, so its own row must come back first whatever the random weights."""

from __future__ import annotations

import json
import random
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile
import torch
from fastapi.testclient import TestClient

from conftest import tiny_encoder
from datamodules.shapes import COLOURS, SAMPLING_RATE, SHAPES, captions, clip, draw, sound, write_video
from oneencoder import OneEncoder, OneEncoderConfig
from oneencoder.index import build_index
from stages.embed import embed_command
from stages.report import HTML
from stages.serve import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
UPLOAD_LIMIT = 256 * 1024  # above every planted file (a 0.5 s wav is 16 KB), below the "too large" upload
MODALITIES = ("image", "audio", "video", "text")


@dataclass
class Collection:
    root: Path
    model: Path
    index: Path
    records: list[dict]  # {"id", "image", "audio", "video", "caption"}


def write_collection(root: Path, size: int = 32) -> list[dict]:
    """Eight planted records (each colour x shape pair, in a different corner, as image, sound, clip and
    caption) and their manifest.jsonl."""
    rng, sound_rng = random.Random(0), np.random.default_rng(0)
    places = ["top left", "top right", "bottom left", "bottom right"]
    records = []
    for number, (colour, shape) in enumerate((c, s) for c in list(COLOURS)[:4] for s in SHAPES[:2]):
        place = places[number % 4]
        record_id = f"{colour}-{shape}"
        files = {m: root / m / f"{record_id}{suffix}" for m, suffix in (("image", ".png"), ("audio", ".wav"),
                                                                            ("video", ".mp4"))}
        for path in files.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        draw(colour, shape, place, size, rng).save(files["image"])
        soundfile.write(files["audio"], sound(colour, shape, place, sound_rng), SAMPLING_RATE)
        write_video(files["video"], clip(colour, shape, place, size, rng))
        records.append({"id": record_id, **{m: str(p) for m, p in files.items()},
                        "caption": captions(colour, shape, place)[0]})
    manifest = [{"id": r["id"], "split": "test", "text": [r["caption"]],
                 **{m: str(Path(r[m]).relative_to(root)) for m in ("image", "audio", "video")}} for r in records]
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in manifest))
    return records


def tiny_model(seed: int) -> OneEncoder:
    torch.manual_seed(seed)
    config = OneEncoderConfig(encoders={m: tiny_encoder(m) for m in MODALITIES}, embed_dim=32, up_heads=2, up_ff_dim=64)
    return OneEncoder(config).eval()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    root = tmp_path_factory.mktemp("serve")
    records = write_collection(root / "collection")
    tiny_model(seed=0).save_pretrained(root / "model")
    embed_command([str(root / "model"), str(root / "collection" / "manifest.jsonl"), str(root / "embeddings")])
    build_index(root / "embeddings", root / "index")
    return Collection(root, root / "model", root / "index", records)


@pytest.fixture(scope="module")
def client(collection: Collection) -> Iterator[TestClient]:
    with TestClient(create_app(collection.model, collection.index, max_upload_bytes=UPLOAD_LIMIT)) as client:
        yield client


@pytest.fixture
def uploads_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the server's temporary upload folders go during the test: checked empty afterwards."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_text_query_finds_its_planted_caption_first_and_every_modality_answers(client, collection):
    caption = collection.records[5]["caption"]
    response = client.post("/api/search", data={"text": caption, "k": "3"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == {"modality": "text", "text": caption}
    assert sorted(answer["results"]) == sorted(MODALITIES)
    assert [len(hits) for hits in answer["results"].values()] == [3] * 4
    first = answer["results"]["text"][0]
    assert (first["text"], first["id"]) == (caption, f"{collection.records[5]['id']}#0")
    assert first["score"] == pytest.approx(1.0, abs=1e-4)
    image = answer["results"]["image"][0]
    assert image["url"] == f"/media/image/{image['row']}" and "/" not in image["name"]
    served = client.get(image["url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    record = next(r for r in collection.records if r["id"] == image["id"])
    assert served.content == Path(record["image"]).read_bytes()
    assert image["caption"] == record["caption"]


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_an_uploaded_member_of_the_collection_finds_itself_and_its_temporary_copy_is_deleted(
        client, collection, uploads_folder, modality):
    record = collection.records[2]
    path = Path(record[modality])
    response = client.post("/api/search", data={"k": "2", "targets": modality},
                           files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == {"modality": modality, "file": path.name}
    assert list(answer["results"]) == [modality]
    assert answer["results"][modality][0]["id"] == record["id"]
    assert answer["results"][modality][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert list(uploads_folder.iterdir()) == []


@pytest.mark.parametrize(("name", "content", "form", "status", "message"), [
    ("holiday.png", b"this is a text file, not a picture", {}, 422, "could not read the image file"),
    ("notes.txt", b"hello", {}, 415, "notes.txt: .txt is not a file type this model reads (accepted: image: .png"),
    ("clip.wav", b"RIFF" + bytes(UPLOAD_LIMIT), {}, 413, "larger than this server's limit of 262144 bytes"),
    ("photo.png", b"\x89PNG", {"modality": "audio"}, 415, "photo.png is named as image (.png), not audio"),
    (None, None, {"text": "  "}, 400, "type a text or choose a file"),
    (None, None, {"text": "red", "k": "0"}, 400, "k must be a whole number from 1 to 100"),
    (None, None, {"text": "red", "targets": "smell"}, 400, "smell not indexed; the index has"),
    ("photo.png", b"\x89PNG", {"text": "red"}, 400, "either a text or a file, not both"),
])
def test_a_bad_query_gets_a_message_saying_what_is_wrong(client, uploads_folder, name, content, form, status,
                                                         message):
    files = {"file": (name, content)} if name else None
    response = client.post("/api/search", data=form, files=files)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    if status == 422:  # the reader's message names the upload, never the server's temporary copy
        assert "holiday.png" in response.json()["detail"] and str(uploads_folder) not in response.json()["detail"]
    assert list(uploads_folder.iterdir()) == []


def test_an_upload_streamed_without_a_length_is_cut_off_at_the_limit(client, uploads_folder):
    """A chunked body declares no Content-Length: the cap must hold while the bytes arrive."""
    boundary = "oneencoderboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(2 * UPLOAD_LIMIT // 65536 + 1):
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/api/search", content=body(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert list(uploads_folder.iterdir()) == []


@pytest.mark.parametrize("url", [
    "/media/image/8", "/media/image/-1", "/media/image/%C2%B2", "/media/image/0x1", "/media/image/ 1",
    "/media/text/0", "/media/manifest/0", "/media/image/..%2F..%2F..%2Fetc%2Fpasswd",
    "/media/..%2Fcollection%2Fimage/0", "/media/image/0/../../model/config.json",
    "/media//etc/passwd", "/static/..%2Fserve.py", "/static/../serve.py", "/media/video/8/play",
    "/media/text/0/play",
])
def test_media_are_only_the_files_of_indexed_rows(client, url):
    response = client.get(url)
    assert response.status_code == 404, (url, response.status_code, response.text[:200])


def test_a_clip_in_a_codec_no_browser_plays_is_served_reencoded_for_the_player(client, collection):
    """The planted clips are MPEG-4 part 2, like the demo's: their players get a VP8 WebM."""
    playable = client.get("/media/video/0/play")
    assert playable.status_code == 200 and playable.headers["content-type"] == "video/webm"
    assert playable.content[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM
    image = client.get("/media/image/0/play")
    assert image.content == client.get("/media/image/0").content


def test_media_of_a_row_whose_file_is_gone_is_a_404_saying_so(client, collection):
    path = Path(collection.records[7]["audio"])
    hidden = path.with_suffix(".moved")
    path.rename(hidden)
    try:
        row = next(r for r in range(8) if client.get(f"/media/audio/{r}").status_code == 404)
        assert "indexed from a file that is gone" in client.get(f"/media/audio/{row}").json()["detail"]
    finally:
        hidden.rename(path)


def test_the_page_links_the_report_of_the_run_around_the_model_only_when_there_is_one(client, collection):
    assert client.get("/api/info").json()["report"] is None
    assert "oneencoder report" in client.get("/report").json()["detail"]
    (collection.root / HTML).write_text("<html>the run's figures</html>")  # the pipeline's output around the model
    try:
        with TestClient(create_app(collection.model, collection.index)) as with_report:
            assert with_report.get("/api/info").json()["report"] == "/report"
            assert with_report.get("/report").text == "<html>the run's figures</html>"
    finally:
        (collection.root / HTML).unlink()


def test_the_server_refuses_to_start_with_another_models_index(collection, tmp_path, capsys):
    from stages.cli import main

    tiny_model(seed=1).save_pretrained(tmp_path / "other")
    other = OneEncoder.from_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit) as exit:  # report_mistakes: sys.exit(message), status 1
        main(["serve", str(tmp_path / "other"), str(collection.index)])
    error = str(exit.value.code)
    assert error.startswith("oneencoder serve: ") and other.fingerprint() in error
    assert "127.0.0.1" not in capsys.readouterr().out  # it never got as far as listening


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(collection: Collection) -> Iterator[str]:
    """The app under uvicorn on a free localhost port, in a thread: what a browser talks to."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(collection.model, collection.index, max_upload_bytes=UPLOAD_LIMIT),
                            host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


def test_the_page_in_headless_chromium_shows_result_images_and_upload_errors(server, collection, tmp_path):
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: `make system-tools` installs Debian's chromium, which this test drives")
    from playwright.sync_api import expect, sync_playwright

    caption = collection.records[3]["caption"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(server)
            expect(page.locator("#about")).to_contain_text("8 image")
            page.fill("#text", caption)
            page.click("#go")
            images = page.locator("section[data-modality=image] img")
            expect(images).to_have_count(8)
            page.wait_for_function("""() => [...document.querySelectorAll('section[data-modality=image] img')]
                                       .every(img => img.complete && img.naturalWidth > 0)""", timeout=10_000)
            expect(page.locator("section[data-modality=text] .text").first).to_have_text(caption)
            expect(page.locator("section[data-modality=audio] audio")).to_have_count(8)
            expect(page.locator("section[data-modality=video] video")).to_have_count(8)
            page.wait_for_function("""() => [...document.querySelectorAll('section[data-modality=video] video')]
                                       .every(video => video.readyState >= 1 && video.videoWidth > 0)""",
                                   timeout=15_000)
            page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

            fake = tmp_path / "holiday.png"
            fake.write_bytes(b"not a picture at all")
            page.set_input_files("#file", str(fake))
            expect(page.locator("#text")).to_have_value("")
            page.click("#go")
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error")).to_contain_text("could not read the image file")
            expect(page.locator("#error")).to_contain_text("holiday.png")
        finally:
            browser.close()
