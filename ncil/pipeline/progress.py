"""Progress of a job: a bar on a terminal, and plain lines in the job's log file."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


LOGGER = "ncil"
FILE_ONLY = "ncil.file"  # the same log file, never stderr: what a verb prints, a failure's traceback
FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def get_logger(log_path: str | None, name: str = LOGGER) -> logging.Logger:
    """A logger that writes timestamped lines to ``log_path`` (truncated) and to stderr.

    The log's folders are created; with ``name`` "ncil" (the CLI's), ``say`` and ``log_failure``
    write to the same file.
    """
    logger = logging.getLogger(name)
    file_only = logging.getLogger(FILE_ONLY if name == LOGGER else f"{name}.file")
    for lg in (logger, file_only):
        for handler in lg.handlers:
            handler.close()
        lg.handlers.clear()
        lg.setLevel(logging.INFO)
        lg.propagate = False
    file_only.addHandler(logging.NullHandler())  # no log file: file-only lines go nowhere (not to stderr)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
        handler.setFormatter(FORMAT)
        logger.addHandler(handler)
        file_only.addHandler(handler)
    if not sys.stderr.isatty():  # on a terminal the bar shows progress; elsewhere stderr gets the lines
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(FORMAT)
        logger.addHandler(stream)
    return logger


def logger() -> logging.Logger:
    """The CLI's logger, as ``get_logger`` configured it for this verb."""
    return logging.getLogger(LOGGER)


def say(message: str) -> None:
    """A verb's result line: on stdout, and in its log file."""
    print(message)
    logging.getLogger(FILE_ONLY).info("%s", message)


def log_line(message: str) -> None:
    """A line in the log file only (the command that started the verb, for instance)."""
    logging.getLogger(FILE_ONLY).info("%s", message)


def log_failure(message: str, err: BaseException) -> None:
    """A failure's message and full traceback, into the log file only (stderr gets one line)."""
    logging.getLogger(FILE_ONLY).error("%s", message, exc_info=(type(err), err, err.__traceback__))


def close() -> None:
    for name in (LOGGER, FILE_ONLY):
        for handler in logging.getLogger(name).handlers:
            handler.close()


class RunningSum:
    """An attribute that keeps what ``step`` adds as it is (a device tensor stays on its device) and reads back as
    a Python ``kind`` (a host sync for a tensor); setting it stores ``kind(value)``."""

    def __init__(self, kind: type):
        self.kind = kind

    def __set_name__(self, owner, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else self.kind(getattr(obj, self.slot))

    def __set__(self, obj, value) -> None:
        setattr(obj, self.slot, self.kind(value))


class EpochProgress:
    """Per-epoch bar (tqdm, terminal only) plus one log line per epoch: epoch, loss, images/s.

    ``step`` takes the batch's loss and correct count as tensors and keeps the running sums where they
    are (on the device: no host sync inside a training step); they are read once, at ``end_epoch``.
    The loss sum is float64, each term ``float64(loss) * batch`` added in step order: the same
    operations, and so the same bits, as summing the Python floats. ``loss_sum`` and ``correct`` read
    as Python numbers (a sync: at the epoch's end, or when a resumable state is saved) and may be set
    from them (a resumed epoch).
    """

    def __init__(self, logger: logging.Logger, label: str, epochs: int, steps_per_epoch: int):
        self.logger, self.label, self.epochs, self.steps = logger, label, epochs, steps_per_epoch
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=epochs * steps_per_epoch, desc=label, unit="step", file=sys.stderr, leave=False)

    def start_epoch(self) -> None:
        self.t0, self.seen, self.loss_sum, self.correct = time.perf_counter(), 0, 0.0, 0

    seen = RunningSum(int)  # rows seen this epoch
    loss_sum = RunningSum(float)  # sum of loss x rows
    correct = RunningSum(int)  # right predictions

    def step(self, loss, batch, correct) -> None:
        """One batch: ``loss`` its mean loss, ``batch`` its number of rows and ``correct`` its number of right
        predictions (tensors or numbers; a tensor count stays on its device, as the sums do)."""
        self._seen = self._seen + batch
        loss = loss.detach().double() if hasattr(loss, "detach") else float(loss)  # a tensor stays on its device
        self._loss_sum = self._loss_sum + loss * batch  # a Python float until the first tensor joins
        self._correct = self._correct + correct
        if self.bar is not None:
            self.bar.update(1)

    def end_epoch(self, epoch: int, lr: float) -> dict:
        loss_sum, correct, seen = self.loss_sum, self.correct, self.seen  # the epoch's one read of the running sums
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        stats = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            "train_acc": 100.0 * correct / max(seen, 1),
            "images_per_s": seen / seconds,
            "lr": lr,
        }
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{stats['loss']:.4f}")
        self.logger.info(
            "%s epoch %d/%d loss %.4f train-acc %.2f%% %.0f images/s lr %.2e",
            self.label, stats["epoch"], self.epochs, stats["loss"], stats["train_acc"], stats["images_per_s"], lr,
        )
        return stats

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
