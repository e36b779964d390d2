"""Tar shards in webdataset's layout: a manifest and its media packed into a few large files.

Why: a data set of millions of small files is slow to copy, list and open (network file systems,
object stores); a shard folder is a handful of tar files read front to back, and it trains with
no task code changed (``--data.manifest=SHARD_DIR``).

A shard folder, as ``write_shards`` writes it::

    shards.json        the index: {"format": "omniformer-shards", "version": 1, "source": manifest,
                       "samples": N, "samples_per_shard": K,
                       "shards": [{"name": "shard-000000.tar", "samples": K, "bytes": B}, ...]}
    shard-000000.tar   the manifest's samples 0 .. K-1, in its order
    shard-000001.tar   samples K .. 2K-1, and so on

A sample's key is its number in the manifest, zero-padded (six digits or more, no dots). Its
members come together, the JSON first: ``{key}.json`` is the manifest line with each media field
naming a member of the same shard, then ``{key}.{field}.{ext}`` for each media file (``ext``: the
file's suffix, ``bin`` without one). Media that several samples of one shard share (ShapesWorld asks
about ten questions about each image) is stored once, under the first such sample's key, and the
others' JSON names that member: shards stay as small as the data, and a plain webdataset reader sees
the shared file with its first sample only. Member times and owners are fixed, so the same manifest
gives the same bytes. Shards and the index are written under temporary names and renamed, so a
killed run leaves no half shard under a final name (and no index until every shard is there).

Reading: ``read_manifest(DIR)`` (``read_shards``) gives the manifest's samples with media paths
``shard-000003.tar/000123.image.png``; ``resolve`` makes them ``DIR/shard-000003.tar/...``, and
``media_problem``, ``load_media`` and ``open_media`` read a path whose parent is a tar file as
that member, by offset: each tar's members are indexed once per process, and each process (a
forked DataLoader worker too) opens its own file handle. A truncated tar or a broken JSON member
stops ``read_manifest`` naming the shard and member; a member that is missing or does not decode
is a ``MediaError`` naming both, which training skips and counts (``train.max_bad_fraction``).

``ShardBatchSampler`` draws batches shard by shard through a shuffle buffer, so that a run reads
its shards nearly in order; ``shard_of`` says which shard each sample is in.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import stat
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .manifest import (ManifestError, MediaChecker, MediaError, Problem, _structural_problems, media_problem,
                       modality_fields, read_manifest_lines, resolve, shown)

INDEX = "shards.json"
FORMAT, VERSION = "omniformer-shards", 1
SHARD_NAME = re.compile(r"shard-(\d+)\.tar")
_IN_PATH = re.compile(r"(?:^|/)shard-(\d+)\.tar/[^/]+$")  # a media path naming a shard's member
MAX_SAMPLES_PER_SHARD = 1_000_000
_MTIME = 946684800  # 2000-01-01: members' fixed time, so that the same data gives the same bytes


class ShardError(ManifestError):
    """A shard folder cannot be written or read; the message names the folder, shard or member."""


def is_shard_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a shard index (``shards.json``)."""
    try:
        return (Path(path) / INDEX).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _extension(relative: str) -> str:
    """A media file's member extension: its suffix in lower case, ``bin`` when it has none usable."""
    suffix = Path(relative).suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,10}", suffix) else "bin"


