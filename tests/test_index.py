"""The faiss index and search: planted matches come first (exact and approximate), another model's
queries are refused, the id mapping survives a save and load, and the CLI's JSON ranks."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import pytest
import torch

from oneencoder import OneEncoder
from oneencoder.embeddings import FORMAT, FORMAT_VERSION, Shard, write_header, write_shard
from oneencoder.index import (
    IndexFolderError,
    IndexModelMismatchError,
    SearchIndex,
    build_index,
    embed_query,
    search_model,
)
from oneencoder.readers import MediaError
from stages.cli import main
from tests.conftest import tiny_model_config

QUERY = "red circle"
PLANTED_ROW = 137


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    vectors = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(vectors, dim=1)


def write_embeddings(folder: Path, model_folder: Path, fingerprint: str, tables: dict[str, torch.Tensor]) -> Path:
    """An embeddings folder as `oneencoder embed` writes it (one shard per modality), rows m-0, m-1, ..."""
    modalities = {}
    for modality, vectors in tables.items():
        rows = [{"id": f"{modality}-{i}", "modality": modality, "source": f"/media/{modality}/{i}.png"}
                for i in range(len(vectors))]
        write_shard(folder, modality, 0, Shard(vectors, rows, {}, 0))
        modalities[modality] = {"items": len(vectors), "shards": 1, "skipped": {}, "from_cache": 0}
    write_header(folder, {"format": FORMAT, "format_version": FORMAT_VERSION, "model": str(model_folder),
                          "model_fingerprint": fingerprint, "dim": next(iter(tables.values())).shape[1],
                          "source": "planted", "complete": True, "modalities": modalities})
    return folder


@pytest.fixture
def model_folder(tiny_model: OneEncoder, tmp_path: Path) -> Path:
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def model(model_folder: Path) -> OneEncoder:
    """The saved model as `embed` and `search` load it (its fingerprint is the folder's, not the
    in-memory model's: a saved encoder is identified by its files)."""
    return OneEncoder.from_pretrained(model_folder)


@pytest.fixture
def planted(model: OneEncoder, model_folder: Path, tmp_path: Path) -> Path:
    """Random image and text vectors, with the query's own embedding planted at image row PLANTED_ROW."""
    dim = model.config.embed_dim
    images = unit(2000, dim, seed=1)
    images[PLANTED_ROW] = embed_query(model, "text", QUERY)[0]
    tables = {"image": images, "text": unit(50, dim, seed=2)}
    return write_embeddings(tmp_path / "embeddings", model_folder, model.fingerprint(), tables)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_planted_match_comes_first(model: OneEncoder, planted: Path, tmp_path: Path, kind: str) -> None:
    approximate_above = 10**6 if kind == "exact" else 100
    build_index(planted, tmp_path / "index", approximate_above, kind="ivf" if kind == "ivf" else "hnsw")
    index = SearchIndex.load(tmp_path / "index")
    assert index.info["modalities"]["image"]["kind"] == kind

    results = search_model(index, model, "text", QUERY, ["image"], k=5)

    hits = results["image"]
    assert [hit.row for hit in hits][0] == PLANTED_ROW
    assert hits[0].id == f"image-{PLANTED_ROW}" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[1].score < 0.9  # random vectors are far from the query: the first place was earned
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_approximate_index_above_the_threshold(planted: Path, tmp_path: Path) -> None:
    build_index(planted, tmp_path / "index", approximate_above=50)  # image: 2000 items, text: exactly 50
    index = SearchIndex.load(tmp_path / "index")
    kinds = {m: described["kind"] for m, described in index.info["modalities"].items()}
    assert kinds == {"image": "hnsw", "text": "exact"}
    assert isinstance(index.indexes["image"], faiss.IndexHNSWFlat)
    assert isinstance(index.indexes["text"], faiss.IndexFlatIP)
    assert index.indexes["image"].hnsw.efSearch == index.info["modalities"]["image"]["params"]["efSearch"]


def test_id_mapping_survives_save_and_load(model: OneEncoder, planted: Path, tmp_path: Path) -> None:
    build_index(planted, tmp_path / "index", approximate_above=100)
    index = SearchIndex.load(tmp_path / "index")
    text = unit(50, model.config.embed_dim, seed=2)

    hits = index.search(text[[7, 3, 42]], "text", k=1)

    assert [h[0].id for h in hits] == ["text-7", "text-3", "text-42"]
    assert [h[0].row for h in hits] == [7, 3, 42]
    assert index.row("text", 42) == {"id": "text-42", "modality": "text", "source": "/media/text/42.png"}
    assert index.model_fingerprint == model.fingerprint() and index.dim == model.config.embed_dim
    assert len(index.search(text[:1], "text", k=500)[0]) == 50  # k beyond the collection: all of it, no padding


def test_index_from_another_model_is_refused(planted: Path, tmp_path: Path) -> None:
    build_index(planted, tmp_path / "index")
    index = SearchIndex.load(tmp_path / "index")
    torch.manual_seed(1)
    other = OneEncoder(tiny_model_config()).eval()

    with pytest.raises(IndexModelMismatchError) as refused:
        search_model(index, other, "text", QUERY, None, k=3)

    message = str(refused.value)
    assert index.model_fingerprint in message and other.fingerprint() in message
    assert "--model" in message and "oneencoder embed" in message


def test_cli_search_json_ranks(planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["index", str(planted), str(tmp_path / "index")])
    capsys.readouterr()

    main(["search", str(tmp_path / "index"), "--text", QUERY, "--k", "4", "--json"])

    output = json.loads(capsys.readouterr().out)
    assert set(output["results"]) == {"image", "text"}
    image = output["results"]["image"]
    assert [hit["rank"] for hit in image] == [1, 2, 3, 4]
    assert image[0]["id"] == f"image-{PLANTED_ROW}" and image[0]["source"] == f"/media/image/{PLANTED_ROW}.png"
    assert [hit["score"] for hit in image] == sorted((hit["score"] for hit in image), reverse=True)


def test_cli_search_text_table_and_modality_choice(planted: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    build_index(planted, tmp_path / "index")

    main(["search", str(tmp_path / "index"), "--text", QUERY, "--modality", "image", "--k", "2"])

    output = capsys.readouterr().out
    assert "image (2000 items, exact index)" in output and "text (" not in output
    first = next(line for line in output.splitlines() if line.strip().startswith("1 "))
    assert f"image-{PLANTED_ROW}" in first and f"/media/image/{PLANTED_ROW}.png" in first


def test_cli_refuses_another_model(planted: Path, tmp_path: Path) -> None:
    build_index(planted, tmp_path / "index")
    torch.manual_seed(1)
    OneEncoder(tiny_model_config()).save_pretrained(tmp_path / "other")

    with pytest.raises(SystemExit) as refused:
        main(["search", str(tmp_path / "index"), "--text", QUERY, "--model", str(tmp_path / "other")])

    assert str(refused.value).startswith("oneencoder search: ") and "cannot be compared" in str(refused.value)


def test_bad_query_file_is_a_media_error(model: OneEncoder, planted: Path, tmp_path: Path) -> None:
    build_index(planted, tmp_path / "index")
    index = SearchIndex.load(tmp_path / "index")
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"these bytes are no PNG")

    with pytest.raises(MediaError, match="not-an-image.png"):
        search_model(index, model, "image", bad, None, k=3)
    with pytest.raises(MediaError, match="does not exist"):
        search_model(index, model, "image", tmp_path / "missing.png", None, k=3)
    with pytest.raises(SystemExit, match="not-an-image.png"):
        main(["search", str(tmp_path / "index"), "--image", str(bad)])


def test_exactly_one_query(planted: Path, tmp_path: Path) -> None:
    build_index(planted, tmp_path / "index")
    for words in ([], ["--text", QUERY, "--image", "x.png"]):
        with pytest.raises(SystemExit, match="exactly one query"):
            main(["search", str(tmp_path / "index"), *words])


def test_unfinished_index_folder_is_named(planted: Path, tmp_path: Path) -> None:
    build_index(planted, tmp_path / "index")
    (tmp_path / "index" / "image.jsonl").write_text('{"id": "only one row"}\n')

    with pytest.raises(IndexFolderError, match="image index holds 2000 vectors .* rows file 1 rows"):
        SearchIndex.load(tmp_path / "index")
    (tmp_path / "index" / "index.json").unlink()
    with pytest.raises(IndexFolderError, match="no index.json"):
        SearchIndex.load(tmp_path / "index")
