"""The manifest: Omniformer's one data contract.

A manifest is JSON Lines, one sample a line. Paths are relative to the manifest's folder.
A sample carries any subset of these fields: the fields of the registered modalities
(``Modality.fields``; the built-ins below) and the manifest's own (``CORE_FIELDS``):

    id              unique string
    image           path to an image (PNG, JPEG, ... anything Pillow decodes)      image
    text            a caption or any text for the sample                           text
    audio           path to speech or sound for the sample (WAV, FLAC, OGG)        audio
    question        a question in text                                             text
    question_audio  the question as speech                                         audio
    answer          the answer (a string from a closed vocabulary for QA)
    label           a class label (string or integer)
    split           one of train, val, test
    meta            a JSON object, free for the dataset's own use

``check_manifest`` validates every line and returns every problem with its line and field;
``read_manifest`` stops at structural problems (bad JSON, unknown fields) with the same detail.
Both also take a shard folder (``omniformer.data.shards``: tar files and their ``shards.json``):
its samples' media paths name tar members (``shard-000003.tar/000123.image.png``), which
``resolve``, ``media_problem``, ``load_media`` and ``open_media`` read like files.

The file is UTF-8 (a byte-order mark at its start is allowed); blank lines are skipped, and
line numbers count them. Media paths: a relative path is resolved against the manifest's
folder and may leave it (``../clips/a.wav``), an absolute path is used as it is, symbolic links
are followed. A manifest is the user's own file, trusted like a recipe: it may name any file its
user can read (the server never opens a path a request names). ``media_problem`` says what is
wrong with a media path before anything decodes it, the same for ``data check`` and training.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, TypeVar

if TYPE_CHECKING:
    from ..modalities.base import Modality

CORE_FIELDS = ("id", "answer", "label", "target", "split", "meta")  # the fields no modality carries
SPLITS = ("train", "val", "test")
T = TypeVar("T")


def modality_fields() -> dict[str, "Modality"]:
    """Each manifest field that carries a registered modality -> that modality, in registry order."""
    from ..registry import get_modality, modality_names
    return {f: modality for name in modality_names() for modality in [get_modality(name)] for f in modality.fields}


def allowed_fields(carriers: dict[str, "Modality"] | None = None) -> tuple[str, ...]:
    """Every field a sample may carry: ``id``, the registered modalities' fields, then the rest of the core."""
    return ("id", *(modality_fields() if carriers is None else carriers), *CORE_FIELDS[1:])


class ManifestError(ValueError):
    """A manifest cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    message: str
    where: str = ""  # a shard folder's sample: its JSON member (shard-000003.tar/000123.json); no line then

    def __str__(self) -> str:  # line 0: the file as a whole
        if self.where:  # no field: the shard as a whole
            return f"{self.where}: {self.field + ': ' if self.field else ''}{self.message}"
        return f"line {self.line}: {self.field}: {self.message}" if self.line else f"{self.field}: {self.message}"


SHOWN_PATH = 80  # characters of a path a message shows


def shown(path: str | Path) -> str:
    """A path as a message shows it: whole, or its start and end when it is very long."""
    text = str(path)
    return text if len(text) <= SHOWN_PATH else f"{text[:40]}...{text[-30:]} ({len(text)} characters)"


def media_problem(path: str | Path) -> str | None:
    """What keeps ``path`` from being read as a media file, in words (None: a readable regular file).

    It does not exist, is a broken symbolic link, a folder, a device or pipe (reading one could
    block forever), unreadable, or its name holds a NUL byte or is too long for the file system.
    Why: ``data check`` and training refuse the same files with the same words."""
    path = str(path)
    try:
        info = os.stat(path)  # follows symbolic links
    except ValueError:
        return "the path holds a NUL byte"
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return f"the path is too long for the file system ({len(path)} characters)"
        if e.errno == errno.ENOENT and os.path.islink(path):
            return f"is a broken symbolic link (to {shown(os.readlink(path))})"
        if e.errno == errno.ENOTDIR:
            from .shards import member_problem, tar_member
            member = tar_member(path)  # a member of a tar shard: its parent is the .tar file
            if member is not None:
                return member_problem(*member)
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "does not exist"
        if e.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, pipe or socket)"
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return None


class MediaError(ValueError):
    """A sample's media file cannot be used (missing, unreadable, or it does not decode); the
    message names the file and why."""


def load_media(path: Path, decode: Callable[[Path], T]) -> T:
    """``decode(path)`` once ``media_problem`` finds nothing wrong with ``path``; any failure is a
    MediaError naming the file. ``data check`` and training both read media through here (with the
    same decoders, ``load_image`` and ``load_audio``), so they agree on what is bad. A member of
    a tar shard is decoded from its bytes, and the error names the shard and the member."""
    from .shards import read_member, shown_member, tar_member
    member = tar_member(path)
    name = shown(path) if member is None else shown_member(*member)  # a long path keeps shard and member
    why = media_problem(path)
    if why is not None:
        raise MediaError(f"{name} {why}")
    try:
        return decode(path) if member is None else decode(read_member(*member))
    except MediaError:
        raise
    except (ValueError, OSError) as e:  # ImageError and AudioError are ValueErrors
        message = str(e)
        if member is not None:  # decoders name bytes "<bytes>" (and file objects by address)
            message = message.replace("<bytes>", str(path))
            message = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "in the member", message)
            message = message if str(path) in message else f"{path}: {message}"
        raise MediaError(shown(message) if str(path) not in message
                         else message.replace(str(path), name)) from None


def open_media(path: str | Path) -> BinaryIO:
    """``path`` opened for reading as bytes, seekable: a file, or a tar shard's member (only its
    bytes). Why: readers of headers (``soundfile.info``) read a member without copying it."""
    from .shards import open_member, tar_member
    member = tar_member(path)
    return open(path, "rb") if member is None else open_member(*member)


def manifest_exists(path: str | Path) -> bool:
    """Whether ``path`` is a manifest file or a shard folder (one holding ``shards.json``), what
    ``data.manifest`` may name; the tasks check it before reading."""
    from .shards import is_shard_folder
    try:
        return Path(path).is_file() or is_shard_folder(path)
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _manifest_file_problem(path: Path) -> str | None:
    problem = media_problem(path)
    if problem == "is a folder, not a file":
        problem += " (nor a shard folder: it holds no shards.json; 'omniformer data shard' writes one)"
    return f"manifest {shown(path)} {problem}" if problem else None


def _lines(path: Path) -> Iterable[tuple[int, str | None, Problem | None]]:
    """(line number, text, None) for every non-blank line, or (line number, None, problem) for a
    line that is not UTF-8. Read as bytes so that one bad line is reported, not the whole file."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark, as some editors write
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, None, Problem(line_no, "<encoding>", f"not UTF-8 text (byte {e.start + 1} of the "
                                                                    f"line is 0x{raw[e.start]:02x})")
                continue
            if text.strip():
                yield line_no, text, None