def _read_bytes(path: Path) -> bytes:
    """A media file's bytes, or a tar member's (a shard folder can be sharded again)."""
    member = tar_member(path)
    if member is not None:
        return read_member(*member)
    with open(path, "rb") as f:
        return f.read()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_atomically(path: Path, write) -> int:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then rename it to ``path``;
    returns its size. A failure or a kill leaves no file under ``path``'s name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def write_shards(manifest: str | Path, out_dir: str | Path, samples_per_shard: int = 1000,
                 overwrite: bool = False) -> Path:
    """Pack ``manifest`` (a JSON Lines manifest or a shard folder) and its media into tar shards of
    ``samples_per_shard`` samples in ``out_dir``, with their index; returns ``out_dir``.

    An ``out_dir`` that holds anything is refused unless ``overwrite``; then the old index goes
    first, the new shards replace the old ones and shards beyond the new count are removed (other
    files are left). A media file that cannot be read is an error naming its line and field."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) \
            or not 1 <= samples_per_shard <= MAX_SAMPLES_PER_SHARD:
        raise ShardError(f"--samples-per-shard: expected a whole number from 1 to {MAX_SAMPLES_PER_SHARD:,}, "
                         f"got {samples_per_shard!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardError(f"--out {out_dir}: is a file; expected the folder to write the shards in")
    if out_dir.is_dir() and manifest.resolve() == out_dir.resolve():
        raise ShardError(f"--out {out_dir}: is the shard folder being read; write the new shards elsewhere")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out_dir}: not empty; choose an empty or new folder, or replace its "
                              f"shards with --overwrite")
    lines = read_manifest_lines(manifest)  # every structural problem is named before anything is written
    carriers = [f for f, m in modality_fields().items() if m.files]
    media: list[dict[str, Path]] = []  # per sample: field -> the file to pack
    for line, sample in lines:
        files = {}
        for key in carriers:
            rel = sample.get(key)
            if isinstance(rel, str) and rel.strip():
                path = resolve(manifest, rel)
                why = media_problem(path)
                if why is not None:
                    where = f"{manifest}: line {line}" if manifest.is_file() else f"{manifest}: sample {line}"
                    raise ShardError(f"{where}: {key}: file {shown(rel)} {why}; fix it or drop the sample "
                                     f"('omniformer data check' lists every problem)")
                files[key] = path
        media.append(files)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX).unlink(missing_ok=True)  # no index while the shards are rewritten
    for left in [*out_dir.glob(".shard-*.tar.*.tmp"), *out_dir.glob(f".{INDEX}.*.tmp")]:
        left.unlink()  # what a killed run was writing
    total = len(lines)
    width = max(6, len(str(total - 1)))
    shards = []
    for number, start in enumerate(range(0, total, samples_per_shard)):
        name = f"shard-{number:06d}.tar"
        chunk = range(start, min(start + samples_per_shard, total))

        def write(f, chunk=chunk) -> None:
            stored: dict[Path, str] = {}  # a file already in this shard -> its member
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i in chunk:
                    key, sample = f"{i:0{width}d}", dict(lines[i][1])
                    new: list[tuple[str, Path]] = []
                    for field_name, path in media[i].items():
                        if path not in stored:
                            stored[path] = f"{key}.{field_name}.{_extension(sample[field_name])}"
                            new.append((stored[path], path))
                        sample[field_name] = stored[path]
                    _member(tar, f"{key}.json", json.dumps(sample, ensure_ascii=False).encode("utf-8"))
                    for member, path in new:
                        try:
                            data = _read_bytes(path)
                        except (OSError, MediaError) as e:
                            raise ShardError(f"{path}: cannot be read: {getattr(e, 'strerror', None) or e}") from None
                        _member(tar, member, data)

        shards.append({"name": name, "samples": len(chunk), "bytes": _write_atomically(out_dir / name, write)})
    index = {"format": FORMAT, "version": VERSION, "source": str(manifest.resolve()), "samples": total,
             "samples_per_shard": samples_per_shard, "shards": shards}
    _write_atomically(out_dir / INDEX, lambda f: f.write((json.dumps(index, indent=1) + "\n").encode("utf-8")))
    kept = {s["name"] for s in shards}
    for old in out_dir.glob("shard-*.tar"):  # an earlier, longer set of shards
        if SHARD_NAME.fullmatch(old.name) and old.name not in kept:
            old.unlink()
    return out_dir


# ---------------------------------------------------------------------------------------------
# Tar members by offset
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _TarIndex:
    """One tar file's regular members: name -> (offset of its data, size), in archive order."""
    signature: tuple[int, ...]
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    others: frozenset[str] = frozenset()  # members that are not regular files (folders, links)
    problem: str | None = None            # why the tar cannot be read (then ``members`` is empty)


_INDEXES: dict[str, _TarIndex] = {}
_HANDLES: dict[str, tuple[int, int, tuple[int, ...]]] = {}  # tar -> (process id, descriptor, signature)
_LOCK = threading.Lock()


