"""imdn-sr: the local command-line tool.

    imdn-sr upscale photo.jpg scans/ --scale 3.5 -o out/
    imdn-sr upscale in.png --width 1920 -o out/ --format webp
    imdn-sr upscale in.png --width 1920 --height 1080 --fit contain -o out/
    imdn-sr upscale phone.jpg --scale 1 -o out/   (same size: IMDN_AS, no enlarging)
    imdn-sr evaluate --weights default --data ../shared/data/benchmarks
    imdn-sr train --scale 2 --out runs/x2
    imdn-sr calibrate my_pairs/ -o my_camera.safetensors   (fine-tune IMDN_AS on your camera's own pairs)
    imdn-sr remote in.png --url http://127.0.0.1:8000 --scale 2 -o out/   (send to a running service)
    imdn-sr sign https://img.example.com/cat.jpg --scale 2 --base https://sr.example.com   (a signed <img> link)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from model.animation import ANIMATION_OUTPUTS, Animation, decoded_frames, encode_animation, open_animation
from model.backends import BACKENDS, OnnxRunner, TorchRunner, load_models, pick_device, uses_onnx
from model.encode import encode_png_stream, encode_whole
from model.engine import Upscaler
from model.imageio import IMAGE_SUFFIXES, decode
from model.metadata import DEFAULT_METADATA, METADATA_POLICIES, metadata_for_output
from model.parts import part_window_for
from model.picture import ImageDecodeError, ImageTooLargeError
from model.plan import (
    ANY_SCALE_METHODS,
    CONTENT_KINDS,
    DEFAULT_ANY_SCALE,
    DEFAULT_CONTENT,
    DEFAULT_FIT,
    DEFAULT_FRAMES,
    DEFAULT_MAX_SCALE,
    DEFAULT_MODEL,
    DEFAULT_SCALE,
    FIT_MODES,
    FRAME_CHOICES,
    MODEL_CHOICES,
    Plan,
    UpscaleError,
)
from model.weights import WeightsError

# The CLI also takes GIFs (every frame of an animation, or the first with --frames first).
CLI_SUFFIXES = IMAGE_SUFFIXES | {".gif"}


def expand_inputs(inputs: list[Path]) -> tuple[list[Path], dict[Path, str]]:
    """Files as given; folders -> the images directly inside them, sorted. Also what was left out, and why."""
    files: list[Path] = []
    skipped: dict[Path, str] = {}
    for path in inputs:
        if path.is_dir():
            for entry in sorted(path.iterdir()):
                if entry.is_dir():
                    skipped[entry] = "a folder (only the images directly inside a given folder are read)"
                elif entry.suffix.lower() not in CLI_SUFFIXES:
                    skipped[entry] = f"not an image file name (takes {', '.join(sorted(CLI_SUFFIXES))})"
                else:
                    files.append(entry)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files, skipped


def make_runner(models: list[str], weights: str, device: str, backend: str) -> OnnxRunner | TorchRunner:
    loaded = load_models(models, weights)
    target = pick_device(device)
    if uses_onnx(target, backend):
        return OnnxRunner(loaded, threads=torch.get_num_threads())
    return TorchRunner(loaded, target)


def output_name(path: Path, args: argparse.Namespace) -> str:
    tag = f"x{args.scale:g}" if args.scale is not None else f"{args.width or ''}x{args.height or ''}"
    return f"{path.stem}_{tag}.{args.format}"


def upscale_animation(upscaler: Upscaler, animation: Animation, args: argparse.Namespace, target: Path) -> Plan:
    """Every frame of an animated GIF/WebP/PNG upscaled, written as one animation (APNG, WebP or GIF)."""
    plan = upscaler.plan(animation.size, args.scale, args.width, args.height, args.model, fit=args.fit)
    if args.format not in ANIMATION_OUTPUTS:
        raise UpscaleError(f"{args.format} cannot hold an animation: use --format png (APNG), webp or gif, or "
                           "--frames first")
    images, durations = [], []
    for picture, duration in decoded_frames(animation):
        images.append(Image.fromarray(upscaler.upscale_picture(picture, plan)))
        durations.append(duration)
    target.write_bytes(encode_animation(images, durations, animation.loop, args.format, args.quality,
                                        args.png_level, animation.icc_profile))
    return plan


def upscale_command(args: argparse.Namespace) -> int:
    files, skipped = expand_inputs(args.inputs)
    for path, reason in skipped.items():
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    if not files:
        print("error: no images found", file=sys.stderr)
        return 2
    if args.scale is None and args.width is None and args.height is None:
        args.scale = DEFAULT_SCALE
    runner = make_runner(["x2", "x3", "x4", "as"], args.weights, args.device, args.backend)
    device = runner.device if isinstance(runner, TorchRunner) else torch.device("cpu")
    # A local tool has time for exact statistics on every tiled pass (the service refines IMDN_AS's only).
    upscaler = Upscaler(runner, budget_bytes=args.memory_mb * 2**20, max_scale=args.max_scale, refine_stats=True,
                        any_scale=args.any_scale, content=args.content, part_window=part_window_for(device))
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in tqdm(files, desc="upscale", unit="img", disable=len(files) < 2 or not sys.stderr.isatty()):
        target = args.out / output_name(path, args)
        try:
            data = path.read_bytes()
            animation = open_animation(data, args.max_pixels) if args.frames == "all" else None
            if animation is not None:
                partial = target.with_suffix(target.suffix + ".part")
                plan = upscale_animation(upscaler, animation, args, partial)
                partial.replace(target)
                tqdm.write(f"{path} -> {target} ({plan.out_size[1]}x{plan.out_size[0]}, {plan.label}, "
                           f"{animation.frames} frames)")
                continue
            picture = decode(data, args.max_pixels)
            plan = upscaler.plan(picture.size, args.scale, args.width, args.height, args.model, fit=args.fit)
            bands = upscaler.picture_bands(picture, plan)
            metadata = metadata_for_output(picture.metadata, args.metadata, plan.out_size[1], plan.out_size[0],
                                           args.format)
            partial = target.with_suffix(target.suffix + ".part")
            with partial.open("wb") as out:
                if args.format == "png":  # streamed: memory stays at one band even for huge outputs
                    for chunk in encode_png_stream(bands, plan.out_size[1], plan.out_size[0], picture.channels,
                                                   picture.bits, args.png_level, picture.icc_profile,
                                                   metadata=metadata):
                        out.write(chunk)
                else:
                    import numpy as np

                    out.write(encode_whole(np.concatenate(list(bands)), args.format, args.quality,
                                           picture.icc_profile, metadata))
            partial.replace(target)
            flattened = ", alpha flattened onto white" if args.format == "jpeg" and picture.alpha is not None else ""
            dropped = f", metadata left out: {'; '.join(metadata.dropped)}" if metadata.dropped else ""
            tqdm.write(f"{path} -> {target} ({plan.out_size[1]}x{plan.out_size[0]}, {plan.label}{flattened}{dropped})")
        except (ImageDecodeError, ImageTooLargeError, UpscaleError, OSError) as exc:
            failures += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
        finally:
            runner.release_memory()  # the next image's tiles have other shapes
    print(f"{len(files) - failures} written, {len(skipped)} skipped, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Subcommands that own their own parsers.
    if argv[:1] == ["evaluate"]:
        from model.evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv[:1] == ["train"]:
        from model.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["calibrate"]:
        from model.calibrate import calibrate_main

        return calibrate_main(argv[1:])
    if argv[:1] == ["sign"]:
        from model.links import sign_main

        return sign_main(argv[1:])
    if argv[:1] == ["remote"]:
        from sr_client.cli import main as remote_main

        return remote_main(argv[1:], prog="imdn-sr remote")

    parser = argparse.ArgumentParser(prog="imdn-sr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("evaluate", help="PSNR/SSIM on benchmark folders (python -m model.evaluate)")
    sub.add_parser("train", help="train weights (python -m model.train)")
    sub.add_parser("calibrate", help="fine-tune IMDN_AS on your own camera's pairs")
    sub.add_parser("remote", help="send images to a running service")
    sub.add_parser("sign", help="print a signed GET link to the upscaled image at a URL (for <img src>)")
    up = sub.add_parser("upscale", help="upscale images or folders of images locally")
    up.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    size = up.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help=f"scale factor (default {DEFAULT_SCALE:g}); 1 runs IMDN_AS on a "
                      "photo at its own size (no enlarging; --content photo only)")
    size.add_argument("--width", type=int, help="target width (keeps aspect unless --height)")
    up.add_argument("--height", type=int, help="target height")
    up.add_argument("--fit", choices=FIT_MODES, default=DEFAULT_FIT,
                    help="with --width and --height: 'fill' exactly (default), 'contain' (largest inside, aspect "
                         "kept) or 'cover' (fill, aspect kept, centre cropped)")
    up.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    up.add_argument("--model", choices=MODEL_CHOICES, default=DEFAULT_MODEL)
    up.add_argument("--format", choices=["png", "webp", "jpeg", "avif", "gif"], default="png")
    up.add_argument("--frames", choices=FRAME_CHOICES, default=DEFAULT_FRAMES,
                    help="animated GIF/WebP/PNG: 'all' frames, durations and loop kept (out as APNG, WebP or GIF), "
                         "or the 'first' only")
    up.add_argument("--quality", type=int, default=90, help="WebP/JPEG/AVIF quality")
    up.add_argument("--metadata", choices=METADATA_POLICIES, default=DEFAULT_METADATA,
                    help="EXIF/XMP/IPTC in the outputs: keep, nogps (all but location), strip (ICC profile only); "
                         "docs/metadata.md")
    up.add_argument("--png-level", type=int, default=1,
                    help="PNG deflate level: 0 stored, 1-3 ISA-L (several times faster than zlib), 4-9 zlib")
    up.add_argument("--weights", default="default", help="'default', 'official:DIR' or a folder")
    up.add_argument("--device", default="auto")
    up.add_argument("--backend", choices=BACKENDS, default="auto")
    up.add_argument("--threads", type=int, help="CPU threads")
    up.add_argument("--memory-mb", type=int, default=512, help="activation memory budget per network call")
    up.add_argument("--max-scale", type=float, default=DEFAULT_MAX_SCALE)
    up.add_argument("--content", choices=CONTENT_KINDS, default=DEFAULT_CONTENT,
                    help="model auto: 'photo' (IMDN_AS up to 4x, fine-tuned on real camera pairs: +0.93 dB by "
                         "leave-one-out, docs/model-card.md) "
                         "or 'clean' (already sharp images: x2/x3/x4 for exact scales, else --any-scale)")
    up.add_argument("--any-scale", choices=ANY_SCALE_METHODS, default=DEFAULT_ANY_SCALE,
                    help="clean content, non-integer scales: 'as' (bicubic + IMDN_AS), 'downscale' (next integer "
                         "IMDN, bicubic down)")
    up.add_argument("--max-pixels", type=int, default=None, help="refuse inputs larger than this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return upscale_command(args)
    except (WeightsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
