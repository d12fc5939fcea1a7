"""`kvpager calibrate from-profiles DIR --gpu A100-80GB -o FILE`: fit the cost model's GPU
curves to public operator profiles and write a calibration file for `--calibration`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvpager.cli.errors import cli_errors

app = typer.Typer(help="Make calibration files for the simulator's cost model.",
                  no_args_is_help=True)


@app.command("from-profiles")
def from_profiles(
    directory: Annotated[Path, typer.Argument(
        help="Profile folder in Vidur's data/profiling layout (e.g. ../shared/profiles).")],
    gpu: Annotated[str, typer.Option(help="GPU preset the profiles were measured on "
                                          "(A100-80GB or H100-80GB).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration JSON to "
                                                                "write.")],
    topology: Annotated[str, typer.Option(
        help="Collective profiles to fit: pairwise_nvlink or dgx (NVSwitch).")]
    = "pairwise_nvlink",
    exclude_model: Annotated[list[str] | None, typer.Option(
        "--exclude-model", help="Leave a model's profile out of the fit (org/name or "
                                "name); repeat for several. For held-out validation.")]
    = None,
) -> None:
    """Fit GEMM efficiency, bandwidths, collectives and CPU overhead of GPU to the profiles."""
    from kvpager.sim.cost_model.from_profiles import profile_calibration, write_json

    with cli_errors():
        doc = profile_calibration(directory, gpu, topology=topology,
                                  exclude=tuple(exclude_model or ()))
        path = write_json(doc, output)
    print(f"wrote {path}: {doc['gpu']} fitted to {len(doc['fitted_models'])} models "
          f"({', '.join(doc['fitted_models'])})")
