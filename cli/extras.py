"""Which optional extra of the ``anibot`` package a missing module belongs to, said in one line.

The bot containers install only ``.[bot]``, the workers ``.[worker]``; a command run where its extra is missing
says which extra and how to install it instead of ending in a traceback.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF_MODULE = {
    "discord": "bot",
    "telegram": "bot",
    "aiohttp": "bot",
    "torch": "worker",
    "torchvision": "worker",
    "ultralytics": "worker",
    "timm": "worker",
    "transformers": "worker",
    "tokenizers": "worker",
    "faiss": "worker",
    "onnx": "worker",
    "onnxslim": "worker",
    "onnxruntime": "worker",
    "cv2": "worker",
    "matplotlib": "worker",
    "sentence_transformers": "worker",
}


def missing_extra(exc: ImportError) -> str | None:
    """The extra that installs the module ``exc`` could not import; None when it is none of ours."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return EXTRA_OF_MODULE.get(exc.name.split(".")[0])


def missing_extra_message(exc: ImportError, command: str) -> str | None:
    """One line for the user: what is missing, which extra has it, the command that installs it."""
    extra = missing_extra(exc)
    if extra is None:
        return None
    return (
        f"`anibot {command}` needs the '{extra}' extra (Python module '{exc.name}' is not installed): "
        f"pip install -e '.[{extra}]' in this checkout, or pip install 'anibot[{extra}]'."
    )


def exit_for_missing_extra(exc: ImportError, command: str) -> None:
    """Print the one line and exit 1 when ``exc`` is a missing extra; return (for the caller to re-raise) else."""
    message = missing_extra_message(exc, command)
    if message is not None:
        typer.echo(message, err=True)
        raise typer.Exit(1)


class ExtrasAwareGroup(TyperGroup):
    """The CLI's command group: a module of a missing extra, imported by any (sub)command, ends in one line."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except ImportError as exc:
            exit_for_missing_extra(exc, ctx.invoked_subcommand or ctx.info_name or "")
            raise