def _structural_problems(line_no: int, raw: str, carriers: dict[str, "Modality"]) -> tuple[dict | None, list[Problem]]:
    try:
        sample = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, [Problem(line_no, "<json>", f"not valid JSON ({e.msg} at column {e.colno})")]
    except RecursionError:
        return None, [Problem(line_no, "<json>", "not usable JSON (arrays and objects nested too deeply)")]
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        return None, [Problem(line_no, "<json>", f"not usable JSON ({shown(e)})")]
    if not isinstance(sample, dict):
        return None, [Problem(line_no, "<json>", f"expected a JSON object, got {type(sample).__name__}")]
    problems = []
    allowed = allowed_fields(carriers)
    for key in sample:
        if key not in allowed:
            problems.append(Problem(line_no, key, f"unknown field; allowed: {', '.join(allowed)}"))
    texts = ("answer", "target", *(f for f, m in carriers.items() if not m.files))  # held inline, not paths
    for key in ("id", *carriers, "answer", "target"):
        value = sample.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(Problem(line_no, key, f"expected a string, got {shown(json.dumps(value))}"))
        elif key in texts and not value.strip():
            problems.append(Problem(line_no, key, "empty text"))
        elif key in carriers and key not in texts and not value.strip():
            problems.append(Problem(line_no, key, "empty path"))
    if "label" in sample and not isinstance(sample["label"], (str, int)):
        problems.append(Problem(line_no, "label", f"expected a string or integer, got {shown(json.dumps(sample['label']))}"))
    if "split" in sample and sample["split"] not in SPLITS:
        problems.append(Problem(line_no, "split", f"{shown(repr(sample['split']))} is not one of {', '.join(SPLITS)}"))
    if "meta" in sample and not isinstance(sample["meta"], dict):
        problems.append(Problem(line_no, "meta", "expected a JSON object"))
    if not any(sample.get(k) is not None for k in carriers):
        problems.append(Problem(line_no, "<sample>", f"has none of the modality fields {', '.join(carriers)}"))
    return sample, problems


