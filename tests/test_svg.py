"""SVG drawn in-process by librsvg: the very PNG files `rsvg-convert` writes, and its failures named."""

import ctypes.util
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from datamodules import svg
from datamodules.svg import SvgError, draw_png

DOCUMENTS = {
    # viewBox only (OpenMoji's files, Iconify's documents), stretched to the square
    "viewbox": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 40"><circle cx="36" cy="20" r="18"'
               ' fill="#D22F27" stroke="#000" stroke-width="2"/></svg>',
    # a size in pixels and a gradient, partly transparent
    "sized": '<svg xmlns="http://www.w3.org/2000/svg" width="30" height="50"><defs><linearGradient id="g">'
             '<stop offset="0" stop-color="#1E50A0"/><stop offset="1" stop-color="#FCEA2B" stop-opacity="0.3"/>'
             '</linearGradient></defs><rect x="2" y="2" width="26" height="46" fill="url(#g)"/></svg>',
    # Iconify's monochrome sets draw in currentColor
    "current-color": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" color="black">'
                     '<path fill="currentColor" d="M12 2L2 22h20z"/></svg>',
}


@pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="needs rsvg-convert to compare with")
@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_a_drawing_is_the_png_rsvg_convert_writes_byte_for_byte(name, tmp_path):
    document = DOCUMENTS[name].encode()
    expected = tmp_path / "tool.png"
    subprocess.run(["rsvg-convert", "-w", "48", "-h", "48", "--background-color", "white", "-o", str(expected)],
                   input=document, check=True)
    draw_png(document, tmp_path / "drawn.png", 48)
    assert (tmp_path / "drawn.png").read_bytes() == expected.read_bytes()
    pixels = np.asarray(Image.open(tmp_path / "drawn.png").convert("RGBA"))
    assert pixels.shape == (48, 48, 4) and (pixels[..., 3] == 255).all()  # opaque: drawn on white
    assert (pixels[..., :3] < 128).any() and (pixels[0, 0, :3] == 255).all()


def test_an_unreadable_or_undrawable_document_names_librsvg_s_reason(tmp_path):
    with pytest.raises(SvgError, match="not a readable SVG document: XML parse error"):
        draw_png(b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="3"', tmp_path / "a.png", 16)
    with pytest.raises(SvgError, match="neither a size in pixels nor a viewBox"):
        draw_png(b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="3"/></svg>', tmp_path / "b.png", 16)
    assert not list(tmp_path.iterdir())


def test_a_missing_library_names_the_package_to_install(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    svg._libraries.cache_clear()
    try:
        with pytest.raises(SvgError, match="'rsvg-2' was not found: install librsvg: `apt-get install librsvg2-bin`"):
            svg.check_library()
    finally:
        svg._libraries.cache_clear()