def _signature(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _scan(tar: Path, signature: tuple[int, ...]) -> _TarIndex:
    """Index ``tar``'s members with ``tarfile`` (headers only); a tar cut short, or holding
    something that is not a header, gives a ``problem`` naming the last good member."""
    members: dict[str, tuple[int, int]] = {}
    others: set[str] = set()
    last = None

    def after() -> str:
        return f"after member {last}" if last else "before its first member"

    try:
        with tarfile.open(tar, "r:") as archive:
            for info in archive:
                if info.isreg():
                    members[info.name] = (info.offset_data, info.size)
                else:
                    others.add(info.name)
                last = info.name
            end = archive.offset
        with open(tar, "rb") as f:
            f.seek(end)
            marker = f.read(1024)
        if len(marker) < 1024:  # tarfile takes a tar cut at a member's end for a whole one
            return _TarIndex(signature, problem=f"is truncated: it ends {after()}, without the end-of-archive marker")
        if marker.strip(b"\0"):
            return _TarIndex(signature, problem=f"is corrupt: byte {end} ({after()}) is not a tar header")
    except (tarfile.TarError, EOFError) as e:  # cut inside a member, or not a tar at all
        return _TarIndex(signature, problem=f"is truncated or not a tar file: {after()}: {e}")
    except OSError as e:
        return _TarIndex(signature, problem=f"cannot be read: {e.strerror or e}")
    return _TarIndex(signature, members, frozenset(others))


def tar_index(tar: str | Path) -> _TarIndex:
    """``tar``'s member index, made once per process and again when the file changes; raises
    OSError when the file cannot be found."""
    key = str(tar)
    signature = _signature(os.stat(key))
    with _LOCK:
        found = _INDEXES.get(key)
        if found is None or found.signature != signature:
            found = _INDEXES[key] = _scan(Path(key), signature)
    return found


def tar_member(path: str | Path) -> tuple[Path, str] | None:
    """(tar file, member name) when ``path``'s parent is a tar file (``DIR/shard-000003.tar/
    000123.image.png``), else None."""
    path = Path(path)
    if path.parent.suffix.lower() != ".tar":
        return None
    try:
        return (path.parent, path.name) if stat.S_ISREG(os.stat(path.parent).st_mode) else None
    except (OSError, ValueError):
        return None


def member_problem(tar: Path, name: str) -> str | None:
    """What keeps member ``name`` of ``tar`` from being read, in words; None: it can be."""
    try:
        index = tar_index(tar)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if index.problem:
        return f"cannot be read: its shard {tar.name} {index.problem}"
    if name not in index.members:
        if name in index.others:
            return f"is not a regular file in its shard {tar.name}"
        return f"is missing from its shard {tar.name}"
    return None


def _descriptor(tar: Path) -> tuple[int, _TarIndex]:
    """This process's descriptor of ``tar`` (a forked worker opens its own) and its index."""
    index = tar_index(tar)
    key = str(tar)
    with _LOCK:
        held = _HANDLES.get(key)
        if held is None or held[0] != os.getpid() or held[2] != index.signature:
            if held is not None:
                try:
                    os.close(held[1])  # this process's copy of an old or inherited descriptor
                except OSError:
                    pass
            held = _HANDLES[key] = (os.getpid(), os.open(key, os.O_RDONLY), index.signature)
    return held[1], index


def _read_at(fd: int, offset: int, size: int) -> bytes:
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            raise OSError(f"the file ends {size - done} bytes into the member (truncated)")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def shown_member(tar: Path, name: str) -> str:
    """A member's path as a message shows it: the folder shortened if long, never the shard or member."""
    return f"{shown(tar.parent)}/{tar.name}/{name}"


def _located(tar: Path, name: str) -> tuple[int, int, int]:
    """(descriptor, offset, size) of member ``name``; MediaError naming shard and member if none."""
    why = member_problem(tar, name)
    if why is not None:
        raise MediaError(f"{shown_member(tar, name)} {why}")
    fd, index = _descriptor(tar)
    return (fd, *index.members[name])


def read_member(tar: Path, name: str) -> bytes:
    """Member ``name`` of ``tar``, read by its offset; MediaError naming both when it cannot be."""
    fd, offset, size = _located(tar, name)
    try:
        return _read_at(fd, offset, size)
    except OSError as e:
        raise MediaError(f"{shown_member(tar, name)} cannot be read: {e.strerror or e}") from None


class _MemberFile(io.RawIOBase):
    """A tar member as a seekable read-only file of its own bytes."""

    def __init__(self, fd: int, offset: int, size: int):
        super().__init__()
        self._fd, self._offset, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        data = os.pread(self._fd, n, self._offset + self._pos) if n else b""
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def open_member(tar: Path, name: str) -> io.BufferedReader:
    """Member ``name`` of ``tar`` as a seekable binary file (its bytes only, read on demand)."""
    return io.BufferedReader(_MemberFile(*_located(tar, name)))


# ---------------------------------------------------------------------------------------------
# Reading and checking a shard folder
# ---------------------------------------------------------------------------------------------

def read_index(folder: str | Path) -> dict[str, Any]:
    """A shard folder's ``shards.json``, checked; ShardError naming the file and the field."""
    path = Path(folder) / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShardError(f"{path}: cannot be read as a shard index: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ShardError(f"{path}: not a shard index (expected \"format\": \"{FORMAT}\"; "
                         f"'omniformer data shard' writes one)")
    if index.get("version") != VERSION:
        raise ShardError(f"{path}: version {index.get('version')!r}; this Omniformer reads version {VERSION}")
    shards = index.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ShardError(f"{path}: shards: expected a list of {{name, samples}}, got {shown(json.dumps(shards))}")
    for i, entry in enumerate(shards):
        ok = isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("samples"), int)
        if not ok or "/" in entry["name"] or "\\" in entry["name"] or not entry["name"].endswith(".tar") \
                or entry["name"].startswith("."):
            raise ShardError(f"{path}: shards[{i}]: expected {{\"name\": \"shard-NNNNNN.tar\", \"samples\": N}} "
                             f"naming a tar file in the folder, got {shown(json.dumps(entry))}")
    return index


def _shard_samples(folder: Path, entry: dict[str, Any],
                   carriers: dict) -> Iterator[tuple[str, dict | None, list[Problem]]]:
    """(JSON member, sample or None, problems) for each JSON member of one shard, in order; a
    shard that cannot be read is one problem, named by the shard alone."""
    name = entry["name"]
    tar = folder / name
    why = media_problem(tar)
    if why is None:
        why = tar_index(tar).problem
    if why is not None:
        yield name, None, [Problem(0, "", why, name)]
        return
    files = {f for f, m in carriers.items() if m.files}
    index = tar_index(tar)
    for member in index.members:
        if not member.endswith(".json") or member.count(".") != 1:  # {key}.json; not {key}.{field}.json
            continue
        where = f"{name}/{member}"
        try:
            raw = read_member(tar, member).decode("utf-8")
        except MediaError as e:
            yield where, None, [Problem(0, "<member>", str(e), where)]
            continue
        except UnicodeDecodeError as e:
            yield where, None, [Problem(0, "<encoding>", f"not UTF-8 text (byte {e.start + 1})", where)]
            continue
        sample, problems = _structural_problems(0, raw, carriers)
        problems = [Problem(0, p.field, p.message, where) for p in problems]
        if sample is not None:
            for key in files:
                value = sample.get(key)
                if isinstance(value, str) and value.strip():
                    if "/" in value or "\\" in value or value in (".", ".."):
                        problems.append(Problem(0, key, f"expected a member of {name} (a name without '/'), "
                                                        f"got {shown(repr(value))}", where))
                        del sample[key]  # not checked as a file: it could name one outside the shard
                    else:
                        sample[key] = f"{name}/{value}"
        yield where, sample, problems


def read_shards(folder: str | Path) -> list[dict[str, Any]]:
    """The samples of a shard folder, in order, media fields naming members
    (``shard-000003.tar/000123.image.png``); ShardError naming the shard and member of the first
    problem: a tar that cannot be read or is cut short, a JSON member that is not a sample, or a
    shard holding another number of samples than the index says."""
    folder = Path(folder)
    index = read_index(folder)
    carriers = modality_fields()
    samples: list[dict[str, Any]] = []
    for entry in index["shards"]:
        count = 0
        for where, sample, problems in _shard_samples(folder, entry, carriers):
            if problems:
                raise ShardError(f"{folder}: {problems[0]}")
            samples.append(sample)
            count += 1
        if count != entry["samples"]:
            raise ShardError(f"{folder}: {entry['name']}: holds {count} samples, {INDEX} says {entry['samples']} "
                             f"(a shard replaced or cut short; write the shards again)")
    if not samples:
        raise ShardError(f"{folder}: no samples in its shards")
    return samples


def check_shards(folder: str | Path, decode: bool = True, sample_rate: int = 16000) -> tuple[int, list[Problem]]:
    """``check_manifest`` for a shard folder: (samples, every problem), each problem naming its
    shard and member; never stops early."""
    folder = Path(folder)
    try:
        index = read_index(folder)
    except ShardError as e:
        return 0, [Problem(0, "<file>", str(e))]
    carriers = modality_fields()
    media = MediaChecker(folder, decode, sample_rate)
    problems: list[Problem] = []
    seen_ids: dict[str, str] = {}
    count = 0
    for entry in index["shards"]:
        in_shard = 0
        for where, sample, found in _shard_samples(folder, entry, carriers):
            problems.extend(found)
            if sample is None:
                continue
            count, in_shard = count + 1, in_shard + 1
            sample_id = sample.get("id")
            if isinstance(sample_id, str):
                if sample_id in seen_ids:
                    problems.append(Problem(0, "id", f"duplicate id {shown(repr(sample_id))} "
                                                     f"(first in {seen_ids[sample_id]})", where))
                else:
                    seen_ids[sample_id] = where
            problems.extend(media.problems(sample, where=where))
        named = any(p.where == entry["name"] or p.where.startswith(entry["name"] + "/") for p in problems)
        if not named and in_shard != entry["samples"]:  # a member already named explains a shortfall
            problems.append(Problem(0, "", f"holds {in_shard} samples, {INDEX} says {entry['samples']}", entry["name"]))
    if count == 0 and not problems:
        problems.append(Problem(0, "<file>", "no samples in its shards"))
    return count, problems


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def shard_of(samples: Sequence[dict[str, Any]]) -> list[int] | None:
    """The shard number of each sample (``shard-000003.tar/...`` in a media field: 3), or None when
    no sample names a shard member (a plain manifest). A sample that names none (text only) goes
    with the sample before it (the first found, at the start): where it is read changes nothing."""
    files = [f for f, m in modality_fields().items() if m.files]
    found: list[int | None] = []
    for sample in samples:
        number = None
        for key in files:
            value = sample.get(key)
            match = _IN_PATH.search(value) if isinstance(value, str) else None
            if match:
                number = int(match.group(1))
                break
        found.append(number)
    known = [n for n in found if n is not None]
    if not known:
        return None
    out, last = [], known[0]
    for n in found:
        last = n if n is not None else last
        out.append(last)
    return out


class ShardBatchSampler:
    """Batches read shard by shard: ``BucketBatchSampler``'s interface for samples in tar shards.

    Each epoch permutes the shards (seeded by ``seed`` and ``epoch``), streams their samples
    through a shuffle buffer of ``buffer`` samples, and groups the stream into pools of ``pool``
    batches sorted by length, cut into batches and shuffled within the pool. Why: a run reads a
    few shards at a time front to back, yet batches are mixed and of similar length. Every sample
    comes once an epoch (``drop_last``: at most ``batch_size - 1`` left out, from the last pool);
    the order depends only on (seed, epoch), never on the number of processes or workers, which
    each take their share of every global batch. ``epoch`` is set by the loop (and moves on by
    one after each pass, as ``BucketBatchSampler``'s does). ``shuffle=False``: shards and samples
    in order, pools sorted by length.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, pool: int = 50,
                 drop_last: bool = False, seed: int = 0, *, shards: Sequence[int], buffer: int = 1000):
        if len(shards) != len(lengths):
            raise ValueError(f"shards: expected one shard number per sample ({len(lengths)}), got {len(shards)}")
        for name, value in (("batch_size", batch_size), ("pool", pool), ("buffer", buffer)):
            if int(value) < 1:
                raise ValueError(f"{name}: expected a whole number >= 1, got {value}")
        self.lengths, self.batch_size, self.shuffle = list(lengths), int(batch_size), shuffle
        self.pool, self.drop_last, self.seed, self.epoch, self.buffer = int(pool), drop_last, seed, 0, int(buffer)
        self.by_shard: dict[int, list[int]] = {}
        for index, shard in enumerate(shards):
            self.by_shard.setdefault(int(shard), []).append(index)

    def stream(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s sample order before batching: shards permuted, then the buffer."""
        order = sorted(self.by_shard)
        if not self.shuffle:
            return [i for shard in order for i in self.by_shard[shard]]
        random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        rng, held, out = random.Random(f"buffer:{self.seed}:{epoch}"), [], []
        for shard in order:
            for index in self.by_shard[shard]:
                held.append(index)
                if len(held) >= self.buffer:  # full: one leaves at random, the last takes its place
                    pick = rng.randrange(len(held))
                    held[pick], held[-1] = held[-1], held[pick]
                    out.append(held.pop())
        rng.shuffle(held)
        return out + held

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1
        order = self.stream(epoch)
        rng = random.Random(f"pools:{self.seed}:{epoch}")
        pool_size, batches = self.batch_size * self.pool, []
        for start in range(0, len(order), pool_size):
            chunk = sorted(order[start: start + pool_size], key=lambda i: self.lengths[i])
            cut = [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            if self.drop_last:
                cut = [b for b in cut if len(b) == self.batch_size]
            if self.shuffle:
                rng.shuffle(cut)
            batches += cut
        return iter(batches)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full if self.drop_last else full + (rest > 0)
