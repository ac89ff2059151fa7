"""Interleaved timing: contenders measured in alternating blocks, and the ratios of their medians."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable


class Skip(Exception):
    """A section (or a variant) that cannot run here; the message says why."""


@dataclasses.dataclass
class Contender:
    """Something timed in an interleaved comparison. `run(n)` does n calls and returns their wall seconds."""

    name: str
    run: Callable[[int], float]
    units_per_call: float  # images (or FLOPs) per call
    first_call_s: float = float("nan")
    calls_per_block: int = 1
    samples: list = dataclasses.field(default_factory=list)
    # CPU seconds of this whole process per wall second in each block: how many cores the contender kept busy
    # (spinning included). Below the thread count when other jobs took the cores.
    cores_busy: list = dataclasses.field(default_factory=list)

    def warm_up(self, block_seconds: float) -> None:
        """The first call (tracing, compiling), then one more to size the timed blocks."""
        self.first_call_s = self.run(1)
        self.calls_per_block = max(1, round(block_seconds / max(self.run(1), 1e-9)))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self, unit: str = "images_per_s") -> dict:
        return {unit: self.median, "samples": self.samples, "calls_per_block": self.calls_per_block,
                "first_call_s": self.first_call_s, "cores_busy": statistics.median(self.cores_busy)}


def timed_calls(call: Callable[[], object]) -> Callable[[int], float]:
    """A `Contender.run` for a function returning a tensor: n calls, then one wait for the device; wall seconds."""

    def run(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            result = call()
        float(result)  # waits for the device
        return time.perf_counter() - start

    return run


def interleave(contenders: list[Contender], repeats: int) -> None:
    """Times blocks of each contender in turn, the order reversed every other repeat (A B, B A, ...), so
    that load from other jobs and drift hit all of them alike. Fills each contender's `samples` (rates)."""
    for repeat in range(repeats):
        for contender in (contenders if repeat % 2 == 0 else contenders[::-1]):
            cpu = time.process_time()
            seconds = contender.run(contender.calls_per_block)
            contender.cores_busy.append((time.process_time() - cpu) / seconds)
            contender.samples.append(contender.units_per_call * contender.calls_per_block / seconds)


def warm_up_all(contenders: list[Contender], block_seconds: float) -> tuple[list[Contender], dict]:
    """Warms each contender; returns (the ones that work, {name: error} for the ones that raised)."""
    working, errors = [], {}
    for contender in contenders:
        try:
            contender.warm_up(block_seconds)
            working.append(contender)
        except Exception as error:  # noqa: BLE001 - a failing variant is reported, the rest still run
            errors[contender.name] = error_text(error)
    return working, errors


def comparison(name: str, numerator: str, numerator_value: float, denominator: str, denominator_value: float,
               unit: str = "images/s", target: float | None = None, note: str | None = None) -> dict:
    """A ratio with the two numbers it is the quotient of, and its target if it has one."""
    entry = {"name": name, "numerator": numerator, "numerator_value": numerator_value, "denominator": denominator,
             "denominator_value": denominator_value, "unit": unit, "ratio": numerator_value / denominator_value}
    if target is not None:
        entry.update(target=target, met=bool(entry["ratio"] >= target))
    if note:
        entry["note"] = note
    return entry


def error_text(error: BaseException) -> str:
    """`Type: first line of the message` (at most 300 characters of it)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
