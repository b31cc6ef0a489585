"""BMP's run-length compressions (RLE8, RLE4) decoded in time linear in the file, replacing Pillow's Python decoder.

Pillow's `BmpRleDecoder` pads each end-of-line one byte at a time in a Python loop: a 17 KB RLE8 file whose
rows are 65535 pixels wide and all "end of line" took 4 s of CPU to decode. Here every operation of the
stream (a run, a literal block, an end of line, a jump) is one slice assignment, so the Python work is one
step per two bytes of the file, and `check` (the caller's cancellation and decode deadline, read from the
file object the decoder is given) is asked every CHECK_EVERY steps. The format, as Microsoft documents it:
pairs of bytes (count, value); a zero count escapes: 0 end of line, 1 end of bitmap, 2 a jump right and down
by the next two bytes, 3-255 that many literal pixels, padded to a 16-bit boundary. Pixels never written
are index 0. Decoded rows are handed to Pillow in the file's order (bottom-up unless the height was negative).
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import BmpImagePlugin, Image, ImageFile

CHECK_EVERY = 4096
HIGH_NIBBLES = bytes(b >> 4 for b in range(256))
LOW_NIBBLES = bytes(b & 0x0F for b in range(256))


def nibbles(packed: bytes, count: int) -> bytes:
    """RLE4's packed pixels, high nibble first -> one byte per pixel, the first `count`."""
    out = bytearray(2 * len(packed))
    out[0::2] = packed.translate(HIGH_NIBBLES)
    out[1::2] = packed.translate(LOW_NIBBLES)
    return bytes(out[:count])


def expand_rle(src: bytes, width: int, height: int, rle4: bool, check: Callable[[], None] | None = None) -> bytes:
    """An RLE8/RLE4 pixel stream -> width*height pixel indices, rows in the file's order.

    Where the file breaks the format, the result is Pillow's: a run is cut at its row's end, counting from
    where the row's last end of line or jump left it (a literal block may run over into the next row, and
    the runs after it in that row are then dropped); a stream that ends early leaves index 0 behind."""
    total = width * height
    out = bytearray(total)
    pos = at = steps = column = 0  # where the next pixel goes; the next byte to read; operations; the column
    while at + 1 < len(src) and pos < total:
        steps += 1
        if check is not None and steps % CHECK_EVERY == 0:
            check()
        count, value = src[at], src[at + 1]
        at += 2
        if count:  # a run
            count = max(0, min(count, width - column))
            run = bytes((value >> 4, value & 0x0F)) if rle4 else bytes((value,))
            out[pos : pos + count] = (run * count)[:count]
            pos += count
            column += count
        elif value == 0:  # end of line
            pos += -pos % width
            column = 0
        elif value == 1:  # end of bitmap
            break
        elif value == 2:  # jump right and down
            if at + 1 >= len(src):
                break
            pos += src[at] + src[at + 1] * width
            column = pos % width
            at += 2
        else:  # `value` literal pixels, then padding to a 16-bit boundary
            stored = (value + 1) // 2 if rle4 else value
            literal = src[at : at + stored]
            at += stored + (stored & 1)
            pixels = (nibbles(literal, value) if rle4 else literal)[: total - pos]
            out[pos : pos + len(pixels)] = pixels
            pos += len(pixels)
            column += value
            if len(literal) < stored:
                break
    return bytes(out)


class LinearBmpRleDecoder(ImageFile.PyDecoder):
    """Pillow's "bmp_rle" decoder name, decoded by expand_rle (args as Pillow's plugin sets them:
    raw mode, RLE4 or not, row direction)."""

    _pulls_fd = True

    def decode(self, buffer: Image.DecoderInput) -> tuple[int, int]:
        assert self.fd is not None
        check = getattr(self.fd, "check", None)  # model.imageio's checked file: the request's end, the deadline
        data = expand_rle(self.fd.read(), self.state.xsize, self.state.ysize, bool(self.args[1]), check)
        rawmode = "L" if self.mode in {"1", "L"} else "P"
        self.set_as_raw(data, rawmode, (0, self.args[-1]))
        return -1, 0


def install() -> None:
    """Decode BMP RLE with LinearBmpRleDecoder from now on (Pillow's plugin must be loaded first: it registers
    its own decoder on import)."""
    assert BmpImagePlugin.BmpImageFile is not None
    Image.register_decoder("bmp_rle", LinearBmpRleDecoder)
