"""The final stage: ``results/report.md`` with Table 1, figures (seaborn PNG) and the CSVs behind them.

- :mod:`~vqnqs.report.inputs`: where the stage outputs it reads live, checked before any work;
- :mod:`~vqnqs.report.document`: Table 1, the scaling fits, the figures and ``report.md``;
- :mod:`~vqnqs.report.vq_training`: the VQ-NQS trained by VMC beside the baseline and the distilled student;
- :mod:`~vqnqs.report.render`: markdown tables and figures saved with their data.
"""

from vqnqs.report.document import write_report
from vqnqs.report.inputs import ReportInputError, ReportInputs, check_reference, inputs_from_params

__all__ = ["ReportInputError", "ReportInputs", "check_reference", "inputs_from_params", "write_report"]
