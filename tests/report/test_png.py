"""The tests' PNG reader decodes what zlib-built PNGs with every filter type hold."""

from __future__ import annotations

import struct
import zlib

from tests.report.png import decode


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode(pixels: list[list[tuple[int, int, int]]], filters: list[int]) -> bytes:
    """RGB PNG whose row ``y`` uses filter ``filters[y]`` (encoder side of each filter)."""
    width, height = len(pixels[0]), len(pixels)
    raw = bytearray()
    prev = bytes(width * 3)
    for y, row in enumerate(pixels):
        line = bytes(v for px in row for v in px)
        f = filters[y]
        out = bytearray()
        for x, v in enumerate(line):
            a = line[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) >> 1
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out.append((v - pred) & 0xFF)
        raw += bytes([f]) + out
        prev = line
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def test_every_filter_round_trips() -> None:
    pixels = [
        [((x * 37 + y) % 256, (x * y) % 256, (255 - x * 9) % 256) for x in range(7)]
        for y in range(5)
    ]
    image = decode(encode(pixels, [0, 1, 2, 3, 4]))
    assert (image.width, image.height) == (7, 5)
    assert [[image.pixel(x, y) for x in range(7)] for y in range(5)] == pixels
