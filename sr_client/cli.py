"""Command line: upscale files and folders through a running service.

    python -m sr_client photos/ extra.jpg --url http://127.0.0.1:8000 --scale 2 -o out/

Exit status: 0 when every image was upscaled, 1 when some failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from model.plan import CONTENT_KINDS, DEFAULT_MODEL, FIT_MODES, FRAME_CHOICES, is_model_choice
from sr_client.client import DEFAULT_URL, FORMATS, METADATA, MODELS, RetryPolicy, upscale_folder


def build_parser(prog: str = "python -m sr_client") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Upscale images with a running IMDN service.")
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders (non-images are skipped)")
    parser.add_argument("--url", default=os.environ.get("IMDN_SR_URL", DEFAULT_URL),
                        help="service base URL (default: $IMDN_SR_URL or %(default)s)")
    size = parser.add_argument_group("size", "give --scale, or --width and/or --height (default: --scale 2)")
    size.add_argument("--scale", type=float,
                      help="scale factor, e.g. 2 or 3.3; 1 runs IMDN_AS on photos at their own size")
    size.add_argument("--width", type=int, help="target width in pixels")
    size.add_argument("--height", type=int, help="target height in pixels (one of the two keeps the aspect ratio)")
    size.add_argument("--fit", choices=FIT_MODES, help="with --width and --height: 'fill' that size (default), "
                      "'contain' (largest inside, aspect kept) or 'cover' (fill it, aspect kept, centre cropped)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{', '.join(MODELS)}, or as:CAMERA for a camera the service was calibrated to "
                             f"(default {DEFAULT_MODEL})")
    parser.add_argument("--content", choices=CONTENT_KINDS,
                        help="what the images are, for --model auto: 'photo' (camera photos) or 'clean' (renders, "
                             "screenshots); default: the service's")
    parser.add_argument("--format", choices=(*FORMATS, "jpg"), default="png", help="output format (default png)")
    parser.add_argument("--quality", type=int, help="WebP/JPEG/AVIF quality 1-100")
    parser.add_argument("--frames", choices=FRAME_CHOICES, help="animated GIF/WebP/PNG: 'all' frames (default; "
                        "out as APNG, WebP or GIF) or the 'first' only")
    parser.add_argument("--metadata", choices=METADATA,
                        help="EXIF/XMP/IPTC in the outputs: keep, nogps (all but location), strip (only the ICC "
                             "profile); default: the service's")
    parser.add_argument("-o", "--out-dir", help="where to write <stem>_x<scale>.<format> (default: beside each input)")
    parser.add_argument("-j", "--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist")
    parser.add_argument("--api-key", default=os.environ.get("IMDN_SR_API_KEY"),
                        help="sent as X-API-Key (default: $IMDN_SR_API_KEY)")
    parser.add_argument("--retries", type=int, default=4, help="retries after 429/503 per image (default 4)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m sr_client") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.scale is not None and (args.width is not None or args.height is not None):
        parser.error("give either --scale or --width/--height, not both")
    if args.concurrency < 1 or args.retries < 0:
        parser.error("--concurrency must be >= 1 and --retries >= 0")
    if not is_model_choice(args.model):
        parser.error(f"--model must be one of {', '.join(MODELS)} or as:CAMERA, got {args.model!r}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    summary = upscale_folder(
        args.inputs, args.out_dir, url=args.url, concurrency=args.concurrency, scale=args.scale, width=args.width,
        height=args.height, model=args.model, format=args.format, quality=args.quality, content=args.content,
        fit=args.fit, frames=args.frames,
        api_key=args.api_key, metadata=args.metadata,
        overwrite=not args.skip_existing, recursive=args.recursive, progress=not args.quiet,
        retry=RetryPolicy(attempts=args.retries + 1),
    )
    for source, reason in summary.skipped.items():
        print(f"skipped: {source}: {reason}", file=sys.stderr)
    for source, reason in summary.failed.items():
        print(f"failed: {source}: {reason}", file=sys.stderr)
    print(summary, file=sys.stderr)
    if not summary.written and not summary.failed and not summary.existing:
        print("nothing to do: no images among the inputs", file=sys.stderr)
        return 1
    return 0 if summary.ok else 1
