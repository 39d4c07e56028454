"""Lightning's CLI over any LightningModule and data module; callbacks come from the YAML config.

python examples/lightning_cli/main.py fit --config examples/lightning_cli/config.yaml
tensorboard --logdir runs/lightning-cli
"""

from lightning.pytorch.cli import LightningCLI

# Imported so that LightningCLI knows both callbacks by their short names:
# `--trainer.callbacks.help EmergenceCallback`, `class_path: PruneAndBranchCallback`.
import emergence_lightning  # noqa: F401


def main(args=None) -> LightningCLI:
    # With no classes given, `model:` and `data:` take any class_path, as in config.yaml.
    return LightningCLI(args=args)


if __name__ == "__main__":
    main()
