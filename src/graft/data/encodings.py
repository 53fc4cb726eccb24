"""Decoding text files: byte-order marks, UTF-8 with a cp1252 fallback, wide encodings without a mark.

Used by every reader of text (tables, lists of texts or paths); the problems it finds are collected in
a :class:`~graft.data.dataset.DataReport` or raised as one :class:`~graft.errors.DataError` naming the
file and line.
"""

from __future__ import annotations

import codecs
import warnings

from graft.data.dataset import DataReport
from graft.errors import DataError, GraftWarning, format_problems

# Byte-order marks and the codec that reads (and drops) each; UTF-32 first, as its little-endian
# mark FF FE 00 00 starts with UTF-16's FF FE.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)  # fmt: skip


class DataWarning(GraftWarning):
    """Something in the data was handled but deserves a look (e.g. an encoding fallback)."""


def decode_bytes(raw: bytes, source: str, encoding: str | None, report: DataReport) -> str:
    """Decode a file's bytes into text.

    An explicit ``encoding`` is used as given. Otherwise a byte-order mark decides (UTF-8, UTF-16 or
    UTF-32), and without one the file is UTF-8, where lines that are not valid UTF-8 are decoded as
    cp1252 and named in ``report.warnings`` (callers with no report to show use
    :func:`emit_warnings`).

    Raises:
        DataError: an unknown encoding, bytes the encoding cannot decode (naming the line), or NUL
            bytes without a byte-order mark: UTF-16/32 text, which would otherwise pass as "valid
            UTF-8" full of NUL characters, or not text at all.
    """
    if encoding:
        if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            encoding = "utf-8-sig"
        return _decode_as(raw, source, encoding)
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return _decode_as(raw, source, codec)
    if b"\0" in raw:
        raise DataError(_nul_message(raw, source))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _decode_with_cp1252_fallback(raw, source, report)


def decode_head(raw: bytes, encoding: str | None = None) -> str:
    """The first bytes of a file as text, leniently (for a cheap look: it may end mid-character)."""
    codec = encoding or next((c for bom, c in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(codec, "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")  # decode_bytes names the unknown encoding


def emit_warnings(report: DataReport) -> None:
    """Each of ``report``'s warnings as a :class:`DataWarning`, where no report will be shown."""
    for message in report.warnings:
        warnings.warn(message, DataWarning, stacklevel=3)


def _decode_as(raw: bytes, source: str, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}; try utf-8, cp1252 or utf-16") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].decode(encoding, "replace").count("\n") + 1
        raise DataError(
            f"{source}: line {line} is not valid {encoding} (byte 0x{raw[exc.start]:02x}); "
            "pass the file's real encoding with --encoding"
        ) from None


def _nul_message(raw: bytes, source: str) -> str:
    guess = _guess_wide_encoding(raw)
    if guess:
        return (
            f"{source}: the file holds NUL bytes, laid out as in {guess} text saved without a byte-order "
            f"mark; pass --encoding {guess} (or save the file as UTF-8)"
        )
    line = raw[: raw.index(b"\0")].count(b"\n") + 1
    return (
        f"{source}: line {line} holds NUL bytes (0x00): this is not a text file, or its encoding has "
        "no byte-order mark; pass the encoding with --encoding (e.g. --encoding utf-16-le)"
    )


def _guess_wide_encoding(raw: bytes) -> str | None:
    """The UTF-16/32 variant whose zero bytes fall where ``raw``'s do, or None.

    Mostly-Latin text in UTF-16-LE has a zero at every odd offset; UTF-32-LE at offsets 1, 2, 3
    (mod 4), or at least 2 and 3 beyond Latin; big-endian mirrors them.
    """
    sample = raw[: 1 << 16]
    quarter = max(1, len(sample) // 4)
    zeros = [sample[r::4].count(0) / quarter for r in range(4)]
    high = [z >= 0.3 for z in zeros]
    low = [z < 0.05 for z in zeros]
    if high[2] and high[3] and low[0]:
        return "utf-32-le"
    if high[0] and high[1] and low[3]:
        return "utf-32-be"
    if high[1] and high[3] and low[0] and low[2]:
        return "utf-16-le"
    if high[0] and high[2] and low[1] and low[3]:
        return "utf-16-be"
    return None


def _decode_with_cp1252_fallback(raw: bytes, source: str, report: DataReport) -> str:
    fallback, undecodable, out = [], [], []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            try:
                out.append(line.decode("cp1252"))
                fallback.append(number)
            except UnicodeDecodeError as exc:
                undecodable.append(f"line {number}: byte 0x{line[exc.start]:02x} at column {exc.start + 1}")
    if undecodable:
        raise DataError(
            format_problems(
                f"{source}: not valid UTF-8 nor cp1252; pass the file's encoding with --encoding",
                undecodable,
            )
        )
    shown = ", ".join(map(str, fallback[:10])) + (" ..." if len(fallback) > 10 else "")
    report.warnings.append(
        f"{source}: {len(fallback)} line(s) are not valid UTF-8 and were decoded as cp1252 (lines {shown}); "
        "check those characters, or pass --encoding"
    )
    return "\n".join(out)