def read_manifest_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, sample) for every sample of a manifest; raises ManifestError naming the file,
    line and field of the first problem, or saying that the manifest holds no sample. A shard
    folder's samples are numbered from 1 in order (its errors name the shard and member)."""
    path = Path(path)
    from .shards import is_shard_folder, read_shards
    if is_shard_folder(path):
        return list(enumerate(read_shards(path), start=1))
    problem = _manifest_file_problem(path)
    if problem:
        raise ManifestError(problem)
    samples, carriers = [], modality_fields()
    try:
        for line_no, raw, problem in _lines(path):
            sample, problems = (None, [problem]) if problem else _structural_problems(line_no, raw, carriers)
            if problems:
                raise ManifestError(f"{path}: {problems[0]}")
            samples.append((line_no, sample))
    except OSError as e:
        raise ManifestError(f"manifest {path} cannot be read: {e.strerror or e}") from None
    if not samples:
        raise ManifestError(f"{path}: no samples (the manifest is empty); one JSON object a line is expected")
    return samples


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Read a manifest, or a shard folder (``omniformer.data.shards``); raises ManifestError naming
    the file, line and field (the shard and member) of the first problem."""
    return [sample for _, sample in read_manifest_lines(path)]


def write_manifest(path: str | Path, samples: Iterable[dict[str, Any]]) -> Path:
    """Write samples as JSON Lines, atomically (a crash leaves the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    allowed = allowed_fields()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for sample in samples:
                unknown = [k for k in sample if k not in allowed]
                if unknown:
                    raise ManifestError(f"sample {sample.get('id')!r}: unknown field {unknown[0]!r}")
                f.write(json.dumps(sample, ensure_ascii=False, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve(manifest_path: str | Path, relative: str) -> Path:
    """A media path as the manifest names it, resolved against the manifest's folder (a shard
    folder: against itself, ``DIR/shard-000003.tar/000123.image.png``)."""
    base = Path(manifest_path).resolve()
    try:
        folder = base.is_dir()
    except (OSError, ValueError):  # a name too long for the file system: not a folder either
        folder = False
    return (base if folder else base.parent) / relative


def check_manifest(path: str | Path, decode: bool = True, sample_rate: int = 16000) -> tuple[int, list[Problem]]:
    """Validate every line; returns (number of samples, every problem found). Never stops early.

    Each media path must pass ``media_problem``; with ``decode``, each file of a modality with
    ``media`` is then read by its ``check_file`` (audio at ``sample_rate``), the decoder training
    uses. A manifest without any sample is a problem too. A shard folder is checked member by
    member (``omniformer.data.shards.check_shards``), its problems naming the shard and member."""
    path = Path(path)
    from .shards import check_shards, is_shard_folder
    if is_shard_folder(path):
        return check_shards(path, decode=decode, sample_rate=sample_rate)
    carriers = modality_fields()
    problem = _manifest_file_problem(path)
    if problem:
        return 0, [Problem(0, "<file>", problem)]
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    media = MediaChecker(path, decode, sample_rate)
    count = 0
    try:
        for line_no, raw, problem in _lines(path):
            count += 1
            if problem:
                problems.append(problem)
                continue
            sample, found = _structural_problems(line_no, raw, carriers)
            problems.extend(found)
            if sample is None:
                continue
            sample_id = sample.get("id")
            if isinstance(sample_id, str):
                if sample_id in seen_ids:
                    problems.append(Problem(line_no, "id", f"duplicate id {shown(repr(sample_id))} "
                                                           f"(first on line {seen_ids[sample_id]})"))
                else:
                    seen_ids[sample_id] = line_no
            problems.extend(media.problems(sample, line_no))
    except OSError as e:
        problems.append(Problem(0, "<file>", f"manifest {path} cannot be read: {e.strerror or e}"))
    if count == 0:
        problems.append(Problem(0, "<file>", "no samples (the manifest is empty); one JSON object a line is expected"))
    return count, problems


class MediaChecker:
    """The media checks of ``check_manifest`` for one manifest (or shard folder): each media path
    must pass ``media_problem``, and with ``decode`` its modality's ``check_file``. Media that many
    samples share is decoded once. Why a class: manifests and shard folders check samples alike."""

    def __init__(self, manifest: str | Path, decode: bool = True, sample_rate: int = 16000):
        from ..config import ModelConfig
        self.manifest, self.decode = Path(manifest), decode
        self.model = ModelConfig()
        self.model.audio.sample_rate = sample_rate
        self.carriers = modality_fields()
        self.decoded: dict[str, str | None] = {}

    def problems(self, sample: dict[str, Any], line: int = 0, where: str = "") -> list[Problem]:
        """The problems of ``sample``'s media files (``line`` or ``where`` say where it is)."""
        found = []
        for key, modality in self.carriers.items():
            rel = sample.get(key)
            if not modality.files or not isinstance(rel, str) or not rel.strip():
                continue
            media = resolve(self.manifest, rel)
            why = media_problem(media)
            if why is not None:
                found.append(Problem(line, key, f"file {shown(rel)} {why}", where))
                continue
            if not self.decode or not modality.media:
                continue
            cache_key = f"{modality.name}:{media}"
            if cache_key not in self.decoded:
                try:
                    load_media(media, functools.partial(modality.check_file, model=self.model))
                    self.decoded[cache_key] = None
                except MediaError as e:
                    self.decoded[cache_key] = str(e)
            if self.decoded[cache_key] is not None:
                found.append(Problem(line, key, self.decoded[cache_key], where))
        return found
