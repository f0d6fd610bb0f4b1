"""Hash + sign a ~4 GiB model directory with trainguard and with OpenSSF model-signing.

Usage::

    python bench/manifest/bench_manifest.py [--size-gib 4] [--work /tmp/tg_bench_manifest]
        [--repeat 3] [--keep]

Generates (not committed) a directory of safetensors shards plus one torch.save zip,
warms the page cache, then times, best of ``--repeat`` runs each:

- raw single-core SHA-256 over an in-memory buffer, times the usable cores;
- ``trainguard`` sign (sha256 and blake3; per-tensor digests included);
- ``model_signing`` sign with an ECDSA key (sha256, and blake3);
- ``trainguard`` verify after a one-byte change in one tensor (time to name it).

Prints a markdown section for bench/RESULTS.md and deletes the data unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def write_safetensors(
    path: Path, tensors: list[tuple[str, list[int]]], rng: np.random.Generator
) -> None:
    """A valid F32 safetensors file written in a stream (no 1 GiB arrays in memory)."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for _name, shape in tensors:
            remaining = int(np.prod(shape)) * 4
            while remaining:
                chunk = min(remaining, 64 << 20)
                handle.write(rng.bytes(chunk))
                remaining -= chunk


def generate(root: Path, size_gib: float) -> dict[str, int]:
    """Three safetensors shards and a torch zip, about ``size_gib`` in total."""
    import torch

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    total = int(size_gib * (1 << 30))
    torch_bytes = total // 10
    shard_bytes = (total - torch_bytes) // 3
    layer = [4096, 2048]  # 32 MiB per F32 tensor
    per_layer = 4096 * 2048 * 4
    layers_per_shard = shard_bytes // per_layer
    index = 0
    for shard in range(3):
        tensors: list[tuple[str, list[int]]] = []
        if shard == 0:
            tensors.append(("embed.weight", [32000, 4096]))  # 500 MiB: one large tensor
            count = max(1, layers_per_shard - 16)
        else:
            count = layers_per_shard
        for _ in range(count):
            tensors.append((f"layers.{index}.weight", layer))
            index += 1
        write_safetensors(root / f"model-0000{shard + 1}-of-00003.safetensors", tensors, rng)
    generator = torch.Generator().manual_seed(1)
    state = {
        f"head.{i}.weight": torch.randn(2048, 2048, generator=generator)
        for i in range(max(1, torch_bytes // (2048 * 2048 * 4)))
    }
    torch.save(state, root / "head.pt")
    (root / "config.json").write_text(f'{{"layers": {index}}}\n')
    return {p.name: p.stat().st_size for p in sorted(root.iterdir())}


def warm(root: Path) -> None:
    """Read every file once so the page cache holds it (the numbers are CPU-bound)."""
    for path in root.iterdir():
        with open(path, "rb", buffering=0) as handle:
            while handle.read(64 << 20):
                pass


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def raw_sha256_gbps() -> float:
    buf = os.urandom(256 << 20)
    hashlib.sha256(buf[: 1 << 20]).digest()
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        hashlib.sha256(buf).digest()
        runs.append(len(buf) / (time.perf_counter() - start) / 1e9)
    return max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--work", default="/tmp/tg_bench_manifest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    import model_signing

    from trainguard.core.keys import generate_key
    from trainguard.manifest import sign_path, verify_path
    from trainguard.manifest.modelsigning import generate_ec_key, write_ec_keypair

    work = Path(args.work)
    model = work / "model"
    free = shutil.disk_usage(work.parent if work.parent.exists() else "/").free
    if free < args.size_gib * 2 * (1 << 30):
        raise SystemExit(f"not enough free disk under {work.parent}: {free / 2**30:.1f} GiB")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    load_before = os.getloadavg()
    try:
        t0 = time.perf_counter()
        sizes = generate(model, args.size_gib)
        gen_s = time.perf_counter() - t0
        total = sum(sizes.values())
        warm(model)
        ed = generate_key()
        ec_key, _ec_pub = write_ec_keypair(generate_ec_key(), work / "ec.key")
        sig_tg = work / "tg.sig.json"
        sig_ms = work / "ms.sig"
        cores = _cores()
        raw = raw_sha256_gbps()

        results: dict[str, tuple[float, list[float]]] = {}
        results["trainguard sign (sha256, tensors)"] = best_of(
            args.repeat, lambda: sign_path(model, ed, output=sig_tg)
        )
        results["model_signing sign (sha256, key)"] = best_of(
            args.repeat,
            lambda: (
                model_signing.signing.Config()
                .use_elliptic_key_signer(private_key=ec_key)
                .sign(model, sig_ms)
            ),
        )
        results["trainguard sign (blake3, tensors)"] = best_of(
            args.repeat, lambda: sign_path(model, ed, output=sig_tg, algorithm="blake3")
        )
        results["model_signing sign (blake3, key)"] = best_of(
            args.repeat,
            lambda: (
                model_signing.signing.Config()
                .use_elliptic_key_signer(private_key=ec_key)
                .set_hashing_config(
                    model_signing.hashing.Config().use_file_serialization(
                        hashing_algorithm="blake3"
                    )
                )
                .sign(model, sig_ms)
            ),
        )
        # Verify after a one-byte change in one tensor: time to name it.
        sign_path(model, ed, output=sig_tg)
        shard = model / "model-00002-of-00003.safetensors"
        with open(shard, "r+b") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
            name = sorted(header)[len(header) // 2]
            handle.seek(8 + length + header[name]["data_offsets"][0] + 1234)
            byte = handle.read(1)
            handle.seek(-1, 1)
            handle.write(bytes([byte[0] ^ 0xFF]))
        warm(model)
        named: list[str] = []

        def verify_once() -> None:
            result = verify_path(model, ed.public, sig_tg)
            named[:] = [t.name for f in result.diff.files for t in f.tensors]

        results["trainguard verify after 1-byte change"] = best_of(args.repeat, verify_once)
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    ms_time = results["model_signing sign (sha256, key)"][0]
    lines = [
        f"Data: {total / 2**30:.2f} GiB in {len(sizes)} files "
        f"({', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in sizes.items())}); "
        f"generated in {gen_s:.0f} s; warm page cache.",
        f"Machine: {cores} usable cores, {os.cpu_count()} CPUs; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} (shared with other jobs).",
        f"Raw SHA-256, one core, in-memory buffer: {raw:.2f} GB/s; x {cores} cores = "
        f"{raw * cores:.2f} GB/s.",
        "",
        "| run | best s | GB/s | runs (s) | vs model_signing sha256 | vs raw SHA-256 x cores |",
        "|---|---|---|---|---|---|",
    ]
    for label, (best, runs) in results.items():
        gbps = total / best / 1e9
        lines.append(
            f"| {label} | {best:.2f} | {gbps:.2f} | "
            f"{', '.join(f'{r:.2f}' for r in runs)} | {ms_time / best:.2f}x | "
            f"{gbps / (raw * cores):.0%} |"
        )
    lines.append("")
    lines.append(
        f"Verify named the changed tensor(s): {named}; median of runs "
        f"{statistics.median(results['trainguard verify after 1-byte change'][1]):.2f} s."
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
