"""Hostile Flower app bundles, shared by the unit tests of `fedota_common.fab` and the website's tests.

Each builder returns the bytes of a FAB that must be refused; `HOSTILE_FABS`
maps a case to those bytes and a fragment of the message that must explain it.
Sizes the checks read from the zip's central directory (a 300 MB entry) are
written into the headers rather than produced, so the suite stays fast.
"""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile

PYPROJECT = b"""[project]
name = "mine"
version = "0.1.0"

[tool.flwr.app.components]
serverapp = "mine.server:app"
clientapp = "mine.client:app"

[tool.flwr.app.config]
num-server-rounds = 3
"""

# The central directory header's fields this module rewrites (offsets from its signature).
_CD_FLAGS, _CD_METHOD, _CD_COMPRESSED, _CD_SIZE = 8, 10, 20, 24
# The same in the local file header.
_LOCAL_FLAGS, _LOCAL_METHOD, _LOCAL_COMPRESSED, _LOCAL_SIZE = 6, 8, 18, 22


def zip_of(entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of `entries` in order (a name twice makes two entries)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of one case
        with zipfile.ZipFile(buf, "w", method) as zf:
            for info, data in entries:
                zf.writestr(info, data)
    return buf.getvalue()


def app(*extra: tuple[str | zipfile.ZipInfo, bytes], pyproject: bytes = PYPROJECT) -> bytes:
    """A well-formed app with `extra` entries after its own."""
    return zip_of([("pyproject.toml", pyproject), ("mine/__init__.py", b""), *extra])


def with_headers(
    content: bytes,
    name: str,
    *,
    flags: int | None = None,
    method: int | None = None,
    compressed: int | None = None,
    size: int | None = None,
) -> bytes:
    """`content` with entry `name`'s flags, compression method or sizes rewritten in both of its headers."""
    data = bytearray(content)
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        local = zf.getinfo(name).header_offset
    encoded = name.encode()
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(encoded))
    for base, (at_flags, at_method, at_compressed, at_size) in (
        (central, (_CD_FLAGS, _CD_METHOD, _CD_COMPRESSED, _CD_SIZE)),
        (local, (_LOCAL_FLAGS, _LOCAL_METHOD, _LOCAL_COMPRESSED, _LOCAL_SIZE)),
    ):
        if flags is not None:
            struct.pack_into("<H", data, base + at_flags, flags)
        if method is not None:
            struct.pack_into("<H", data, base + at_method, method)
        if compressed is not None:
            struct.pack_into("<I", data, base + at_compressed, compressed)
        if size is not None:
            struct.pack_into("<I", data, base + at_size, size)
    return bytes(data)


def entry(name: str, kind: int = stat.S_IFREG) -> zipfile.ZipInfo:
    """A zip entry of file type `kind` (a link, a FIFO, ...)."""
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o644) << 16
    return info


def lying_sizes() -> bytes:
    """An app whose `mine/big.bin` claims 1000 bytes but unpacks to 5 MB (its CRC then fails)."""
    return with_headers(app(("mine/big.bin", bytes(5_000_000))), "mine/big.bin", size=1000)


def declared_too_big() -> bytes:
    """Two entries that each claim 150 MB from 2 MB (75:1, within the ratio) — 300 MB in all."""
    content = app(("mine/a.bin", b"a" * 1000), ("mine/b.bin", b"b" * 1000))
    for name in ("mine/a.bin", "mine/b.bin"):
        content = with_headers(content, name, compressed=2_000_000, size=150_000_000)
    return content


HOSTILE_FABS: dict[str, tuple[bytes, str]] = {
    "not a zip": (b"this is not a zip file at all", "is not a valid zip file"),
    "truncated zip": (app()[:200], "is not a valid zip file"),
    "zip bomb: compression ratio": (app(("mine/zeros.bin", bytes(5_000_000))), "compression ratio"),
    "zip bomb: total size": (declared_too_big(), "unpacks to more than 209715200 bytes"),
    "zip bomb: too many entries": (
        app(*[(f"mine/f{i}.py", b"") for i in range(2001)]),
        "a FAB may have at most 2000",
    ),
    "path traversal": (app(("../evil.py", b"x")), "points outside the app folder"),
    "nested traversal": (app(("mine/../../evil.py", b"x")), "points outside the app folder"),
    "absolute path": (app(("/etc/cron.d/evil", b"x")), "points outside the app folder"),
    "backslashes": (app(("..\\evil.py", b"x")), "points outside the app folder"),
    "drive letter": (app(("C:/evil.py", b"x")), "points outside the app folder"),
    "symlink": (app((entry("mine/link.py", stat.S_IFLNK), b"/etc/passwd")), "symbolic link"),
    "device or fifo": (app((entry("mine/pipe", stat.S_IFIFO), b"")), "special file"),
    "encrypted entry": (with_headers(app(("mine/secret.py", b"x")), "mine/secret.py", flags=0x1), "encrypted"),
    "unknown compression": (with_headers(app(("mine/x.py", b"x")), "mine/x.py", method=99), "compression method 99"),
    "duplicate entry": (app(("pyproject.toml", b"[project]\n")), "appears twice"),
    "file and folder": (app(("mine/x", b"x"), ("mine/x/y.py", b"y")), "both a file and a folder"),
    "no pyproject": (zip_of([("mine/server.py", b"app = None\n")]), "no pyproject.toml"),
    "malformed pyproject": (app(pyproject=b"[tool.flwr\nbroken"), "not valid TOML"),
    "pyproject not UTF-8": (app(pyproject=b"name = '\xff\xfe'"), "not valid TOML"),
    "pyproject nested too deep": (app(pyproject=b"a = " + b"[" * 5000 + b"]" * 5000), "too deeply"),
    "no components": (app(pyproject=b'[project]\nname = "x"\n'), "[tool.flwr.app.components]"),
    "tool is not a table": (app(pyproject=b"tool = 1\n"), "[tool.flwr.app.components]"),
    "no serverapp": (app(pyproject=PYPROJECT.replace(b'serverapp = "mine.server:app"', b"")), "lacks serverapp"),
    "config not a table": (
        app(pyproject=PYPROJECT.replace(b"[tool.flwr.app.config]\nnum-server-rounds = 3", b"")
            + b"[tool.flwr.app]\nconfig = 3\n"),
        "must be a table",
    ),
    "config holds a list": (
        app(pyproject=PYPROJECT + b"layers = [1, 2]\n"),
        "may hold only strings, numbers and booleans",
    ),
}  # fmt: skip
