"""What one request costs in memory, estimated from the image's header before any pixel is decoded.

The service admits requests by this figure (service/admission.py): the sum over the requests it runs stays
within its memory budget. The network's own activations are not counted here: they are bounded per replica
by the activation budget whoever's tiles they are, so the service reserves them once, beside the model
(service/admission.py: derived_memory_limit). The coefficients were measured with bench/request_memory.py
(peak RSS of decode, upscale and encode of one image against this estimate, docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.parts import PART_HELD_BYTES, PART_MAPS, PART_WINDOW, feature_size, part_band_rows, part_maps_bytes
from model.plan import Plan, network_of
from model.tiled import BYTES_PER_INPUT_PIXEL, tile_core
from model.tiling import AS_CONTEXT, IMDN_CONTEXT

FLOAT = 4  # bytes of a float32 sample
# The upload is held twice at its peak: the bytes read and the copy handed to the decoder (a multipart form
# once more, as its parsed field).
INPUT_COPIES = 3
# Band rows of a resize stage, and the fewest an output band has (model/engine.py).
RESIZE_BAND_ROWS = 256
# Float bands alive at once: one computing, one handed over (prefetched), one being converted and encoded.
BANDS_IN_FLIGHT = 3
# Headroom over the sum of the parts: allocator fragmentation and small buffers (measured ratios, below 1.0
# with this factor on every case of bench/request_memory.py).
HEADROOM = 1.15


@dataclass(frozen=True)
class ImageLayout:
    """What the header says about the pixels: size as stored, samples per pixel and bits per sample."""

    height: int
    width: int
    channels: int  # as decoded: 1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha
    bits: int  # 8 or 16

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def planes(self) -> int:
        """Planes of the decoded picture: colour is always three (gray is expanded), alpha one more."""
        return 3 + self.alpha

    @property
    def sample_bytes(self) -> int:
        """A picture sample: uint8 for 8-bit images, float32 otherwise (model/picture.py)."""
        return 1 if self.bits == 8 else FLOAT


def layout_from_mode(height: int, width: int, mode: str, transparency: bool, sixteen_bit: bool) -> ImageLayout:
    """The layout a decoded image of Pillow `mode` gets (model/picture.py's conversions); `transparency`: a
    palette or colour key that becomes alpha; `sixteen_bit`: a 16-bit PNG (Pillow shows its mode as 8-bit)."""
    gray = mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
    alpha = "A" in mode or "a" in mode or transparency
    bits = 16 if sixteen_bit or mode.startswith("I") or mode == "F" else 8
    return ImageLayout(height, width, (1 if gray else 3) + alpha, bits)


def decode_bytes(layout: ImageLayout) -> int:
    """Peak while decoding, the finished picture included (model/imageio.py: decode).

    16-bit: two 8-bit passes of Pillow's inflate (4 bytes a pixel each), the uint16 samples, then float32
    samples twice (the division makes a copy) or once beside the picture's planes. 8-bit: Pillow's image (4
    bytes a pixel), a conversion of it (palettes, CMYK), the array copied out of it, the planes.
    """
    p, c = layout.pixels, layout.channels
    if layout.bits == 16:
        return p * (2 * 4 + 2 * c + max(8 * c, 4 * c + FLOAT * layout.planes))
    return p * (4 + 4 + 2 * c + layout.planes)


def picture_bytes(layout: ImageLayout) -> int:
    """The decoded picture, held until the response ends."""
    return layout.pixels * layout.planes * layout.sample_bytes


def _band_rows(plan: Plan, budget_bytes: int) -> int:
    """Output rows of the engine's bands for the last network stage of `plan` (one tile row)."""
    model = next((s.model for s in reversed(plan.stages) if s.model is not None), None)
    if model is None:
        return RESIZE_BAND_ROWS
    network = network_of(model)
    context = AS_CONTEXT if network == "as" else IMDN_CONTEXT
    core = tile_core(network, budget_bytes, context)
    scale = 1 if network == "as" else int(network[1:])
    return max(RESIZE_BAND_ROWS, core * scale)


def parts_bytes(size: tuple[int, int], bands: dict[str, int]) -> int:
    """IMDN_AS in parts (model/parts.py): the maps held between the parts, and a band's outputs over the whole
    width (the windows' own activations are the runner's, within its budget)."""
    cols = feature_size(size)[1]
    maps = part_maps_bytes(size, PART_MAPS + ("tail_held" in bands))
    return maps + max(rows * cols * PART_HELD_BYTES[kind] for kind, rows in bands.items())


def engine_bytes(plan: Plan, layout: ImageLayout, budget_bytes: int, parts_budget_bytes: int) -> int:
    """The engine's own memory beside the picture: IMDN_AS's maps held between its parts (or its pre-scaled
    image when it runs whole), a network stage's whole result when another stage reads it, and the output
    bands in flight with their alpha and integer conversion."""
    total = 0
    for index, stage in enumerate(plan.stages):
        h, w = stage.size
        if stage.model is not None and network_of(stage.model) == "as":
            if h * w * BYTES_PER_INPUT_PIXEL["as"] <= budget_bytes:
                total = max(total, 3 * h * w * 3 * FLOAT)  # pre-scaled input, ACS patches, result
            elif bands := part_band_rows((h, w), parts_budget_bytes, PART_WINDOW):
                total = max(total, parts_bytes((h, w), bands))
        if stage.model is not None and index < len(plan.stages) - 1:
            total = max(total, 2 * h * w * 3 * FLOAT)  # its bands, then them joined
    out_h, out_w = plan.out_size
    rows = min(out_h, _band_rows(plan, budget_bytes))
    band = rows * out_w * (3 * FLOAT + (FLOAT if layout.alpha else 0))
    return total + BANDS_IN_FLIGHT * band


def encoder_bytes(plan: Plan, layout: ImageLayout, fmt: str) -> int:
    """PNG streams band by band (within the bands above). WebP and JPEG hold the whole output: its bands, them
    joined, Pillow's image of it (4 bytes a pixel) and the encoded bytes."""
    if fmt == "png":
        return 0
    out_pixels = plan.out_size[0] * plan.out_size[1]
    sample = 2 if layout.bits == 16 else 1
    return out_pixels * (2 * layout.channels * sample + 4 + 4)


def request_bytes(plan: Plan, layout: ImageLayout, input_bytes: int, fmt: str, budget_bytes: int,
                  parts_budget_bytes: int | None = None) -> int:
    """Peak memory one request needs, beyond the model and its replicas' activations: the upload, the decode
    (its transient peak, then the picture it leaves), the engine's bands and maps, the encoder."""
    parts_budget = parts_budget_bytes or budget_bytes
    work = picture_bytes(layout) + engine_bytes(plan, layout, budget_bytes, parts_budget) + \
        encoder_bytes(plan, layout, fmt)
    peak = max(decode_bytes(layout), work)
    return math.ceil(HEADROOM * (INPUT_COPIES * input_bytes + peak))


# An animation is written whole: every upscaled frame and the writer's own copies, at most 13.7 bytes per
# output pixel over all frames (APNG; GIF 13.0, WebP 10.2: bench/animation_memory.py, docs/architecture.md).
ANIMATION_BYTES_PER_OUTPUT_PIXEL = 14


def animation_bytes(plan: Plan, frames: int) -> int:
    """What an animation holds beyond one frame's request_bytes(): all its frames at the output size."""
    return ANIMATION_BYTES_PER_OUTPUT_PIXEL * frames * plan.out_size[0] * plan.out_size[1]
