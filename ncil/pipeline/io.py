"""The one module that reads and writes artifacts: YAML/JSON, NPY data, checkpoints, Parquet.

Every write goes to a temporary file in the destination folder and is renamed into place, so a
killed job never leaves a half-written file under the final name; the next write of the artifact
removes a temporary file that a killed job left. Outputs get the mode of any new file (0666 less
the umask), and a write that fails (no space, read-only, no permission) is one ``ArtifactError``
naming the artifact. Every read of an artifact turns a corrupt or truncated file into an
``ArtifactError`` that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import socket
import time
from io import BytesIO
from pathlib import Path

import numpy as np

CHECKPOINT_FORMAT = 2  # 2: content_sha256 and centers_sha256
CENTERS_FORMAT = 1
MEMORY_FORMAT = 1
STATISTICS_FORMAT = 1
EVAL_FORMAT = 1
DATA_FORMAT = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt, truncated or does not follow its contract."""


def _one_line(err: BaseException) -> str:
    """A library's error text on one line (pyarrow and torch messages span several)."""
    return " ".join(str(err).split())


# --- Writing: temporary files, file modes, stray temporaries, write errors -----------------------
#
# A write goes to ``.<name>.<host>-<pid>-<token>.tmp`` beside the artifact and is renamed onto it.
# The temporary file is created with mode 0666, so the process's umask (and a folder's default ACL)
# gives it the same mode as any other new file: no umask is read or changed. A job killed inside a
# write (SIGKILL, OOM, node failure) leaves its temporary file behind: the next write of the same
# artifact removes it (``_remove_stale_temporaries``), and ``.gitignore`` / ``.dvcignore`` ignore the
# pattern, so neither git nor a DVC directory hash ever takes one in.

TMP_SUFFIX = ".tmp"
# errno values that say "this output cannot be written": reported as one line naming the artifact.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                          errno.EIO, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ENOENT})
_IMPORTED_AT = time.time()  # another host's temporary not modified since before this is taken as abandoned


