"""What every ``formal-sae`` command shares: the `Command` base, the help texts and defaults of
the flags several commands declare (``--overwrite``, ``--allow-other-model``, ``--device``,
``--wandb``, ``--backend``), and `api_default`, which reads an option's default from the API
function it is passed to.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import formal_sae


def api_default(function: Any, name: str) -> Any:
    """The default of parameter ``name`` of an API function: the one place it is declared."""
    return inspect.signature(function).parameters[name].default


OVERWRITE = "replace an existing output directory (only one formal-sae wrote: see 'Where your files go' in the docs)"
ALLOW_OTHER_MODEL = "apply the SAE even though its metadata names another model than --model (a deliberate transfer)"
DEVICE = api_default(formal_sae.load_model, "device")
BACKENDS = ("local", "ray")
BACKEND = "where SAE sweep cells run: local (this machine) or ray (a Ray cluster, see --ray-address; pip install formal-sae[ray])"


def sweep_backend(backend: str, ray: formal_sae.RayBackend | None) -> str | formal_sae.RayBackend:
    """``sweep``'s backend from ``--backend`` and the ``--ray-*`` flags."""
    if backend != "ray" and ray is not None:
        raise formal_sae.SAEError("the --ray-* flags set the Ray backend: add --backend ray")
    return (ray or formal_sae.RayBackend()) if backend == "ray" else backend


WANDB = (
    "log to this Weights & Biases project (W&B's WANDB_MODE=offline, WANDB_DIR, WANDB_ENTITY apply); "
    "not part of the run's settings: a rerun or resume with or without it is the same run"
)


class Command:
    name: ClassVar[str]

    @classmethod
    def epilog(cls) -> str | None:
        return None

    def run(self) -> None:
        raise NotImplementedError
