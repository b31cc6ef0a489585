"""Photo metadata from an upload to its upscaled output: EXIF, XMP and IPTC read from the decoded file,
filtered by policy, rewritten for the new pixels, and bounded in size. The ICC profile travels apart
(``Picture.icc_profile``): every policy keeps it, so colours stay right. The encoders (model/encode.py)
write what this module hands them; docs/metadata.md has the table of which block goes into which format.

Policies: ``keep`` (everything), ``nogps`` (everything but location: EXIF's GPS directory, XMP's exif:GPS*
properties), ``strip`` (nothing but the ICC profile).

The pixels are always upright when they leave (orientation is applied on decoding), so an Orientation tag
becomes 1, and tags that give the image's size give the output's. A block larger than MAX_BLOCK_BYTES is
dropped, never copied into every response, and ``dropped`` says so.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

from PIL import Image

log = logging.getLogger(__name__)

MetadataPolicy = Literal["keep", "nogps", "strip"]
METADATA_POLICIES: tuple[MetadataPolicy, ...] = ("keep", "nogps", "strip")
DEFAULT_METADATA: MetadataPolicy = "nogps"  # why: docs/metadata.md#the-default

# A block fits one JPEG marker segment (65,533 bytes with its signature), so every format can carry it; a
# camera's EXIF, thumbnail included, is 10-40 KB.
MAX_BLOCK_BYTES = 64_000

EXIF_HEADER = b"Exif\x00\x00"
ORIENTATION, IMAGE_WIDTH, IMAGE_LENGTH = 0x0112, 0x0100, 0x0101
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
PIXEL_X_DIMENSION, PIXEL_Y_DIMENSION = 0xA002, 0xA003
# From a TIFF's first directory only what describes the picture: its layout tags (strips, sample format, ...)
# describe the file's storage, not the output's.
TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, ORIENTATION, 0x011A, 0x011B, 0x0128, 0x0131, 0x0132, 0x013B,
                         0x8298, EXIF_IFD, GPS_IFD)
TIFF_XMP, TIFF_IPTC = 700, 33723
PHOTOSHOP_IPTC = 0x0404  # the IPTC-IIM resource in a JPEG's Photoshop (APP13) segment


@dataclass
class Metadata:
    """EXIF ("Exif\\0\\0" and a TIFF structure, as Pillow reads and writes it), XMP (a packet of XML) and IPTC
    (IIM records), each None when absent; `dropped` lists what was left out and why."""

    exif: bytes | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None
    dropped: list[str] = field(default_factory=list)

    @property
    def blocks(self) -> list[str]:
        return [name for name in ("exif", "xmp", "iptc") if getattr(self, name)]


def _bounded(meta: Metadata, name: str, block: bytes | None) -> bytes | None:
    if block and len(block) > MAX_BLOCK_BYTES:
        meta.dropped.append(f"{name} ({len(block):,} bytes; the limit is {MAX_BLOCK_BYTES:,})")
        return None
    return block or None


def _as_bytes(value: object) -> bytes | None:
    """A tag's value as bytes: TIFF readers give bytes, a str, or a tuple of byte values."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, tuple) and all(isinstance(v, int) and 0 <= v < 256 for v in value):
        return bytes(value)
    return None


def _tiff_exif(img: Image.Image) -> bytes | None:
    """A TIFF's descriptive tags and its EXIF and GPS directories as an EXIF block of their own."""
    source = img.getexif()
    exif = Image.Exif()
    found = False
    for tag in (t for t in TIFF_DESCRIPTIVE_TAGS if t in source):
        found = True
        if tag in (EXIF_IFD, GPS_IFD):
            exif.get_ifd(tag).update(source.get_ifd(tag))
        else:
            exif[tag] = source[tag]
    return exif.tobytes() if found else None


def read_metadata(img: Image.Image) -> Metadata:
    """EXIF, XMP and IPTC of a decoded image (after load(): a PNG's eXIf may follow its pixels), each bounded.
    Never raises: an unreadable block is dropped and noted."""
    meta = Metadata()
    info = img.info
    try:
        if img.format == "TIFF":
            tags = getattr(img, "tag_v2", {})
            meta.xmp = _bounded(meta, "xmp", _as_bytes(tags.get(TIFF_XMP)))
            meta.iptc = _bounded(meta, "iptc", _as_bytes(tags.get(TIFF_IPTC)))
            meta.exif = _bounded(meta, "exif", _tiff_exif(img))
            return meta
        exif = _as_bytes(info.get("exif"))
        if exif is not None and not exif.startswith(EXIF_HEADER):
            exif = EXIF_HEADER + exif  # PNG and WebP hold the bare TIFF structure
        meta.exif = _bounded(meta, "exif", exif)
        meta.xmp = _bounded(meta, "xmp", _as_bytes(info.get("xmp") or info.get("XML:com.adobe.xmp")))
        photoshop = info.get("photoshop")
        if isinstance(photoshop, dict):
            meta.iptc = _bounded(meta, "iptc", _as_bytes(photoshop.get(PHOTOSHOP_IPTC)))
    except Exception as exc:  # noqa: BLE001 - metadata is a courtesy: damage in it never fails the image
        meta.dropped.append(f"unreadable metadata ({type(exc).__name__})")
        log.info("dropped unreadable metadata: %s", exc)
    return meta


# XMP as cameras and editors write it: properties as attributes (tiff:Orientation="6") or as elements
# (<tiff:Orientation>6</tiff:Orientation>).
def _xmp_property(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb'(\b%s\s*=\s*")[^"]*(")|(<%s>)[^<]*(</%s>)' % (name, name, name))