def _host() -> str:
    """This machine's name as it goes into temporary names: letters, digits and '-' (at most 32)."""
    name = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:32]
    return name or "host"


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_host()}-{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def _writer_of(tmp: Path, path: Path) -> tuple[str, int] | None:
    """(host, pid) encoded in a temporary name of ``path``, or None for another shape of name."""
    middle = tmp.name[len(path.name) + 2 : -len(TMP_SUFFIX)]
    parts = middle.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def is_stale_temporary(tmp: Path, path: Path) -> bool:
    """Whether ``tmp`` (a ``.<name>.*.tmp`` sibling of ``path``) was left by a write that cannot finish.

    A writer on this host is known by its process id: stale once that process is gone. A temporary
    of another host (a cluster node) or of an older naming is stale when it was last modified before
    this process started: a write of the same artifact still running elsewhere keeps its file.
    """
    writer = _writer_of(tmp, path)
    if writer is not None and writer[0] == _host():
        return writer[1] != os.getpid() and not _alive(writer[1])
    try:
        return tmp.stat().st_mtime < _IMPORTED_AT
    except FileNotFoundError:
        return False


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries that killed writes of ``path`` left beside it (best effort)."""
    try:
        siblings = list(path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"))
    except OSError:
        return
    for tmp in siblings:
        if is_stale_temporary(tmp, path):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _write_error(path: Path, err: OSError) -> ArtifactError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    return ArtifactError(f"{path}: cannot write ({reason})")


def _is_write_error(err: BaseException, path: Path, tmp: Path) -> bool:
    """An OSError about writing this artifact (not, say, about a source file read inside the block)."""
    if not isinstance(err, OSError) or err.errno not in WRITE_ERRNOS:
        return False
    named = {str(n) for n in (err.filename, err.filename2) if n is not None}
    return not named or bool(named & {str(path), str(tmp), str(path.parent)})


def _create_temporary(path: Path) -> Path:
    """An empty temporary file beside ``path`` (parents created, stale temporaries removed first)."""
    tmp = _temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ArtifactError(f"{path}: cannot write (a folder above it is a file)") from None
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        _remove_stale_temporaries(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
    except OSError as err:
        raise _write_error(path, err) from None
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file exists (empty, mode 0666 less the umask) when the block starts; writers may
    reopen it by name. An error writing it (no space, read-only file system, no permission, file
    too large) becomes an ``ArtifactError`` "<path>: cannot write (<reason>)"; the temporary file
    is removed on any error, and ones left by killed writes of ``path`` are removed first.
    """
    path = Path(path)
    tmp = _create_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _is_write_error(err, path, tmp):
            raise _write_error(path, err) from None
        raise


def _fs_key(folder: Path) -> int:
    while not folder.exists():
        folder = folder.parent
    return folder.stat().st_dev


def space_needed(new_sizes: list[int], old_sizes: list[int]) -> int:
    """Peak extra bytes while files are replaced one by one in this order (old_sizes: 0 if absent).

    Writing file i needs its new size while its old version still exists; each finished file frees
    its old size. Pure, so it can be checked by hand.
    """
    peak, grown = 0, 0
    for new, old in zip(new_sizes, old_sizes):
        peak = max(peak, grown + new)
        grown += new - old
    return max(peak, 0)


def ensure_writable(*paths: str | Path, sizes: dict | None = None) -> None:
    """Fail now, in one line naming the artifact, if an output cannot be created where it goes.

    Called by a stage before its long work (loading data, training), so a read-only folder or a
    missing permission costs seconds, not a training run. Creates the missing parent folders,
    creates and removes a temporary file in each, and refuses an output path that is a folder.
    With ``sizes`` (path -> bytes the new file will have, in write order) it also checks that each
    file system has room for them: "<path>: cannot write (No space left on device: ...)".
    """
    for path in map(Path, paths):
        if path.is_dir():
            raise ArtifactError(f"{path}: cannot write (it is a folder; expected a file path)")
        probe = _create_temporary(path)  # parents created, stray temporaries of this artifact removed
        with contextlib.suppress(OSError):
            probe.unlink()
    groups: dict[int, dict[Path, int]] = {}  # file system -> {path: new size}, in write order
    for path, size in (sizes or {}).items():
        groups.setdefault(_fs_key(Path(path).parent), {})[Path(path)] = int(size)
    for group in groups.values():
        first = next(iter(group))
        old = [p.stat().st_size if p.is_file() else 0 for p in group]
        need = space_needed(list(group.values()), old)
        stat = os.statvfs(first.parent)
        free = stat.f_bavail * stat.f_frsize
        if need > free:
            raise ArtifactError(f"{first}: cannot write (No space left on device: the outputs beside it need "
                                f"{need:,} bytes, {free:,} are free in {first.parent})")


def _write_all(tmp: Path, *parts) -> None:
    """Write the buffers ``parts`` to the file ``tmp`` with ``os.write`` until every byte is out.

    Unbuffered, so a full disk is an ``OSError`` with its errno (numpy's ``tofile`` reports a short
    write as "N requested and M written", without one).
    """
    fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        _write_all(tmp, data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove_outputs(*paths: str | Path) -> None:
    """Delete a step's previous outputs before it writes the new ones.

    For a step with several outputs: an interrupted run then leaves some files missing, which every
    reader and both workflow engines see as incomplete, never a complete-looking mix of old and new.
    """
    for path in map(Path, paths):
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            raise ArtifactError(f"{path}: cannot write (it is a folder; expected a file path)") from None
        except OSError as err:
            raise ArtifactError(f"{path}: cannot remove the previous version ({os.strerror(err.errno)})") from None


def write_files(files: dict) -> None:
    """Write the outputs of one step as a set: ``files`` maps each path to its bytes or text.

    Every old file is removed first, then the new ones are written (each atomically) in the given
    order, so a step killed in between leaves missing files, never old and new ones side by side.
    """
    remove_outputs(*files)
    for path, data in files.items():
        write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(path: str | Path, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: a folder, expected a {what}")
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} not found")
    return path


# --- YAML and JSON -------------------------------------------------------------------------------


def _repeated_key(node, path: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The first key that a mapping of the composed YAML ``node`` holds twice: (dotted path, where its
    two places are, "lines 3 and 7" counted from 1); None where every key is unique (merge keys ``<<``
    excepted)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            ident = (key.tag, name)  # `1` and "1" are two keys; `epochs` and "epochs" one
            if ident in first:
                a, b = first[ident], key.start_mark
                where = (f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line
                         else f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}")
                return ".".join((*path, name)), where
            first[ident] = key.start_mark
            found = _repeated_key(value, (*path, name))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _repeated_key(item, (*path, str(i)))
            if found:
                return found
    return None


def parse_yaml(text: str, source: str | Path):
    """The value of the YAML document ``text`` (read from ``source``); every YAML file the pipeline reads
    comes through here. A key given twice in one mapping is refused: PyYAML (and so Snakemake's
    ``configfile:``) would silently keep the last value, while DVC refuses the file."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        repeated = _repeated_key(node)
        if repeated:
            key, where = repeated
            raise ArtifactError(f"{source}: {key}: the key is given twice, at {where} "
                                f"(expected each key once; only the last would count)")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ArtifactError(f"{source}: not valid YAML ({_one_line(err)})") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    path = _require(path, "YAML file")
    data = parse_yaml(path.read_text(encoding="utf-8"), path)
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def write_yaml(path: str | Path, data: dict, header: str = "") -> None:
    import yaml

    write_text(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))


def dumps_json(data) -> str:
    """Canonical JSON text: sorted keys, two-space indent, trailing newline (byte-stable)."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n"


def write_json(path: str | Path, data) -> None:
    write_text(path, dumps_json(data))


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    path = _require(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated {what} ({err})") from None


# --- Prepared data sets: NPY arrays plus a checksum manifest -----------------------------------


def write_array(path: str | Path, array: np.ndarray) -> None:
    """NPY format 1.0 (byte-stable: no timestamps, unlike ``np.savez``): the header, then the raw data.

    The same bytes as ``np.lib.format.write_array(..., version=(1, 0))``, written with ``_write_all``.
    """
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"{path}: object arrays cannot be written (allow_pickle is off)")
    header = BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    with atomic_path(path) as tmp:
        _write_all(tmp, header.getvalue(), array.reshape(-1).view(np.uint8) if array.size else b"")


def _allocate(tmp: Path) -> None:
    """Reserve the disk blocks of a (sparse) memory-mapped file now.

    A full disk then fails here with ENOSPC, as an error, instead of killing the process with
    SIGBUS when a page of the mapping is written. File systems without fallocate are left as they are.
    """
    if not hasattr(os, "posix_fallocate"):  # macOS
        return
    fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def write_array_chunks(path: str | Path, shape: tuple, dtype, chunks) -> None:
    """NPY 1.0 file of ``shape`` filled row block by row block from ``chunks`` (an iterable of arrays).

    Byte-identical to ``write_array`` of the concatenated rows, without holding them all in memory
    (ImageNet-Subset's training images are about 19 GB as uint8).
    """
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape), version=(1, 0))
        _allocate(tmp)
        start = 0
        for chunk in chunks:
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
        if start != shape[0]:
            raise ValueError(f"{path}: expected {shape[0]} rows, the chunks gave {start}")
        out.flush()
        del out


def npy_size(shape: tuple, dtype) -> int:
    """Bytes of the NPY 1.0 file ``write_array`` writes for an array of ``shape`` and ``dtype``."""
    header = BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    )
    return len(header.getvalue()) + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def read_array(path: str | Path, mmap: bool = False) -> np.ndarray:
    """An NPY array; ``mmap`` maps it read-only instead of reading it (rows load when indexed)."""
    path = _require(path, "array file")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated NPY array ({_one_line(err)})") from None


