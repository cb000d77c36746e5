"""Exceptions raised by formal-sae.

Every error a user can cause by bad input is a [`FormalSAEError`][formal_sae.FormalSAEError]: its message names the
problem and the way out. The CLI prints these as one line instead of a traceback.
"""

from __future__ import annotations


class FormalSAEError(ValueError):
    """Base class of every user-facing error in formal-sae."""


class GrammarError(FormalSAEError):
    """A grammar name, grammar text or grammar input is invalid."""


class DatasetError(FormalSAEError):
    """A dataset is missing, corrupt, or does not fit what it is used with."""


class ModelError(FormalSAEError):
    """A model, checkpoint or model configuration is missing, corrupt or incompatible."""


class SAEError(FormalSAEError):
    """An SAE, hook point or SAE configuration is invalid or does not fit the model."""


class OutputError(FormalSAEError):
    """An output directory cannot be written: it exists, is not formal-sae's, or is unsafe to replace."""
