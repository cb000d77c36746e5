"""The commands on the whole study and its results: ``reproduce`` and ``push``."""

# simple_parsing.field is dataclasses.field with the flag's options (ruff knows only the latter):
# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from simple_parsing import field

import formal_sae
import formal_sae.reproduce as study  # the whole study: a pipeline on top of the public API
from formal_sae.cli.base import BACKEND, BACKENDS, OVERWRITE, Command, api_default, sweep_backend
from formal_sae.cli.parsing import prefixed


# ---------------------------------------------------------------------------- the study
@dataclass(kw_only=True)
class ReproduceCommand(Command):
    """run the whole study and write a report with the paper's claims"""

    name: ClassVar[str] = "reproduce"
    out: Path
    """study directory (report.md, claims.json, one folder per language)"""
    grammar: str = field(default=api_default(study.reproduce, "grammars"), help=f"all, or one of: {', '.join(study.GRAMMARS)}")
    scale: str = field(default=api_default(study.reproduce, "scale"), help=f"one of: {', '.join(study.SCALES)}")
    seed: int = api_default(study.reproduce, "seed")
    """seed of the whole study"""
    device: str = api_default(study.reproduce, "device")
    """cpu, cuda, cuda:N or mps"""
    overwrite: bool = field(default=False, help=OVERWRITE)
    backend: str = field(default=api_default(study.reproduce, "backend"), choices=BACKENDS, help=BACKEND)
    ray: formal_sae.RayBackend | None = prefixed(formal_sae.RayBackend, "ray")
    """the Ray cluster the sweeps run on (formal_sae.RayBackend), with --backend ray"""
    workers: int | None = None
    """sweep cells trained at once in forked processes on the CPU (default: the scale's)"""

    def run(self) -> None:
        backend = sweep_backend(self.backend, self.ray)
        claims = study.reproduce(
            self.out, self.grammar, self.scale, seed=self.seed, device=self.device, overwrite=self.overwrite, backend=backend,
            workers=self.workers,
        )  # fmt: skip
        print(f"wrote {self.out}/report.md and {self.out}/claims.json")
        for name, claim in claims.items():
            per_language = ", ".join(f"{g} {v.verdict}" for g, v in claim.languages.items())
            print(f"  {name}: {claim.overall.verdict} ({per_language})")


# ---------------------------------------------------------------------------- sharing
@dataclass(kw_only=True)
class PushCommand(Command):
    """upload a model or SAE directory, with a generated model card, to the Hugging Face Hub"""

    name: ClassVar[str] = "push"
    directory: Path = field(positional=True, metavar="MODEL_OR_SAE_DIR")
    """a model directory (`formal-sae train-model --out`) or an SAE directory (`formal-sae train-sae --out`)"""
    repo_id: str = field(positional=True, metavar="REPO_ID")
    """the Hub model repo, user/name or org/name (created if missing)"""
    private: bool = False
    """create the repo private"""
    revision: str | None = None
    """branch to push to, created if missing (default: main)"""
    sae_id: str | None = None
    """an SAE: its folder in the repo (default: its hook name, SAELens's convention)"""
    model_repo_id: str | None = None
    """an SAE: the Hub repo of the model it was trained on (the card's base_model)"""
    overwrite_readme: bool = False
    """a model: replace a README.md in the repo that formal-sae did not write"""

    @classmethod
    def epilog(cls) -> str:
        return (
            "Log in first (`hf auth login`) or set HF_TOKEN. Load back with formal_sae.load_model(REPO_ID), "
            "formal_sae.load_sae('REPO_ID/SAE_ID') or sae_lens.SAE.from_pretrained(REPO_ID, SAE_ID); "
            "--model and --sae of the other commands take these too."
        )

    def run(self) -> None:
        options = {"private": self.private, "revision": self.revision}
        if (self.directory / "cfg.json").is_file():  # SAELens's config: an SAE
            if self.overwrite_readme:
                raise formal_sae.FormalSAEError(
                    "--overwrite-readme is for models: an SAE push never replaces a README formal-sae did not "
                    "write (it puts the SAE's card in its own folder instead)"
                )
            url = formal_sae.push_sae_to_hub(
                self.directory, self.repo_id, sae_id=self.sae_id, model_repo_id=self.model_repo_id, **options
            )
            where = f"{self.repo_id}/{self.sae_id or '<its hook name>'}"
            print(f"pushed SAE {self.directory} to {url}; load it with formal_sae.load_sae({where!r})")
            return
        if self.sae_id is not None or self.model_repo_id is not None:
            raise formal_sae.FormalSAEError(
                f"{self.directory} is not an SAE directory: --sae-id and --model-repo-id are for SAEs"
            )
        url = formal_sae.push_model_to_hub(self.directory, self.repo_id, overwrite_readme=self.overwrite_readme, **options)
        print(f"pushed model {self.directory} to {url}; load it with formal_sae.load_model({self.repo_id!r})")