def write_manifest(path: str | Path, dataset: str, files: list[str | Path], extra: dict) -> None:
    """``manifest.json``: format version, data set name and the SHA-256 of every data file."""
    entries = {Path(f).name: {"sha256": sha256_file(f), "bytes": Path(f).stat().st_size} for f in files}
    write_json(path, {"format": "ncil-arrays", "format_version": DATA_FORMAT, "dataset": dataset,
                      "files": entries, **extra})


def verify_manifest(path: str | Path, names: list[str] | None = None) -> dict:
    """Check data files against the manifest's sizes and SHA-256; return the manifest.

    ``names`` (file names beside the manifest) limits the check to the files a reader is about to
    use, each of which must be listed; by default every listed file is checked. ``prepare`` removes
    the old manifest first and writes the new one last, so an interrupted prepare leaves no manifest,
    and a manifest with arrays of another prepare fails here (a size or checksum mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: data manifest not found (missing, or its prepare step did not finish: "
                            "run `python -m ncil prepare`)")
    manifest = read_json(path, "data manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != "ncil-arrays" \
            or manifest.get("format_version") != DATA_FORMAT:
        found = (manifest.get("format"), manifest.get("format_version")) if isinstance(manifest, dict) else (None, None)
        raise ArtifactError(f"{path}: format: expected ncil-arrays version {DATA_FORMAT}, got {found[0]!r} "
                            f"version {found[1]!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: files: expected a mapping from file name to its sha256 and bytes")
    for name in names if names is not None else sorted(files):
        entry = files.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("bytes"), int):
            listed = "listed without its sha256 and bytes" if name in files else "not listed"
            raise ArtifactError(f"{path}: files.{name}: {listed} in the manifest (rerun the prepare step)")
        file = _require(path.parent / name, "data file listed in the manifest")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(f"{file}: size mismatch (expected {entry['bytes']} bytes, found {size}); "
                                "the file is truncated or was changed: rerun the prepare step")
        found = sha256_file(file)
        if found != entry["sha256"]:
            raise ArtifactError(
                f"{file}: checksum mismatch (expected sha256 {entry['sha256']}, found {found}); "
                f"the file is corrupt or was changed: rerun the prepare step"
            )
    return manifest


# --- Checkpoints ---------------------------------------------------------------------------------


def content_digest(payload) -> str:
    """SHA-256 of a checkpoint payload's content: every tensor's dtype, shape and bytes, every value.

    Walks dicts in sorted key order, so the digest depends on what the checkpoint holds, not on how
    torch laid out its archive. A flipped byte inside a tensor changes it.
    """
    import torch

    digest = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"D%d" % len(value))
            for key in sorted(value, key=str):
                digest.update(f"K{key!r}".encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(b"L%d" % len(value))
            for item in value:
                feed(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r}".encode())

    feed(payload)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, payload: dict, centers_file: str | Path | None = None,
                    memory_file: str | Path | None = None, statistics_file: str | Path | None = None) -> None:
    """A plain dict of tensors and primitives, loadable with ``torch.load(weights_only=True)``.

    The payload carries ``content_sha256`` (``content_digest`` of everything else), checked by
    ``load_checkpoint``; with ``centers_file`` it also records that file's SHA-256, so a checkpoint
    and a class-centers table from different runs or writes are never taken as one task's outputs.
    ``memory_file`` (a rehearsal method's exemplar memory) is recorded the same way, as ``memory_sha256``;
    a checkpoint without one has no such key. So is ``statistics_file`` (FeCAM's per-class statistics), as
    ``statistics_sha256``.
    """
    import torch

    payload = {"format_version": CHECKPOINT_FORMAT, **payload}
    for kind, file in (("centers", centers_file), ("memory", memory_file), ("statistics", statistics_file)):
        if file is not None:  # in this order: the payload's keys, and so the checkpoint's bytes, as before
            payload[f"{kind}_sha256"] = sha256_file(file)
    payload["content_sha256"] = content_digest(payload)
    buffer = BytesIO()  # saved in memory: torch names the archive after a file, and the temp name is random
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


# The files a checkpoint vouches for (save_checkpoint records each one's SHA-256 under "<kind>_sha256"): what each
# is called in messages, and why a checkpoint may have none.
COMPANIONS = {
    "centers": ("class-centers table", "it was saved without one"),
    "memory": ("exemplar memory", "its method keeps none"),
    "statistics": ("class statistics", "its method's classifier is not fecam"),
}


def _check_companion(path: Path, payload: dict, kind: str, file: str | Path) -> None:
    """Refuse ``file`` unless it hashes to the ``<kind>_sha256`` that checkpoint ``path`` (``payload``) records."""
    name, none_because = COMPANIONS[kind]
    found = sha256_file(_require(file, name))
    key = f"{kind}_sha256"
    if key not in payload:
        raise ArtifactError(f"{file}: {path} records no {name} ({none_because}): the {name} does not belong to it")
    if payload[key] != found:
        raise ArtifactError(f"{file}: does not belong to {path} (the checkpoint records {kind} sha256 {payload[key]}, "
                            f"the file hashes to {found}): the {name} was changed or corrupted after it was written, "
                            "or the two come from different training jobs")


def load_checkpoint(path: str | Path, centers_file: str | Path | None = None,
                    memory_file: str | Path | None = None, statistics_file: str | Path | None = None) -> dict:
    """Load and check a checkpoint: format, required keys, content hash (and its centers, memory and statistics
    files' hashes)."""
    import torch

    path = _require(path, "checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zip errors...
        raise ArtifactError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != CHECKPOINT_FORMAT:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise ArtifactError(f"{path}: format_version: expected a checkpoint of format {CHECKPOINT_FORMAT}, "
                            f"found {found!r} (regenerate it with this version of ncil)")
    for key in ("task", "seen_classes", "model", "config", "content_sha256"):
        if key not in payload:
            raise ArtifactError(f"{path}: {key}: missing from the checkpoint")
    stored = payload.pop("content_sha256")
    if content_digest(payload) != stored:
        raise ArtifactError(f"{path}: content_sha256: the checkpoint's tensors or values do not match the hash "
                            "written with them (the file was modified or corrupted after it was saved)")
    for kind, file in (("centers", centers_file), ("memory", memory_file), ("statistics", statistics_file)):
        if file is not None:
            _check_companion(path, payload, kind, file)
    return payload


# --- Parquet tables ------------------------------------------------------------------------------


def _write_table(path: str | Path, table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


class _Inconsistent(Exception):
    """A Parquet file that decodes but disagrees with itself (raised inside ``_read_table``)."""


def _check_statistics(file, table) -> None:
    """Compare every column chunk's values with the footer written beside them.

    The footer records, per row group and column, the number of values, nulls and the minimum and
    maximum. Parquet files carry no checksum by default (and adding one would change the bytes), so
    this is what catches most damage that still decodes: a flipped bit in a data page usually
    moves a value past the recorded range or breaks the count.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    meta = file.metadata
    if meta.num_rows != table.num_rows:
        raise _Inconsistent(f"the footer records {meta.num_rows} rows, the data holds {table.num_rows}")
    offset = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        part = table.slice(offset, group.num_rows)
        offset += group.num_rows
        for j in range(group.num_columns):
            chunk = group.column(j)
            name = chunk.path_in_schema.split(".")[0]
            values = part.column(name).combine_chunks()
            while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
                values = values.flatten()  # leaf values, as the footer counts them
            if chunk.num_values != len(values):
                raise _Inconsistent(f"{name}: the footer records {chunk.num_values} values, the data holds {len(values)}")
            stats = chunk.statistics
            if stats is None:
                continue
            if stats.has_null_count and stats.null_count != values.null_count:
                raise _Inconsistent(f"{name}: the footer records {stats.null_count} nulls, the data holds {values.null_count}")
            if stats.has_min_max and len(values):
                found = pc.min_max(values)
                low, high = found["min"].as_py(), found["max"].as_py()
                if low != stats.min or high != stats.max:
                    raise _Inconsistent(f"{name}: values range over [{low}, {high}], the footer records "
                                        f"[{stats.min}, {stats.max}]")


def _read_table(path: str | Path, what: str, required: dict, format_version: int):
    """A Parquet table with its ``required`` columns (name -> type check) and ``ncil.format_version``.

    Anything that does not decode, or decodes but disagrees with its own footer, is an
    ``ArtifactError`` naming the file.
    """
    import pyarrow.parquet as pq

    path = _require(path, what)
    try:
        with pq.ParquetFile(path) as file:
            table = file.read()
            _check_statistics(file, table)
    except _Inconsistent as err:
        raise ArtifactError(f"{path}: corrupt {what} ({err})") from None
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, but also KeyError or UnicodeDecodeError
        raise ArtifactError(f"{path}: corrupt or truncated {what} ({type(err).__name__}: {_one_line(err)})") from None
    for name, type_check in required.items():
        if name not in table.column_names:
            raise ArtifactError(f"{path}: {name}: column missing from the {what}")
        if not type_check(table.schema.field(name).type):
            raise ArtifactError(f"{path}: {name}: unexpected column type {table.schema.field(name).type}")
    found = (table.schema.metadata or {}).get(b"ncil.format_version")
    if found != str(format_version).encode():
        raise ArtifactError(f"{path}: ncil.format_version: expected {format_version} in the schema metadata, "
                            f"found {found.decode(errors='replace') if found is not None else 'none'}")
    return table


def _metadata_int(path: Path, table, key: str) -> int:
    value = (table.schema.metadata or {}).get(key.encode())
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ArtifactError(f"{path}: {key}: expected an integer in the schema metadata, found {value!r}") from None


def _refuse(path: Path, what: str, column: str, problem: str):
    raise ArtifactError(f"{path}: {column}: {problem} (the {what} is corrupt or was not written by ncil)")


def write_centers(path: str | Path, rows: dict, task: int, feature_dim: int) -> None:
    """Class centers (design.md 2): one row per class seen so far.

    ``rows`` holds equal-length sequences ``class_id``, ``original_class``, ``task``, ``n_samples``,
    ``spread`` (the class's mean per-dimension feature variance, trace(Sigma)/d, for PASS's radius)
    and ``center`` (an (n, feature_dim) float32 array).
    """
    import pyarrow as pa

    centers = np.asarray(rows["center"], dtype=np.float32)
    if centers.ndim != 2 or centers.shape[1] != feature_dim:
        raise ValueError(f"center: expected shape (n, {feature_dim}), got {centers.shape}")
    schema = pa.schema(
        [
            ("class_id", pa.int32()),
            ("original_class", pa.int32()),
            ("task", pa.int32()),
            ("n_samples", pa.int64()),
            ("spread", pa.float32()),
            ("center", pa.list_(pa.float32(), feature_dim)),
        ],
        metadata={
            "ncil.format_version": str(CENTERS_FORMAT),
            "ncil.task": str(task),
            "ncil.feature_dim": str(feature_dim),
        },
    )
    flat = pa.array(centers.reshape(-1), type=pa.float32())
    table = pa.table(
        [
            pa.array(rows["class_id"], type=pa.int32()),
            pa.array(rows["original_class"], type=pa.int32()),
            pa.array(rows["task"], type=pa.int32()),
            pa.array(rows["n_samples"], type=pa.int64()),
            pa.array(rows["spread"], type=pa.float32()),
            pa.FixedSizeListArray.from_arrays(flat, feature_dim),
        ],
        schema=schema,
    )
    _write_table(path, table)


def read_centers(path: str | Path) -> dict:
    """Class centers as numpy arrays, plus the producing task and the feature dim.

    Checked beyond decoding: the footer statistics, class ids and original classes unique and
    non-negative, introducing tasks non-decreasing from 0 to the producing task, at least one
    sample per class, no negative spread, a center of ``ncil.feature_dim`` values per row.
    """
    import pyarrow as pa

    what = "class-centers table"
    table = _read_table(
        path,
        what,
        {
            "class_id": pa.types.is_integer,
            "original_class": pa.types.is_integer,
            "task": pa.types.is_integer,
            "n_samples": pa.types.is_integer,
            "spread": pa.types.is_floating,
            "center": pa.types.is_fixed_size_list,
        },
        CENTERS_FORMAT,
    )
    path = Path(path)
    dim, task = _metadata_int(path, table, "ncil.feature_dim"), _metadata_int(path, table, "ncil.task")
    if table.schema.field("center").type.list_size != dim:
        _refuse(path, what, "center", f"{table.schema.field('center').type.list_size} values per row, "
                                      f"ncil.feature_dim says {dim}")
    center = table.column("center").combine_chunks()
    values = center.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    out = {
        "class_id": table.column("class_id").to_numpy(),
        "original_class": table.column("original_class").to_numpy(),
        "task": table.column("task").to_numpy(),
        "n_samples": table.column("n_samples").to_numpy(),
        "spread": table.column("spread").to_numpy().astype(np.float32),
        "center": values.reshape(len(table), dim),
        "producing_task": task,
        "feature_dim": dim,
    }
    for column in ("class_id", "original_class"):
        if len(np.unique(out[column])) != len(table) or (out[column] < 0).any():
            _refuse(path, what, column, "expected distinct non-negative values")
    tasks = out["task"]
    if len(tasks) and (tasks[0] < 0 or tasks[-1] > task or (np.diff(tasks) < 0).any()):
        _refuse(path, what, "task", f"expected non-decreasing tasks from 0 to the producing task {task}")
    if (out["n_samples"] < 1).any():
        _refuse(path, what, "n_samples", "expected at least one sample per class")
    if (out["spread"] < 0).any():
        _refuse(path, what, "spread", "expected no negative spread (a mean variance)")
    return out


MEMORY_COLUMNS = ("index", "class_id", "original_class", "task", "rank")


def write_memory(path: str | Path, rows: dict, task: int, per_class: int) -> None:
    """A rehearsal method's exemplar memory after task ``task``: one row per kept training image.

    ``rows`` holds equal-length sequences ``index`` (row of the prepared training array the task trained
    on), ``class_id`` (its label after the class-order remap), ``original_class``, ``task`` (that introduced the
    class) and ``rank`` (herding rank within the class, 0 first); rows grouped by class, in herding order.
    Schema metadata: ``ncil.task``, ``ncil.per_class`` (exemplars kept per class).
    """
    import pyarrow as pa

    types = {"index": pa.int64(), "class_id": pa.int32(), "original_class": pa.int32(), "task": pa.int32(),
             "rank": pa.int32()}
    schema = pa.schema(list(types.items()), metadata={"ncil.format_version": str(MEMORY_FORMAT),
                                                      "ncil.task": str(task), "ncil.per_class": str(per_class)})
    table = pa.table([pa.array(np.asarray(rows[name]), type=types[name]) for name in MEMORY_COLUMNS], schema=schema)
    _write_table(path, table)


def read_memory(path: str | Path) -> dict:
    """An exemplar memory as numpy arrays, plus ``producing_task`` and ``per_class``.

    Checked beyond decoding (``_read_table``: the footer statistics): no negative value, distinct training
    rows, one original class per class id and back, each class's rows together with ranks 0, 1, ... and at
    most ``ncil.per_class`` of them, introducing tasks non-decreasing up to the producing task.
    """
    import pyarrow as pa

    what = "exemplar memory"
    table = _read_table(path, what, {name: pa.types.is_integer for name in MEMORY_COLUMNS}, MEMORY_FORMAT)
    path = Path(path)
    out = {name: table.column(name).to_numpy().astype(np.int64) for name in MEMORY_COLUMNS}
    task, per_class = _metadata_int(path, table, "ncil.task"), _metadata_int(path, table, "ncil.per_class")
    for name in MEMORY_COLUMNS:
        if (out[name] < 0).any():
            _refuse(path, what, name, "expected no negative value")
    if len(np.unique(out["index"])) != len(table):
        _refuse(path, what, "index", "expected distinct training rows")
    pairs = np.unique(np.stack([out["class_id"], out["original_class"]]), axis=1)
    if len(np.unique(pairs[0])) != pairs.shape[1] or len(np.unique(pairs[1])) != pairs.shape[1]:
        _refuse(path, what, "class_id", "expected one original_class per class_id and back")
    starts = np.flatnonzero(np.r_[True, np.diff(out["class_id"]) != 0]) if len(table) else np.zeros(0, np.int64)
    if len(starts) != pairs.shape[1]:
        _refuse(path, what, "class_id", "expected each class's rows together")
    expected_rank = np.arange(len(table)) - np.repeat(starts, np.diff(np.r_[starts, len(table)]))
    if not np.array_equal(out["rank"], expected_rank):
        _refuse(path, what, "rank", "expected ranks 0, 1, ... within each class")
    if len(table) and out["rank"].max() >= per_class:
        _refuse(path, what, "rank", f"expected at most ncil.per_class = {per_class} rows per class")
    tasks = out["task"]
    if len(tasks) and (tasks[-1] > task or (np.diff(tasks) < 0).any()):
        _refuse(path, what, "task", f"expected non-decreasing tasks up to the producing task {task}")
    return {**out, "producing_task": task, "per_class": per_class}


STATISTICS_COLUMNS = ("class_id", "original_class", "task", "n_samples", "mean", "covariance")


def write_statistics(path: str | Path, rows: dict, task: int, feature_dim: int) -> None:
    """FeCAM's per-class statistics of the classes task ``task`` introduced (docs/efcil.md): one row per class.

    ``rows`` holds equal-length sequences ``class_id`` (label after the class-order remap), ``original_class``,
    ``task`` (all ``task``: a file holds its own task's classes only; the frozen backbone never moves old ones),
    ``n_samples``, ``mean`` ((n, D): the mean raw feature) and ``covariance`` ((n, D, D): the unbiased covariance of
    the Tukey-transformed features, before shrinkage). Both float32, the covariance flattened row-major into a
    fixed-size list of D*D values. Schema metadata: ``ncil.task``, ``ncil.feature_dim``.
    """
    import pyarrow as pa

    mean = np.asarray(rows["mean"], dtype=np.float32)
    cov = np.asarray(rows["covariance"], dtype=np.float32)
    n = len(rows["class_id"])
    if mean.shape != (n, feature_dim) or cov.shape != (n, feature_dim, feature_dim):
        raise ValueError(f"mean, covariance: expected shapes ({n}, {feature_dim}) and ({n}, {feature_dim}, "
                         f"{feature_dim}), got {mean.shape} and {cov.shape}")
    types = {"class_id": pa.int32(), "original_class": pa.int32(), "task": pa.int32(), "n_samples": pa.int64(),
             "mean": pa.list_(pa.float32(), feature_dim), "covariance": pa.list_(pa.float32(), feature_dim ** 2)}
    schema = pa.schema(list(types.items()), metadata={"ncil.format_version": str(STATISTICS_FORMAT),
                                                      "ncil.task": str(task), "ncil.feature_dim": str(feature_dim)})
    columns = [pa.array(np.asarray(rows[name]), type=types[name]) for name in STATISTICS_COLUMNS[:4]]
    columns += [pa.FixedSizeListArray.from_arrays(pa.array(mean.reshape(-1), type=pa.float32()), feature_dim),
                pa.FixedSizeListArray.from_arrays(pa.array(cov.reshape(-1), type=pa.float32()), feature_dim ** 2)]
    _write_table(path, pa.table(columns, schema=schema))


def read_statistics(path: str | Path) -> dict:
    """FeCAM's class statistics as numpy arrays (``mean`` (n, D), ``covariance`` (n, D, D)), plus
    ``producing_task`` and ``feature_dim``.

    Checked beyond decoding (``_read_table``: the footer statistics): list sizes against ``ncil.feature_dim``,
    distinct non-negative class ids and original classes, every row of the producing task, at least two samples
    per class (an unbiased covariance), finite values and symmetric covariances with a non-negative diagonal.
    """
    import pyarrow as pa

    what = "class statistics"
    integer, fixed = pa.types.is_integer, pa.types.is_fixed_size_list
    table = _read_table(path, what, {"class_id": integer, "original_class": integer, "task": integer,
                                     "n_samples": integer, "mean": fixed, "covariance": fixed}, STATISTICS_FORMAT)
    path = Path(path)
    dim, task = _metadata_int(path, table, "ncil.feature_dim"), _metadata_int(path, table, "ncil.task")
    for name, size in (("mean", dim), ("covariance", dim * dim)):
        if table.schema.field(name).type.list_size != size:
            _refuse(path, what, name, f"{table.schema.field(name).type.list_size} values per row, expected {size} "
                                      f"(ncil.feature_dim {dim})")
    n = len(table)
    values = {name: table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
              for name in ("mean", "covariance")}
    out = {name: table.column(name).to_numpy().astype(np.int64) for name in STATISTICS_COLUMNS[:4]}
    out.update(mean=values["mean"].reshape(n, dim), covariance=values["covariance"].reshape(n, dim, dim),
               producing_task=task, feature_dim=dim)
    for column in ("class_id", "original_class"):
        if len(np.unique(out[column])) != n or (out[column] < 0).any():
            _refuse(path, what, column, "expected distinct non-negative values")
    if (out["task"] != task).any():
        _refuse(path, what, "task", f"expected every row of the producing task {task}")
    if (out["n_samples"] < 2).any():
        _refuse(path, what, "n_samples", "expected at least two samples per class (an unbiased covariance)")
    for name in ("mean", "covariance"):
        if not np.isfinite(out[name]).all():
            _refuse(path, what, name, "expected finite values")
    cov = out["covariance"]
    if not np.array_equal(cov, cov.transpose(0, 2, 1)) or (np.diagonal(cov, axis1=1, axis2=2) < 0).any():
        _refuse(path, what, "covariance", "expected symmetric matrices with a non-negative diagonal")
    return out


def write_predictions(path: str | Path, columns: dict, task: int) -> None:
    """Per-test-image predictions after task ``task`` (int columns, one row per image)."""
    import pyarrow as pa

    arrays = {name: pa.array(np.asarray(values), type=pa.int32()) for name, values in columns.items()}
    table = pa.table(arrays).replace_schema_metadata(
        {"ncil.format_version": str(EVAL_FORMAT), "ncil.task": str(task)}
    )
    _write_table(path, table)


PREDICTION_COLUMNS = ("sample", "label", "original_label", "label_task", "prediction")


def read_predictions(path: str | Path, tasks: list[list[int]] | None = None) -> dict:
    """Per-test-image predictions after task ``ncil.task``, checked for consistency.

    Always: the footer statistics, rows in increasing ``sample`` order, no negative value, one
    ``label`` per ``original_label`` and back, one ``label_task`` per ``label`` (non-decreasing in
    it, at most the table's task). With ``tasks`` (the split's classes of each task) also: every
    original label seen by then, ``label`` its position in the class order, ``label_task`` the task
    that introduced it, and ``prediction`` one of the seen classes.
    """
    import pyarrow as pa

    what = "evaluation table"
    table = _read_table(path, what, {n: pa.types.is_integer for n in PREDICTION_COLUMNS}, EVAL_FORMAT)
    path = Path(path)
    out = {n: table.column(n).to_numpy() for n in PREDICTION_COLUMNS}
    out["task"] = task = _metadata_int(path, table, "ncil.task")
    for name in PREDICTION_COLUMNS:
        if (out[name] < 0).any():
            _refuse(path, what, name, "expected no negative value")
    if (np.diff(out["sample"]) <= 0).any():
        _refuse(path, what, "sample", "expected strictly increasing test-image rows")
    pairs = np.unique(np.stack([out["label"], out["original_label"]]), axis=1)
    if len(np.unique(pairs[0])) != pairs.shape[1] or len(np.unique(pairs[1])) != pairs.shape[1]:
        _refuse(path, what, "label", "expected one label per original_label and one original_label per label")
    by_label = np.unique(np.stack([out["label"], out["label_task"]]), axis=1)  # sorted by label
    if len(np.unique(by_label[0])) != by_label.shape[1] or (np.diff(by_label[1]) < 0).any() \
            or (by_label[1] > task).any():
        _refuse(path, what, "label_task", f"expected one task per label, non-decreasing in it, at most {task}")
    if tasks is not None:
        if task >= len(tasks):
            _refuse(path, what, "ncil.task", f"task {task}, the split has {len(tasks)} tasks")
        seen = [int(c) for t in tasks[: task + 1] for c in t]
        expected = {c: (i, t) for i, c in enumerate(seen) for t, classes in enumerate(tasks[: task + 1]) if c in classes}
        if not set(np.unique(out["original_label"]).tolist()) <= set(expected):
            _refuse(path, what, "original_label", f"expected classes seen by task {task} of the split")
        label, label_task = np.array([expected[int(o)] for o in out["original_label"]], np.int64).reshape(-1, 2).T
        if not np.array_equal(label, out["label"]):
            _refuse(path, what, "label", "expected each class's position in the split's class order")
        if not np.array_equal(label_task, out["label_task"]):
            _refuse(path, what, "label_task", "expected the task of the split that introduced each class")
        if len(out["prediction"]) and out["prediction"].max() >= len(seen):
            _refuse(path, what, "prediction", f"expected one of the {len(seen)} classes seen by task {task}")
    return out
