"""What TensorBoard shows of a run: custom-scalars layouts and HParams entries.

Both callbacks hand their charts and hyperparameter rows to these functions, so every
dashboard decision (which tags share a chart, what the HParams columns are) lives here.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger


def emergence_layout(prefix: str, path_exact: bool) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars charts of one ``EmergenceCallback`` (tags under ``prefix``)."""
    p = prefix
    layout = {
        p: {
            "E and accuracy": ["Multiline", [f"{p}/E", r".*acc.*"]],
            "relative E and accuracy": ["Multiline", [f"{p}/relative", r".*acc.*"]],
            "log10 E": ["Multiline", [f"{p}/log10_E"]],
            "active nodes per layer": ["Multiline", [f"{p}/active/.*"]],
        }
    }
    if path_exact:
        layout[p]["log10 E: dense and path-exact"] = ["Multiline", [f"{p}/log10_E", f"{p}/log10_E_path"]]
    return layout


def branch_overlay_layout(monitor: str | None) -> dict[str, dict[str, list[Any]]]:
    """Charts that overlay every branch and the parent (written first in each branch run)."""
    return {
        "prune and branch": {
            "validation metric": ["Multiline", [monitor or r"val.*"]],
            "emergence E": ["Multiline", [r"emergence/E$"]],
            "relative emergence": ["Multiline", [r"emergence/relative$"]],
            "log10 E": ["Multiline", [r"emergence/log10_E$"]],
            "active fraction": ["Multiline", [r"emergence/active_fraction$"]],
            "training loss": ["Multiline", [r"train.*loss.*"]],
        }
    }


def write_custom_scalars(loggers: list[Any], layout: dict[str, dict[str, list[Any]]]) -> None:
    """Write ``layout`` to every TensorBoard logger among ``loggers`` (others have no such view)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_custom_scalars(layout)


def write_hparams_entry(logger: TensorBoardLogger, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """One HParams row for the run, with ``metrics`` as its metric columns (values: the logged scalars)."""
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(params, metrics)
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)


def flat_hparams(hparams: Any, prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as one level of ``a/b`` keys with values HParams can show."""
    flat: dict[str, Any] = {}
    for key, value in dict(hparams).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, name + "/"))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[name] = "None" if value is None else value
        else:
            flat[name] = str(value)
    return flat
