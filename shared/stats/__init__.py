"""Shared statistics: pure functions, standard library only, no I/O.

* ``proportions``: Wilson and Clopper–Pearson intervals, binomial tails, Spiegelhalter funnel limits
  and the exact one-sided test used for money decisions.
* ``spc``: XmR charts with NHS "Making Data Count" rules (as NHSRplotthedots), and the status of an
  improvement project judged against limits fixed on its baseline.
* ``casemix``: indirect standardisation (observed against case-mix expected).

Each module's docstring states its sources, formulas and conventions.
"""

from shared.stats.casemix import (
    CaseMixBenchmark,
    IndirectStandardisation,
    StratumCount,
    benchmark_from_counts,
    build_benchmark,
    counts_from_records,
    indirectly_standardise,
    indirectly_standardise_counts,
)
from shared.stats.proportions import (
    FunnelMethod,
    NumericalError,
    beta_quantile,
    binomial_cdf,
    binomial_pmf,
    binomial_quantile,
    binomial_upper_tail,
    exact_interval,
    funnel_limits,
    is_above_upper_limit,
    is_below_lower_limit,
    lower_critical_count,
    regularised_incomplete_beta,
    regularised_incomplete_beta_complement,
    upper_critical_count,
    wilson_interval,
)
from shared.stats.spc import (
    Assurance,
    ImprovementDirection,
    ProjectAssessment,
    ProjectStatus,
    Variation,
    XmrChart,
    XmrPoint,
    XmrSegment,
    project_assessment,
    project_status,
    xmr,
)

__all__ = [
    "Assurance",
    "CaseMixBenchmark",
    "FunnelMethod",
    "ImprovementDirection",
    "IndirectStandardisation",
    "NumericalError",
    "ProjectAssessment",
    "ProjectStatus",
    "StratumCount",
    "Variation",
    "XmrChart",
    "XmrPoint",
    "XmrSegment",
    "benchmark_from_counts",
    "beta_quantile",
    "binomial_cdf",
    "binomial_pmf",
    "binomial_quantile",
    "binomial_upper_tail",
    "build_benchmark",
    "counts_from_records",
    "exact_interval",
    "funnel_limits",
    "indirectly_standardise",
    "indirectly_standardise_counts",
    "is_above_upper_limit",
    "is_below_lower_limit",
    "lower_critical_count",
    "project_assessment",
    "project_status",
    "regularised_incomplete_beta",
    "regularised_incomplete_beta_complement",
    "upper_critical_count",
    "wilson_interval",
    "xmr",
]
