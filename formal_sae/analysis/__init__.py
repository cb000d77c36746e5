"""Analysis: which SAE latents track which ground-truth features (metrics, report, figures)."""

from formal_sae.analysis.aligned import AlignedLatents, collect_aligned
from formal_sae.analysis.probes import ProbeReport, ProbeScore, default_probe_hooks, probe_direction, probe_features
from formal_sae.analysis.report import DEFAULT_PAIRS, AnalysisReport, analyze, feature_expression, targets_of

__all__ = ["DEFAULT_PAIRS", "AlignedLatents", "AnalysisReport", "analyze", "collect_aligned", "feature_expression", "targets_of"]
__all__ += ["ProbeReport", "ProbeScore", "default_probe_hooks", "probe_direction", "probe_features"]
