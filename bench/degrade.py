"""Is the camera degradation fast enough to feed CPU training? Time per patch vs one IMDN_AS training step.

    python bench/degrade.py                  # HR patch 128, batch 16, one thread
    python bench/degrade.py --patch 192 --threads 2

Prints the time to degrade one batch (model/degrade.py, in this process) and the time of one
training step (forward, L1, backward, Adam) of IMDN_AS on a batch of that size, interleaved,
and their ratio: below 1, the data keeps up with the optimiser in a single process.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import interleaved  # noqa: E402
from model.degrade import DegradationConfig, degrade  # noqa: E402
from model.imdn import imdn_as  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patches = [(torch.rand(3, args.patch, args.patch) * 255).to(torch.uint8) for _ in range(args.batch)]
    rng, config = random.Random(0), DegradationConfig()
    model = imdn_as().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.rand(args.batch, 3, args.patch, args.patch).to(memory_format=torch.channels_last)

    def degrade_batch() -> None:
        for hr in patches:
            degrade(hr, config, rng)

    def train_step() -> None:
        loss = F.l1_loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = interleaved({"degrade": degrade_batch, "step": train_step}, args.rounds, warmup=1)
    d, s = statistics.median(times["degrade"]), statistics.median(times["step"])
    print(f"patch {args.patch}, batch {args.batch}, {args.threads} thread(s), median of {args.rounds} rounds")
    print(f"degrade one batch: {d * 1000:7.1f} ms ({d / args.batch * 1000:.1f} ms a patch)")
    print(f"one training step: {s * 1000:7.1f} ms")
    print(f"degrade / step:    {d / s:7.2f}")


if __name__ == "__main__":
    main()
