"""SVG drawn to PNG in this process by librsvg, the library `rsvg-convert` is built on.

The demo's corpus draws about 11,000 SVGs; starting `rsvg-convert` for each costs about 20 ms, the
drawing itself 2 ms. No Python package binds librsvg without a compiler (PyGObject builds from
source), and another renderer (cairosvg, resvg) would draw other pixels, so this calls the same
functions `rsvg-convert -w N -h N --background-color white` calls, through ctypes: the same library
writes the same PNG files, byte for byte (tested against the tool). Debian's `librsvg2-2` (which
`librsvg2-bin` depends on) ships the library; librsvg 2.52 or later.

librsvg and cairo are safe to call from several threads on separate handles and surfaces, and ctypes
releases the GIL during each call, so a thread pool draws on every core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from ctypes import POINTER, byref, c_char_p, c_double, c_int, c_size_t, c_uint32, c_void_p
from pathlib import Path

CAIRO_FORMAT_ARGB32 = 0
LIBRARY_HINT = "install librsvg: `apt-get install librsvg2-bin` (Debian/Ubuntu; it brings librsvg2-2)"


class SvgError(RuntimeError):
    """librsvg could not read or draw a document, or is not installed."""


class _Rectangle(ctypes.Structure):
    _fields_ = [("x", c_double), ("y", c_double), ("width", c_double), ("height", c_double)]


class _Length(ctypes.Structure):
    _fields_ = [("length", c_double), ("unit", c_int)]


class _GError(ctypes.Structure):
    _fields_ = [("domain", c_uint32), ("code", c_int), ("message", c_char_p)]


def _load(name: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name)
    if path is None:
        raise SvgError(f"the shared library {name!r} was not found: {LIBRARY_HINT}")
    return ctypes.CDLL(path)


def _declare(library: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> None:
    function = getattr(library, name)
    function.restype, function.argtypes = restype, list(argtypes)


@functools.cache
def _libraries() -> tuple[ctypes.CDLL, ctypes.CDLL, ctypes.CDLL]:
    """librsvg, cairo and GLib/GObject, loaded and their signatures declared once per process."""
    rsvg, cairo, gobject = _load("rsvg-2"), _load("cairo"), _load("gobject-2.0")
    if not hasattr(rsvg, "rsvg_handle_get_intrinsic_size_in_pixels"):
        raise SvgError(f"librsvg is older than 2.52: {LIBRARY_HINT}")
    error = POINTER(c_void_p)
    _declare(rsvg, "rsvg_handle_new_from_data", c_void_p, c_char_p, c_size_t, error)
    _declare(rsvg, "rsvg_handle_get_intrinsic_size_in_pixels", c_int, c_void_p, POINTER(c_double), POINTER(c_double))
    _declare(rsvg, "rsvg_handle_get_intrinsic_dimensions", None, c_void_p, POINTER(c_int), POINTER(_Length),
             POINTER(c_int), POINTER(_Length), POINTER(c_int), POINTER(_Rectangle))
    _declare(rsvg, "rsvg_handle_render_document", c_int, c_void_p, c_void_p, POINTER(_Rectangle), error)
    _declare(cairo, "cairo_image_surface_create", c_void_p, c_int, c_int, c_int)
    _declare(cairo, "cairo_create", c_void_p, c_void_p)
    _declare(cairo, "cairo_set_source_rgb", None, c_void_p, c_double, c_double, c_double)
    _declare(cairo, "cairo_scale", None, c_void_p, c_double, c_double)
    _declare(cairo, "cairo_surface_write_to_png", c_int, c_void_p, c_char_p)
    for name in ("cairo_paint", "cairo_destroy", "cairo_surface_destroy"):
        _declare(cairo, name, None, c_void_p)
    _declare(gobject, "g_object_unref", None, c_void_p)
    _declare(gobject, "g_error_free", None, c_void_p)
    return rsvg, cairo, gobject


def _raise_gerror(error: c_void_p, gobject: ctypes.CDLL, what: str) -> None:
    """SvgError with librsvg's own message (e.g. `rendering error: NoMemory`), the GError freed."""
    if not error:
        raise SvgError(f"{what} (librsvg gave no reason)")
    message = ctypes.cast(error, POINTER(_GError)).contents.message.decode(errors="replace")
    gobject.g_error_free(error)
    raise SvgError(f"{what}: {message}")


def _natural_size(rsvg: ctypes.CDLL, handle: int) -> tuple[float, float]:
    """The document's size in pixels (its width and height), else its viewBox's, as rsvg-convert takes it."""
    width, height = c_double(), c_double()
    if rsvg.rsvg_handle_get_intrinsic_size_in_pixels(handle, byref(width), byref(height)):
        return width.value, height.value
    has_width, has_height, has_box = c_int(), c_int(), c_int()
    box = _Rectangle()
    rsvg.rsvg_handle_get_intrinsic_dimensions(handle, byref(has_width), byref(_Length()), byref(has_height),
                                              byref(_Length()), byref(has_box), byref(box))
    if not has_box.value or box.width <= 0 or box.height <= 0:
        raise SvgError("the document has neither a size in pixels nor a viewBox")
    return box.width, box.height


def draw_png(svg: bytes, target: Path, size: int) -> None:
    """`svg` (a document's bytes) drawn at size x size (stretched to fill it), on white, into the PNG
    `target`: what `rsvg-convert -w size -h size --background-color white` writes. SvgError names what
    librsvg could not read or draw (e.g. `rendering error: NoMemory` for filters beyond its limits)."""
    rsvg, cairo, gobject = _libraries()
    error = c_void_p()
    handle = rsvg.rsvg_handle_new_from_data(svg, len(svg), byref(error))
    if not handle:
        _raise_gerror(error, gobject, "not a readable SVG document")
    surface = cairo.cairo_image_surface_create(CAIRO_FORMAT_ARGB32, size, size)
    context = cairo.cairo_create(surface)
    try:
        width, height = _natural_size(rsvg, handle)
        cairo.cairo_set_source_rgb(context, 1.0, 1.0, 1.0)
        cairo.cairo_paint(context)
        cairo.cairo_scale(context, size / width, size / height)
        if not rsvg.rsvg_handle_render_document(handle, context, byref(_Rectangle(0, 0, width, height)), byref(error)):
            _raise_gerror(error, gobject, "could not draw it")
        if cairo.cairo_surface_write_to_png(surface, str(target).encode()) != 0:
            raise SvgError(f"cairo could not write {target}")
    finally:
        cairo.cairo_destroy(context)
        cairo.cairo_surface_destroy(surface)
        gobject.g_object_unref(handle)


def check_library() -> None:
    """Fails (SvgError naming the package to install) where librsvg cannot be loaded."""
    _libraries()
