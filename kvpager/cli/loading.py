"""Trace loading shared by the commands: arrival-process options to a loaded `Trace`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvpager.sim.traces import GammaArrivals, PoissonArrivals, Trace, TraceError, load_trace
from kvpager.sim.traces.csv_formats import NeedsArrivalsError

#: Library argument names (as error messages start) -> the command-line options setting them.
_OPTIONS = {"rate": "--arrival-rate", "cv": "--arrival-cv", "seed": "--seed",
            "limit": "--limit", "rate_scale": "--rate-scale"}


@dataclass(frozen=True)
class ArrivalOptions:
    """`--arrival-rate` / `--arrival-cv` / `--seed`: a generated arrival process, or None."""

    rate: float | None = None
    cv: float | None = None
    seed: int = 0

    def process(self):
        if self.rate is None:
            if self.cv is not None:
                raise ValueError("--arrival-cv needs --arrival-rate")
            return None
        if self.cv is None or self.cv == 1.0:
            return PoissonArrivals(self.rate, seed=self.seed)
        return GammaArrivals(self.rate, self.cv, seed=self.seed)


def load(path: Path, arrivals: ArrivalOptions, *, limit: int | None = None,
         rate_scale: float = 1.0) -> Trace:
    """Read a trace file, re-timed by the arrival options, limited and rate-scaled."""
    try:
        return load_trace(path, arrivals=arrivals.process(), limit=limit,
                          rate_scale=rate_scale)
    except NeedsArrivalsError as exc:  # the library's hint names a Python argument
        raise TraceError(exc.path, "a length-only CSV has no arrival times: give "
                         "--arrival-rate REQ_PER_S (and --arrival-cv for burstier gaps "
                         "than Poisson)") from None
    except TraceError:
        raise
    except ValueError as exc:  # an argument's message: name the option instead
        text = str(exc)
        for argument, option in _OPTIONS.items():
            if text.startswith(f"{argument}:"):
                raise ValueError(f"{option}{text[len(argument):]}") from None
        raise
