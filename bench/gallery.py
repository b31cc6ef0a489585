"""Gallery for docs/model-card.md (one of its images heads the README): bicubic | IMDN | HR crops
from benchmark images, labelled with PSNR-Y, and camera input | IMDN_AS | camera HR crops from real pairs.

    python bench/gallery.py                                   # default weights, Set5/Set14 from ../shared
    python bench/gallery.py --weights runs/latest --threads 1
    python bench/gallery.py --images Set14/img_014 --scales 4 --crop 160 --zoom 1
    python bench/gallery.py --images --real-images cam1_02    # one real pair only

Each HR image is cropped to a multiple of s (of 4 for fractional s), shrunk by s
with the project's MATLAB bicubic, then brought back to the HR size by plain
bicubic and by the engine (the service's path: IMDN x2/x3/x4 for those exact
scales, IMDN_AS otherwise). PSNR-Y is over the whole image, border ceil(s)
shaved. The crop is the HR window with the most detail (gradient energy), the
same for every scale of one image. Writes docs/gallery/<set>_<image>_x<s>.png
and prints a Markdown snippet (progress goes to stderr).

Real pairs (``--real``, the RealSR layout): the camera's low-resolution shot at
HR size, as the engine's bicubic pre-scaling hands it to IMDN_AS, then IMDN_AS,
then the camera's high-resolution shot; RGB PSNR over the whole image, border 4,
as ``python -m model.evaluate`` scores them. Writes docs/gallery/real_<image>.png.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import SHARED, models_for  # noqa: E402
from model.backends import TorchRunner, pick_device  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.evaluate import REAL_PAIR_BORDER, REAL_PAIR_LR, read_uint8, restore_same_size  # noqa: E402
from model.imageio import IMAGE_SUFFIXES  # noqa: E402
from model.imdn import IMDN_AS  # noqa: E402
from model.metrics import psnr, to_y  # noqa: E402
from model.picture import picture_from_array, to_array  # noqa: E402
from model.resize import imresize  # noqa: E402
from model.weights import WeightsError, file_sha256, resolve_weights  # noqa: E402

DEFAULT_IMAGES = ("Set5/butterfly", "Set14/img_005", "Set14/img_014")  # butterfly, comic, zebra
DEFAULT_SCALES = (2.0, 3.0, 4.0, 3.3)
DEFAULT_REAL_IMAGES = ("cam1_02", "cam2_02")  # one pair from each camera
GAP, LABEL_H, CAPTION_H = 6, 26, 22
BACKGROUND, INK, MUTED = (255, 255, 255), (20, 24, 30), (95, 102, 114)


@dataclass
class Entry:
    image: str
    scale: float
    path: Path
    models: str
    psnr_bicubic: float
    psnr_imdn: float


def find_image(benchmarks: Path, spec: str) -> Path:
    """'Set5/butterfly' -> benchmarks/Set5/HR/butterfly.<ext>."""
    set_name, _, stem = spec.partition("/")
    hr = benchmarks / set_name / "HR"
    match = next((p for p in sorted(hr.glob(f"{stem}.*")) if p.suffix.lower() in IMAGE_SUFFIXES), None)
    if not stem or match is None:
        raise FileNotFoundError(f"no HR image {spec!r}: expected {hr}/{stem or '<name>'}.png (give SET/NAME)")
    return match


def detail_window(hr: torch.Tensor, side: int) -> tuple[int, int]:
    """(3,H,W) uint8 -> top-left (y, x) of the side x side window with the most gradient energy."""
    y = to_y(hr).float()
    energy = (y[1:, :-1] - y[:-1, :-1]).abs() + (y[:-1, 1:] - y[:-1, :-1]).abs()
    side = min(side, energy.shape[0], energy.shape[1])
    stride = 4
    pooled = F.avg_pool2d(energy[None, None], side, stride=stride)[0, 0]
    index = int(pooled.argmax())
    return index // pooled.shape[1] * stride, index % pooled.shape[1] * stride


def round_trip(upscaler: Upscaler, hr: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """HR (3,H,W) uint8 -> (cropped HR, bicubic, engine output, models used), all (3,H',W') uint8."""
    multiple = int(s) if float(s).is_integer() else 4  # exact integer scales reach the dedicated networks
    hr = hr[:, : hr.shape[1] // multiple * multiple, : hr.shape[2] // multiple * multiple].contiguous()
    h, w = hr.shape[1:]
    small = imresize(hr, size=(round(h / s), round(w / s)))
    # Bicubic back up in float, as the engine pre-scales, then rounded once: the fair baseline.
    bicubic = torch.from_numpy(to_array(imresize(small.float() / 255, size=(h, w)), None, False, 8)).permute(2, 0, 1)
    picture = picture_from_array(small.permute(1, 2, 0).numpy())
    plan = upscaler.plan(picture.size, width=w, height=h)
    sr = torch.from_numpy(upscaler.upscale_picture(picture, plan)).permute(2, 0, 1)
    return hr, bicubic, sr, "+".join(plan.models)


def panel(crops: list[tuple[torch.Tensor, str]], zoom: int, caption: str) -> Image.Image:
    """Side-by-side labelled crops, each enlarged `zoom` times with nearest neighbour so pixels stay visible."""
    font = ImageFont.load_default(size=15)
    small_font = ImageFont.load_default(size=12)
    tiles = [Image.fromarray(c.permute(1, 2, 0).numpy()).resize((c.shape[2] * zoom, c.shape[1] * zoom),
                                                                 Image.Resampling.NEAREST) for c, _ in crops]
    tw, th = tiles[0].size
    sheet = Image.new("RGB", (len(tiles) * tw + (len(tiles) + 1) * GAP, LABEL_H + th + CAPTION_H + GAP), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (tile, (_, label)) in enumerate(zip(tiles, crops, strict=True)):
        x = GAP + i * (tw + GAP)
        draw.text((x + 2, 5), label, fill=INK, font=font)
        sheet.paste(tile, (x, LABEL_H))
    draw.text((GAP + 2, LABEL_H + th + 5), caption, fill=MUTED, font=small_font)
    return sheet


def weights_note(spec: str) -> str:
    if spec == "random":
        return "random (untrained) weights"
    try:
        return f"weights `{spec}` (x2 sha256 {file_sha256(resolve_weights(spec, 'x2'))[:12]})"
    except (OSError, ValueError):
        return f"weights `{spec}`"


def docs_link(path: Path) -> str:
    """A link relative to docs/, where the snippets go (the path as it is when outside docs/)."""
    docs = ROOT / "docs"
    return path.resolve().relative_to(docs).as_posix() if path.resolve().is_relative_to(docs) else str(path)


def markdown(entries: list[Entry], weights: str, crop: int, zoom: int) -> str:
    lines = [
        "## Gallery",
        "",
        f"Each benchmark image is shrunk by s with MATLAB bicubic, then upscaled back. Crops of {crop} px "
        f"{'(shown ' + str(zoom) + '× with nearest neighbour) ' if zoom > 1 else ''}"
        "of bicubic, IMDN and the original; PSNR-Y over the whole image, border ceil(s) shaved. "
        f"Made with {weights_note(weights)}: `python bench/gallery.py --weights {weights}`.",
        "",
        "| Image | Scale | Model | Bicubic PSNR-Y | IMDN PSNR-Y | Gain |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for e in entries:
        lines.append(f"| {e.image} | ×{e.scale:g} | {e.models} | {e.psnr_bicubic:.2f} dB | {e.psnr_imdn:.2f} dB "
                     f"| {e.psnr_imdn - e.psnr_bicubic:+.2f} dB |")
    lines.append("")
    for e in entries:
        lines.append(f"![{e.image} ×{e.scale:g}: bicubic | IMDN | original]({docs_link(e.path)})")
    return "\n".join(lines)


def real_markdown(entries: list[Entry], weights: str) -> str:
    lines = ["", "### Real camera pairs", "",
             "The camera's own low-resolution shot, brought to the high-resolution shot's size as the engine's "
             "bicubic pre-scaling does, then IMDN_AS; right, the camera's high-resolution shot. RGB PSNR of the "
             f"whole image, border {REAL_PAIR_BORDER}. Made with `python bench/gallery.py --weights {weights}`.", "",
             "| Pair | Input RGB PSNR | IMDN_AS RGB PSNR | Gain |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {e.image} | {e.psnr_bicubic:.2f} dB | {e.psnr_imdn:.2f} dB | {e.psnr_imdn - e.psnr_bicubic:+.2f} dB |"
              for e in entries]
    lines.append("")
    lines += [f"![{e.image}: camera input | IMDN_AS | camera HR]({docs_link(e.path)})" for e in entries]
    return "\n".join(lines)


def real_pair_panel(restorer: IMDN_AS, folder: Path, name: str, crop: int, zoom: int, out_dir: Path) -> Entry:
    """One real pair -> a panel (camera input | IMDN_AS | camera HR) and its whole-image RGB PSNRs."""
    hr_path = find_image(folder.parent, f"{folder.name}/{name}")
    lr = read_uint8(folder / REAL_PAIR_LR / hr_path.name).expand(3, -1, -1).contiguous()
    hr = read_uint8(hr_path).expand(3, -1, -1).contiguous()
    sr = restore_same_size(restorer, lr)
    p_in = psnr(lr, hr, REAL_PAIR_BORDER, y_channel=False)
    p_sr = psnr(sr, hr, REAL_PAIR_BORDER, y_channel=False)
    side = min(crop, hr.shape[1], hr.shape[2])
    y, x = detail_window(hr, side)
    crops = [(img[:, y : y + side, x : x + side], label) for img, label in
             ((lr, f"Camera input  {p_in:.2f} dB"), (sr, f"IMDN_AS  {p_sr:.2f} dB"), (hr, "Camera HR"))]
    out = out_dir / f"real_{name.lower()}.png"
    panel(crops, zoom, f"{folder.name}/{name} · RGB PSNR of the whole image · crop at ({x}, {y})").save(
        out, optimize=True)
    return Entry(name, 1.0, out, "as", p_in, p_sr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default",
                        help="'default' (model/weights), a folder of imdn_<name>.safetensors, or 'random'")
    parser.add_argument("--benchmarks", type=Path, default=SHARED / "data/benchmarks",
                        help="folder of sets in the <Set>/HR/<name>.png layout")
    parser.add_argument("--images", nargs="*", default=list(DEFAULT_IMAGES), metavar="SET/NAME")
    parser.add_argument("--real", type=Path, default=SHARED / "data/realsr-sample",
                        help="a folder of real pairs (HR/, LR_same_size/); skipped when absent")
    parser.add_argument("--real-images", nargs="*", default=list(DEFAULT_REAL_IMAGES), metavar="NAME")
    parser.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES))
    parser.add_argument("--crop", type=int, default=112, help="crop side in HR pixels")
    parser.add_argument("--zoom", type=int, default=2, help="nearest-neighbour enlargement of the crops")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/gallery")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all; the machine may be shared)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crop < 16 or args.zoom < 1 or any(s <= 1 or s > 8 for s in args.scales):
        parser.error("--crop must be >= 16, --zoom >= 1 and every scale in (1, 8]")
    try:
        paths = [find_image(args.benchmarks, spec) for spec in args.images]
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        models = models_for(args.weights, ["x2", "x3", "x4", "as"])
    except WeightsError as exc:
        print(f"error: {exc}\n(trained weights not there yet? pass --weights DIR, or --weights random to try "
              "the script)", file=sys.stderr)
        return 2
    # The service's default policy for clean images (the gallery's are clean benchmark images), so it shows
    # what users get with content=clean.
    upscaler = Upscaler(TorchRunner(models, pick_device(args.device)), content="clean", refine_stats=True)
    args.out.mkdir(parents=True, exist_ok=True)

    entries: list[Entry] = []
    for spec, path in zip(args.images, paths, strict=True):
        full = read_uint8(path).expand(3, -1, -1).contiguous()
        top, left = detail_window(full, args.crop)
        for s in args.scales:
            started = time.perf_counter()
            hr, bicubic, sr, used = round_trip(upscaler, full, s)
            border = math.ceil(s)
            p_bic, p_sr = psnr(bicubic, hr, border), psnr(sr, hr, border)
            side = min(args.crop, hr.shape[1], hr.shape[2])
            y, x = min(top, hr.shape[1] - side), min(left, hr.shape[2] - side)

            def cut(img: torch.Tensor, y: int = y, x: int = x, side: int = side) -> torch.Tensor:
                return img[:, y : y + side, x : x + side]

            # Panel text says "x", not "×": Pillow's bundled font has no such glyph.
            sheet = panel([(cut(bicubic), f"Bicubic  {p_bic:.2f} dB"), (cut(sr), f"IMDN ({used})  {p_sr:.2f} dB"),
                           (cut(hr), "Original (HR)")], args.zoom,
                          f"{spec} x{s:g} · PSNR-Y of the whole image · crop at ({x}, {y})")
            out = args.out / f"{spec.replace('/', '_').lower()}_x{s:g}.png"
            sheet.save(out, optimize=True)
            entries.append(Entry(spec, s, out, used, p_bic, p_sr))
            print(f"{spec} x{s:g}: bicubic {p_bic:.2f} dB, IMDN ({used}) {p_sr:.2f} dB "
                  f"[{time.perf_counter() - started:.1f} s] -> {out}", file=sys.stderr)
    print(markdown(entries, args.weights, args.crop, args.zoom))
    if args.real_images and (args.real / REAL_PAIR_LR).is_dir():
        restorer = models["as"]
        assert isinstance(restorer, IMDN_AS)
        real = []
        for name in args.real_images:
            started = time.perf_counter()
            real.append(real_pair_panel(restorer, args.real, name, args.crop, args.zoom, args.out))
            print(f"{name}: input {real[-1].psnr_bicubic:.2f} dB, IMDN_AS {real[-1].psnr_imdn:.2f} dB "
                  f"[{time.perf_counter() - started:.1f} s] -> {real[-1].path}", file=sys.stderr)
        print(real_markdown(real, args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