XMP_ORIENTATION = _xmp_property(rb"tiff:Orientation")
XMP_WIDTHS = [_xmp_property(rb"exif:PixelXDimension"), _xmp_property(rb"tiff:ImageWidth")]
XMP_HEIGHTS = [_xmp_property(rb"exif:PixelYDimension"), _xmp_property(rb"tiff:ImageLength")]
# XMP's GPS properties are all simple values (text, rationals, coordinates). Every pattern here stops at the
# next quote or tag, so a hostile packet costs linear time (a lazy `.*?` to a closing tag was quadratic: 6 s
# for 64 KB of unclosed <exif:GPSa>).
XMP_GPS = re.compile(rb'\sexif:GPS\w+\s*=\s*"[^"]*"|<(exif:GPS\w+)(?:\s[^<>]*)?(?:/>|>[^<]*</\1>)')


def _set_xmp(pattern: re.Pattern[bytes], xmp: bytes, value: int) -> bytes:
    text = str(value).encode()
    return pattern.sub(lambda m: (m[1] + text + m[2]) if m[1] else (m[3] + text + m[4]), xmp)


def _rewrite_xmp(xmp: bytes, policy: MetadataPolicy, width: int, height: int) -> bytes:
    if policy == "nogps":
        xmp = XMP_GPS.sub(b"", xmp)
    xmp = _set_xmp(XMP_ORIENTATION, xmp, 1)
    for pattern in XMP_WIDTHS:
        xmp = _set_xmp(pattern, xmp, width)
    for pattern in XMP_HEIGHTS:
        xmp = _set_xmp(pattern, xmp, height)
    return xmp


def _rewrite_exif(block: bytes, policy: MetadataPolicy, width: int, height: int) -> bytes | None:
    """The EXIF block for the output; None when no tag is left. Its thumbnail (IFD1, a picture of the input)
    is not carried."""
    exif = Image.Exif()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns of damage it skips; the block is dropped below instead
        exif.load(block)
    if not len(exif):
        raise ValueError("no tag could be read")
    if policy == "nogps" and GPS_IFD in exif:
        del exif[GPS_IFD]
    if ORIENTATION in exif:
        exif[ORIENTATION] = 1
    for tag, value in ((IMAGE_WIDTH, width), (IMAGE_LENGTH, height)):
        if tag in exif:
            exif[tag] = value
    if EXIF_IFD in exif:
        sub = exif.get_ifd(EXIF_IFD)
        for tag, value in ((PIXEL_X_DIMENSION, width), (PIXEL_Y_DIMENSION, height)):
            if tag in sub:
                sub[tag] = value
    return exif.tobytes() if len(exif) else None


def metadata_for_output(meta: Metadata | None, policy: MetadataPolicy, width: int, height: int,
                        fmt: str) -> Metadata:
    """What goes into a (width x height) output in `fmt` under `policy`: filtered, rewritten, re-bounded.
    Never raises: an EXIF block that does not parse is dropped and noted, as is IPTC outside JPEG."""
    if meta is None or policy == "strip":
        return Metadata()  # nothing asked for, so nothing was left out
    out = replace(meta, dropped=list(meta.dropped))
    if out.iptc and fmt != "jpeg":
        out.iptc = None
        out.dropped.append(f"iptc ({fmt.upper()} has no place for it)")
    if out.exif:
        try:
            out.exif = _bounded(out, "exif", _rewrite_exif(out.exif, policy, width, height))
        except Exception as exc:  # noqa: BLE001 - a damaged EXIF block is left out, the image still goes
            out.exif = None
            out.dropped.append(f"exif (unreadable: {type(exc).__name__})")
            log.info("dropped an unreadable EXIF block: %s", exc)
    if out.xmp:
        out.xmp = _bounded(out, "xmp", _rewrite_xmp(out.xmp, policy, width, height))
    return out


# --- writing: the blocks as each format holds them -------------------------------------------------------

def png_chunks(meta: Metadata) -> list[tuple[bytes, bytes]]:
    """(chunk type, payload) for a PNG: eXIf holds the bare TIFF structure, XMP goes into an uncompressed
    iTXt with the keyword Adobe defines. PNG has no place for IPTC."""
    chunks = []
    if meta.exif:
        chunks.append((b"eXIf", meta.exif.removeprefix(EXIF_HEADER)))
    if meta.xmp:
        # keyword, NUL, compression flag 0, method 0, empty language tag and translated keyword, each NUL-ended
        chunks.append((b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta.xmp))
    return chunks


def _jpeg_iptc_segment(iptc: bytes) -> bytes:
    """An APP13 segment holding the IPTC records as Photoshop's image resource 0x0404, as Pillow reads it."""
    resource = b"8BIM" + struct.pack(">H", PHOTOSHOP_IPTC) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    if len(iptc) % 2:
        resource += b"\x00"
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def save_options(meta: Metadata, fmt: str) -> dict[str, bytes]:
    """Pillow save() arguments that write the blocks into a JPEG, WebP or AVIF (IPTC: JPEG only)."""
    options = {}
    if meta.exif:  # WebP's EXIF chunk holds the bare TIFF structure, as PNG's eXIf does
        options["exif"] = meta.exif.removeprefix(EXIF_HEADER) if fmt == "webp" else meta.exif
    if meta.xmp:
        options["xmp"] = meta.xmp
    if meta.iptc and fmt == "jpeg":
        options["extra"] = _jpeg_iptc_segment(meta.iptc)
    return options
